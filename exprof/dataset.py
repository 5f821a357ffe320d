"""Loading the dataset of prompts (docs/SPEC.md, "Dataset") and the mock's canned answers."""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import jsonl_lines, max_input_bytes, read_text
from exprof.jsonio import dumps
from exprof.strict_json import check_tree, parse_json, strict_decoder
from exprof.tool_specs import parse_tool_results

# A responses.jsonl line's own fields, which the flattened metadata may never replace.
RESERVED_KEYS = ("dialogue_id", "completion")


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


@dataclass(frozen=True)
class DatasetFile:
    """A validated dataset read as a stream (batch runs of a million samples): its size
    and digest from one pass, its samples from another, never all held at once."""

    path: Path
    count: int
    sha256: str

    def __iter__(self) -> Iterator[Sample]:
        """The samples again, from the file. A file changed since the scan is an error,
        raised while the caller still iterates: a run recording the snapshot in one
        transaction then records nothing."""
        digest = hashlib.sha256()
        count = 0
        try:
            for sample in _stream_samples(self.path):
                digest.update(sample_digest_line(sample))
                count += 1
                yield sample
        except Exception:  # noqa: BLE001 - whatever broke, the file is not the one scanned
            count = -1
        if count != self.count or digest.hexdigest() != self.sha256:
            raise ExprofError(f"{self.path}: dataset changed while the run was reading it")


def sample_digest_line(sample: Sample) -> bytes:
    """A sample's share of the dataset digest (RunStarted.dataset_sha256)."""
    return dumps(sample.to_payload()).encode() + b"\n"


def dataset_sha256(samples: Iterable[Sample]) -> str:
    """The dataset digest a run records: its samples' payloads, a JSON line each."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample_digest_line(sample))
    return digest.hexdigest()


def scan_dataset(path: str | Path) -> DatasetFile:
    """Validate the dataset in one streaming pass, holding neither its text nor its
    samples: the count, the digest and an 8-byte hash per dialogue_id (for duplicates).
    Whatever the pass finds wrong, load_dataset reads the file again to name it exactly
    as it always has (the error path may hold the file; the good path never does)."""
    import numpy as np  # here: every command imports this module, and most need no numpy

    path = Path(path)
    digest = hashlib.sha256()
    ids = bytearray()
    count = 0
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_input_bytes():
            raise ValueError("not a regular file within the size limit")
        for sample in _stream_samples(path):
            digest.update(sample_digest_line(sample))
            ids += hashlib.blake2b(sample.dialogue_id.encode(), digest_size=8).digest()
            count += 1
        hashes = np.frombuffer(bytes(ids), dtype=np.uint64)
        if count == 0 or len(np.unique(hashes)) != count:
            raise ValueError("empty, or a dialogue_id may repeat")
    except Exception:  # noqa: BLE001 - any failure: load_dataset names it exactly
        samples = load_dataset(path)  # raises the error, named as always
        # Valid after all: two dialogue_ids share a hash (about 1 in 10^7 at a million
        # samples), or the file was fixed meanwhile. Digest what was loaded.
        return DatasetFile(path, len(samples), dataset_sha256(samples))
    return DatasetFile(path, count, digest.hexdigest())


STREAM_READ = 1 << 20


def _stream_samples(path: Path) -> Iterator[Sample]:
    """The samples of a dataset file, parsed and checked one at a time (a JSON array
    element by element, JSON Lines line by line). Raises on anything wrong, without
    naming it well: scan_dataset leaves that to load_dataset."""
    jsonl = path.suffix.lower() == ".jsonl"
    items = _jsonl_items(path) if jsonl else _array_items(path)
    for where, item in items:
        yield _sample(item, f"{path}: {where}")


def _text_chunks(path: Path) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    with open(path, "rb") as f:
        first = True
        while data := f.read(STREAM_READ):
            if (first and data[:2] in (b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
                raise ValueError("UTF-16 or binary")
            first = False
            yield decoder.decode(data)
        yield decoder.decode(b"", final=True)


def _jsonl_items(path: Path) -> Iterator[tuple[str, Any]]:
    rest, lineno = "", 0
    for text in _text_chunks(path):
        lines = (rest + text).split("\n")
        rest = lines.pop()
        for line in lines:
            lineno += 1
            if line.strip():
                yield f"line {lineno}", parse_json(line, f"{path}: line {lineno}", one_line=True)
    if rest.strip():
        yield f"line {lineno + 1}", parse_json(rest, f"{path}: line {lineno + 1}", one_line=True)


def _array_items(path: Path) -> Iterator[tuple[str, Any]]:
    """The elements of a JSON array file, decoded one at a time with the strict decoder
    (a duplicate key, NaN or Infinity raises): an element cut by the end of the buffer
    is decoded again once more text has arrived."""
    decoder = strict_decoder()
    chunks = _text_chunks(path)
    buf, pos, index, ended = "", 0, 0, False
    state = "open"  # then "item" (an element or "]" next), "sep" ("," or "]"), "done"

    def more() -> bool:
        nonlocal buf, pos, ended
        if ended:
            return False
        text = next(chunks, None)
        if text is None:
            ended = True
            return False
        buf, pos = buf[pos:] + text, 0
        return True

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n":
            pos += 1
        if pos == len(buf):
            if more():
                continue
            if state != "done":
                raise ValueError("the array is not closed")
            return
        char = buf[pos]
        if state == "done":
            raise ValueError("text after the array")
        if state == "open":
            if char != "[":
                raise ValueError("not an array")
            pos, state = pos + 1, "first"
        elif char == "]" and state in ("first", "sep"):
            pos, state = pos + 1, "done"
        elif state == "sep":
            if char != ",":
                raise ValueError("expected ','")
            pos, state = pos + 1, "item"
        else:
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if more():
                    continue
                raise
            if end == len(buf) and not ended and more():
                continue  # a number may go on in the next chunk: decode it whole
            yield f"index {index}", check_tree(item, f"{path}: index {index}")
            index, pos, state = index + 1, end, "sep"


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
    if "tool_results" in item:
        item = dict(item)
        at = f"{where} ({item.get('dialogue_id')}): tool_results"
        scripted = parse_tool_results(item.pop("tool_results"), at)
        return dataclasses.replace(_sample(item, where), tool_results=scripted)
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


def load_mock_responses(path: str | Path) -> dict[str, dict[str, Any]]:
    """`mock_responses.json`: {dialogue_id: {completion: str, metadata: {...}}}."""
    path = Path(path)
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
