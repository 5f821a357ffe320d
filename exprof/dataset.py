"""Loading the dataset of prompts (SPEC.md, "Dataset") and the mock's canned answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import jsonl_lines, parse_json, read_text

# A responses.jsonl line's own fields, which the flattened metadata may never replace.
RESERVED_KEYS = ("dialogue_id", "completion")


@dataclass(frozen=True, slots=True)
class Sample:
    dialogue_id: str
    system: str
    user: str
    required_facts: tuple[str, ...] = ()
    # Which repeat of the sample a request is (issue 12); never part of the snapshot.
    repeat: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "dialogue_id": self.dialogue_id,
            "system": self.system,
            "user": self.user,
            "required_facts": list(self.required_facts),
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Sample:
        return cls(data["dialogue_id"], data["system"], data["user"], tuple(data["required_facts"]))


def load_dataset(path: str | Path) -> list[Sample]:
    path = Path(path)
    text = read_text(path, "dataset")
    if path.suffix.lower() == ".jsonl":
        items = _parse_jsonl(text, path)
    else:
        items = [(f"index {i}", item) for i, item in enumerate(_parse_json_array(text, path))]
    if not items:
        raise ExprofError(f"{path}: dataset is empty")
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for where, item in items:
        sample = _sample(item, f"{path}: {where}")
        if sample.dialogue_id in seen:
            raise ExprofError(
                f"{path}: {where}: duplicate dialogue_id {sample.dialogue_id!r} "
                f"(first at {seen[sample.dialogue_id]})"
            )
        seen[sample.dialogue_id] = where
        samples.append(sample)
    return samples


def _parse_json_array(text: str, path: Path) -> list[Any]:
    data = parse_json(text, str(path))
    if not isinstance(data, list):
        raise ExprofError(f"{path}: dataset must be a JSON array of objects")
    return data


def _parse_jsonl(text: str, path: Path) -> list[tuple[str, Any]]:
    return [
        (f"line {lineno}", parse_json(line, f"{path}: line {lineno}", one_line=True))
        for lineno, line in jsonl_lines(text)
    ]


def _sample(item: Any, where: str) -> Sample:
    if not isinstance(item, dict):
        raise ExprofError(f"{where}: each dialogue must be an object, got {type(item).__name__}")
    for key in ("dialogue_id", "system", "user"):
        if key not in item:
            raise ExprofError(f"{where}: missing field {key!r}")
    dialogue_id, system, user = item["dialogue_id"], item["system"], item["user"]
    if not isinstance(dialogue_id, str) or not dialogue_id:
        raise ExprofError(f"{where}: dialogue_id must be a non-empty string")
    if not isinstance(system, str):
        raise ExprofError(f"{where}: system must be a string")
    if not isinstance(user, str) or not user:
        raise ExprofError(f"{where}: user must be a non-empty string")
    facts = item.get("required_facts", [])
    if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
        raise ExprofError(f"{where}: required_facts must be a list of strings")
    return Sample(dialogue_id, system, user, tuple(facts))


def load_mock_responses(path: str | Path) -> dict[str, dict[str, Any]]:
    """`mock_responses.json`: {dialogue_id: {completion: str, metadata: {...}}}."""
    path = Path(path)
    data = parse_json(read_text(path, "mock responses (mock_responses_path)"), str(path))
    if not isinstance(data, dict):
        raise ExprofError(f"{path}: mock responses must be an object keyed by dialogue_id")
    for key, entry in data.items():
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
