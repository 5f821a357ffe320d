"""Loading the dataset of prompts (docs/SPEC.md, "Dataset"): the samples, read whole and
checked, and their repeats. Reading one as a stream is exprof.dataset_stream's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import jsonl_lines, read_text
from exprof.heap import collector_paused
from exprof.jsonio import dumps
from exprof.strict_json import parse_json
from exprof.tool_specs import parse_tool_results

ROLES = ("user", "assistant")


@dataclass(frozen=True, slots=True)
class Sample:
    """One dialogue: a system prompt (a string, or a list of text blocks) and either one
    user turn (`user`) or a conversation (`messages`, alternating turns that end with
    the user's, or with an assistant prefill). `user` is then the last user turn's text."""

    dialogue_id: str
    system: Any
    user: str
    required_facts: tuple[str, ...] = ()
    # Which repeat of the sample a request is; never part of the snapshot.
    repeat: int = 0
    messages: tuple[dict[str, Any], ...] | None = None
    # Scripted answers to its tool calls (exprof.tool_specs); None: the sample has none.
    tool_results: tuple[dict[str, Any], ...] | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"dialogue_id": self.dialogue_id, "system": self.system}
        if self.messages is None:
            payload["user"] = self.user
        else:
            payload["messages"] = list(self.messages)
        payload["required_facts"] = list(self.required_facts)
        if self.tool_results is not None:
            payload["tool_results"] = list(self.tool_results)
        return payload

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Sample:
        facts = tuple(data["required_facts"])
        if "messages" in data:
            sample = conversation(data["dialogue_id"], data["system"], data["messages"], facts)
        else:
            sample = cls(data["dialogue_id"], data["system"], data["user"], facts)
        if "tool_results" in data:
            sample = dataclasses.replace(sample, tool_results=tuple(data["tool_results"]))
        return sample

    def turns(self) -> list[dict[str, Any]]:
        """The request's `messages`."""
        if self.messages is None:
            return [{"role": "user", "content": self.user}]
        return list(self.messages)

    def prompt(self) -> dict[str, Any]:
        """requests.jsonl's `prompt`: the seed's {system, user}, or {system, messages}."""
        if self.messages is None:
            return {"system": self.system, "user": self.user}
        return {"system": self.system, "messages": list(self.messages)}

    def transcript(self) -> str:
        """The whole prompt as one text (for a grader, and for size estimates): the
        seed's `system` and `user`, or each turn after its role."""
        system = text_of(self.system)
        if self.messages is None:
            return f"{system}\n\n{self.user}" if system else self.user
        turns = [f"{m['role'].capitalize()}: {text_of(m['content'])}" for m in self.messages]
        return "\n\n".join([system, *turns] if system else turns)

    def identity(self) -> tuple[str, str]:
        """What makes two samples the same request: the system prompt and the turns."""
        if self.messages is None and isinstance(self.system, str):
            return self.system, self.user
        return dumps(self.system), dumps(self.turns())


def text_of(content: Any) -> str:
    """A system prompt's or a turn's text: a string, or its text blocks joined (any other
    block, a tool call or result, as its JSON)."""
    if isinstance(content, str):
        return content
    return "".join(
        block["text"] if block.get("type") == "text" else dumps(block) for block in content
    )


def conversation(
    dialogue_id: str, system: Any, messages: list[dict[str, Any]], facts: tuple[str, ...]
) -> Sample:
    last_user = next(m for m in reversed(messages) if m["role"] == "user")
    return Sample(
        dialogue_id, system, text_of(last_user["content"]), facts, messages=tuple(messages)
    )


def load_dataset(path: str | Path) -> list[Sample]:
    with collector_paused():
        return _load_dataset(Path(path))


def _load_dataset(path: Path) -> list[Sample]:
    text = read_text(path, "dataset")
    if path.suffix.lower() == ".jsonl":
        unit, items = "line", _parse_jsonl(text, path)
    else:
        unit, items = "index", list(enumerate(_parse_json_array(text, path)))
    if not items:
        raise ExprofError(f"{path}: dataset is empty")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    # An item's place ("index 7", "line 8") is spelled out only in an error: building
    # it for each of 100k good items cost more than checking them.
    for at, item in items:
        try:
            sample = parse_sample(item, "")
        except ExprofError:
            parse_sample(item, f"{path}: {unit} {at}")  # the same error, naming the place
            raise
        if sample.dialogue_id in seen:
            raise ExprofError(
                f"{path}: {unit} {at}: duplicate dialogue_id {sample.dialogue_id!r} "
                f"(first at {unit} {seen[sample.dialogue_id]})"
            )
        seen[sample.dialogue_id] = at
        samples.append(sample)
    return samples


def _parse_json_array(text: str, path: Path) -> list[Any]:
    data = parse_json(text, str(path))
    if not isinstance(data, list):
        raise ExprofError(f"{path}: dataset must be a JSON array of objects")
    return data


def _parse_jsonl(text: str, path: Path) -> list[tuple[int, Any]]:
    return [
        (lineno, parse_json(line, f"{path}: line {lineno}", one_line=True))
        for lineno, line in jsonl_lines(text)
    ]


def parse_sample(item: Any, where: str) -> Sample:
    if not isinstance(item, dict):
        raise ExprofError(f"{where}: each dialogue must be an object, got {type(item).__name__}")
    if "tool_results" in item:
        item = dict(item)
        at = f"{where} ({item.get('dialogue_id')}): tool_results"
        scripted = parse_tool_results(item.pop("tool_results"), at)
        return dataclasses.replace(parse_sample(item, where), tool_results=scripted)
    if "messages" in item:
        return _conversation(item, where)
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
    return Sample(dialogue_id, system, user, _facts(item, where))


def _facts(item: dict[str, Any], where: str) -> tuple[str, ...]:
    facts = item.get("required_facts", [])
    if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
        raise ExprofError(f"{where}: required_facts must be a list of strings")
    return tuple(facts)


def _conversation(item: dict[str, Any], where: str) -> Sample:
    """A row with `messages`: alternating user/assistant turns, the user's first; the
    last is the user's, or an assistant prefill for the model to continue."""
    if "user" in item:
        raise ExprofError(f"{where}: give either user or messages, not both")
    dialogue_id = item.get("dialogue_id")
    if not isinstance(dialogue_id, str) or not dialogue_id:
        raise ExprofError(f"{where}: dialogue_id must be a non-empty string")
    where = f"{where} ({dialogue_id})"
    system = item.get("system", "")
    if not isinstance(system, str):
        _text_blocks(system, f"{where}: system")
    messages = item["messages"]
    if not isinstance(messages, list) or not messages:
        raise ExprofError(f"{where}: messages must be a non-empty list of {{role, content}}")
    turns = []
    for i, turn in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise ExprofError(f"{at}: must be an object with exactly role and content")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ExprofError(f"{at}.role: must be user or assistant, got {role!r}")
        expected = ROLES[i % 2]
        if role != expected:
            problem = (
                "the first turn must be the user's" if i == 0 else f"two {role} turns in a row"
            )
            raise ExprofError(f"{at}.role: {problem}; turns alternate user, assistant, user ...")
        if isinstance(content, str):
            if not content.strip():
                raise ExprofError(f"{at}.content: is empty")
        else:
            _text_blocks(content, f"{at}.content")
        turns.append({"role": role, "content": content})
    return conversation(dialogue_id, system, turns, _facts(item, where))


def _text_blocks(value: Any, where: str) -> None:
    """A non-empty list of {type: text, text: non-empty string} blocks."""
    if not isinstance(value, list) or not value:
        raise ExprofError(f"{where}: must be a string or a non-empty list of text blocks")
    for j, block in enumerate(value):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or set(block) - {"type", "text", "cache_control"}
            or not isinstance(block.get("text"), str)
            or not block["text"].strip()
        ):
            raise ExprofError(
                f"{where}[{j}]: must be a text block {{type: text, text: non-empty string}}"
            )


def with_repeats(samples: list[Sample], repeats: int) -> list[Sample]:
    """Each sample `repeats` times, as distinct requests tagged with their repeat index;
    the samples themselves when there is one repeat."""
    if repeats == 1:
        return samples
    return [dataclasses.replace(s, repeat=r) for s in samples for r in range(repeats)]


def pending_pairs(samples: list[Sample], slots: set[int], repeats: int) -> list[Sample]:
    """The (sample, repeat) pairs still owed, from their slots (position * repeats +
    repeat) and the owed samples in dataset order (as load_run returns them)."""
    if repeats == 1:
        return samples
    by_position = dict(zip(sorted({slot // repeats for slot in slots}), samples, strict=True))
    return [
        dataclasses.replace(by_position[slot // repeats], repeat=slot % repeats)
        for slot in sorted(slots)
    ]
