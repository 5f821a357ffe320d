"""Loading the mock's canned answers (`mock_responses_path`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import read_text
from exprof.heap import collector_paused
from exprof.strict_json import parse_json

# A responses.jsonl line's own fields, which the flattened metadata may never replace.
RESERVED_KEYS = ("dialogue_id", "completion")


def load_mock_responses(path: str | Path) -> dict[str, dict[str, Any]]:
    """`mock_responses.json`: {dialogue_id: {completion: str, metadata: {...}}}."""
    path = Path(path)
    with collector_paused():
        data = parse_json(read_text(path, "mock responses (mock_responses_path)"), str(path))
    if not isinstance(data, dict):
        raise ExprofError(f"{path}: mock responses must be an object keyed by dialogue_id")
    for key, entry in data.items():
        if isinstance(entry, dict) and "turns" in entry:
            _mock_turns(entry, f"{path}: {key!r}")
            entry.setdefault("completion", "")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("completion"), str)
            or not isinstance(entry.get("metadata", {}), dict)
        ):
            raise ExprofError(f"{path}: {key!r}: must be {{completion: string, metadata: object}}")
        for field in RESERVED_KEYS:
            if field in entry.get("metadata", {}):
                raise ExprofError(
                    f"{path}: {key!r}: metadata.{field}: reserved, responses.jsonl gives "
                    "the record's own; rename it"
                )
    return data


def _mock_turns(entry: dict[str, Any], where: str) -> None:
    """A dialogue's answers turn by turn: each a text (the answer, which ends the dialogue)
    or {tool_use: {name, input} or a list of them, text (optional)}."""
    turns = entry["turns"]
    if not isinstance(turns, list) or not turns:
        raise ExprofError(f"{where}: turns must be a non-empty list of texts or {{tool_use}}")
    for i, turn in enumerate(turns):
        at = f"{where}: turns[{i}]"
        if isinstance(turn, str):
            continue
        if not isinstance(turn, dict) or "tool_use" not in turn or set(turn) - {"tool_use", "text"}:
            raise ExprofError(f"{at}: must be a text or {{tool_use: {{name, input}}, text}}")
        calls = turn["tool_use"] if isinstance(turn["tool_use"], list) else [turn["tool_use"]]
        for call in calls:
            if (
                not isinstance(call, dict)
                or not isinstance(call.get("name"), str)
                or not isinstance(call.get("input", {}), dict)
                or set(call) - {"name", "input"}
            ):
                raise ExprofError(f"{at}.tool_use: must be {{name: string, input: mapping}}")
        if not isinstance(turn.get("text", ""), str):
            raise ExprofError(f"{at}.text: must be a string")
