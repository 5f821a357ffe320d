"""What a report shows, gathered from the store (or an export directory) without SQL.

Per-sample rows are compact arrays rather than objects, and fact names are interned in
one list, so that the rows of a 100k-sample run stay a few tens of MB before
compression. The column order is shared with report.js (`COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import jsonl_lines, read_text
from exprof.jsonio import dumps, loads
from exprof.sides import Side
from exprof.store.events import ResponseReceived, SampleFailed
from exprof.store.record import iter_samples, load_started, recorded_turns

# Long answers are cut in the page (the full text is in the store and the exports), so
# a run of long completions still gives a page a browser opens.
MAX_COMPLETION = 4000
MAX_PROMPT = 300
COLUMNS = (
    "dialogue_id",
    "status",
    "coverage",
    "refused",
    "output_tokens",
    "latency_ms",
    "prompt",
    "completion",
    "facts",
    "missing",
    "error_class",
    "error",
    "metrics",
    "ttft_ms",
    "output_tokens_per_s",
    "trajectory",
)
MAX_TOOL_TEXT = 300  # a tool call's input or result, as a trajectory row shows it


@dataclass
class Vocab:
    """Fact names, each stored once; rows refer to them by position."""

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def ids(self, facts: Iterable[str]) -> list[int]:
        out = []
        for fact in facts:
            i = self.index.get(fact)
            if i is None:
                i = self.index[fact] = len(self.names)
                self.names.append(fact)
            out.append(i)
        return out


@dataclass
class RunData:
    """One run as the page needs it: summary, config, and its samples in dataset order."""

    label: str
    summary: dict[str, Any]
    config: dict[str, Any]
    rows: list[list[Any]]
    facts: list[str]
    source: str  # "store" or "export directory"

    def column(self, name: str, status: str = "ok") -> list[Any]:
        i = COLUMNS.index(name)
        return [r[i] for r in self.rows if r[1] == status and r[i] is not None]

    def failures(self) -> list[list[Any]]:
        return [r for r in self.rows if r[1] == "failed"]


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f" … [{len(text) - limit} more characters]"


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _row(
    dialogue_id: str,
    status: str,
    prompt: str | None,
    facts: list[int],
    answer: tuple[str | None, dict[str, Any]] | None,
    scored: tuple[float, bool, list[int]] | None,
    failure: tuple[str, str] | None,
    custom: dict[str, Any] | None = None,
    trajectory: list[dict[str, Any]] | None = None,
) -> list[Any]:
    completion, meta = answer if answer else (None, {})
    coverage, refused, missing = scored if scored else (None, None, [])
    return [
        dialogue_id,
        status,
        coverage,
        None if refused is None else int(refused),
        _number(meta.get("output_tokens", meta.get("token_count"))),
        _number(meta.get("latency_ms")),
        _clip(prompt, MAX_PROMPT),
        _clip(completion, MAX_COMPLETION),
        facts,
        missing,
        failure[0] if failure else None,
        failure[1] if failure else None,
        custom or None,
        _number(meta.get("ttft_ms")),  # a streamed answer's
        _number(meta.get("output_tokens_per_s")),
        trajectory,
    ]


def trajectory_steps(turns: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """A tool run's turns as a row expands them: per turn its text, each call (name,
    input) with its result, and the stop reason; None for a sample without turns."""
    if not turns:
        return None
    steps = []
    for turn in turns:
        results = {r.get("tool_use_id"): r for r in turn.get("tool_results", ())}
        calls = []
        for block in turn.get("received", ()):
            if block.get("type") != "tool_use":
                continue
            result = results.get(block.get("id"), {})
            content = result.get("content", "")
            if not isinstance(content, str):
                content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
            calls.append(
                [
                    str(block.get("name")),
                    _clip(dumps(block.get("input", {})), MAX_TOOL_TEXT),
                    _clip(content, MAX_TOOL_TEXT),
                    bool(result.get("is_error")),
                ]
            )
        text = "".join(
            b.get("text", "") for b in turn.get("received", ()) if b.get("type") == "text"
        )
        steps.append(
            {"text": _clip(text, MAX_TOOL_TEXT), "calls": calls, "stop": turn.get("stop_reason")}
        )
    return steps


def run_data(side: Side) -> RunData:
    """The run behind a resolved compare Side: from its store, or its export directory."""
    if side.store is None:
        return _dir_data(Path(side.label), side)
    store, run_id = side.store, side.summary["run_id"]
    # Answers with their recorded scores come from the samples projection; only the
    # failures (few, normally) are read from their events.
    answers = {r.response.dialogue_id: r for r in store.scored_responses(run_id)}
    failures = {
        ev.event.dialogue_id: (ev.event.error_class, ev.event.message)
        for ev in store.events(run_id, types=(SampleFailed,))
        if isinstance(ev.event, SampleFailed)
    }
    custom = _custom_by_id(side)
    turns = recorded_turns(store, run_id)  # {} but for a tool run
    vocab = Vocab()
    rows = []
    for sample in iter_samples(store, run_id):
        did = sample.dialogue_id
        scored = answers.get(did)
        status = "ok" if scored else "failed" if did in failures else "pending"
        answer = marks = None
        if scored is not None:
            answer = (scored.response.completion, scored.response.metadata)
            marks = (scored.fact_coverage, scored.refused, vocab.ids(scored.facts_missing))
        rows.append(
            _row(
                did,
                status,
                sample.user,
                vocab.ids(sample.required_facts),
                answer,
                marks,
                None if answer else failures.get(did),
                custom.get(did),
                trajectory_steps(
                    [t.to_payload() for t in turns.get((did, 0), [])] if answer else []
                ),
            )
        )
    config = dict(load_started(store, run_id).config)
    return RunData(run_id, side.summary, config, rows, vocab.names, "store")


def _custom_by_id(side: Side) -> dict[str, dict[str, Any]]:
    """Each answered sample's custom metric values (as compare reads them, a dict-valued
    metric as `name.key`), keyed by dialogue id."""
    if not side.custom:
        return {}
    return {
        did: {name: column[i] for name, column in side.custom.items()}
        for i, did in enumerate(side.ids)
    }


def _jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    """An export's JSON Lines file, each line an object with a dialogue_id."""
    if not path.exists():
        return []
    rows = []
    # "\n" only: U+2028 and friends are valid inside JSON strings (files.jsonl_lines)
    for lineno, line in jsonl_lines(read_text(path, what)):
        try:
            row = loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("dialogue_id"), str):
            raise ExprofError(f"{path}: line {lineno}: not an exprof {what} line")
        rows.append(row)
    return rows


def _dir_data(path: Path, side: Side) -> RunData:
    """An export directory knows less: no fact list (only the missed ones), no failure
    detail beyond the summary's counts by class."""
    answers = {r["dialogue_id"]: r for r in _jsonl(path / "responses.jsonl", "responses")}
    prompts = {
        r["dialogue_id"]: (r.get("prompt") or {}).get("user")
        for r in _jsonl(path / "requests.jsonl", "requests")
    }
    scored = {
        d: (float(c), bool(r))
        for d, c, r in zip(side.ids, side.coverage, side.refused, strict=True)
    }
    custom = _custom_by_id(side)
    paths = {r["dialogue_id"]: r for r in _jsonl(path / "trajectories.jsonl", "trajectories")}
    vocab = Vocab()
    rows = []
    for did in list(prompts) + [d for d in side.ids if d not in prompts]:
        answer = answers.get(did)
        missing = vocab.ids(side.missing.get(did, []))
        marks = (*scored[did], missing) if did in scored else None
        status = "ok" if marks else "failed"
        failure = None if marks else ("unknown", "the export holds no failure detail")
        text = (answer.get("completion"), answer) if answer else None
        steps = trajectory_steps(paths.get(did, {}).get("turns", []))
        rows.append(
            _row(
                did, status, prompts.get(did), missing, text, marks, failure, custom.get(did), steps
            )
        )  # type: ignore[arg-type]
    summary = side.summary
    config: dict[str, Any] = {
        k: summary[k] for k in ("model", "temperature", "max_tokens") if k in summary
    }
    return RunData(str(path), summary, config, rows, vocab.names, "export directory")


def completions(side: Side, wanted: set[str]) -> dict[str, str]:
    """The answers of a few samples (the top changes of a compare)."""
    if not wanted:
        return {}
    if side.store is None:
        rows = _jsonl(Path(side.label) / "responses.jsonl", "responses")
        found = {r["dialogue_id"]: r.get("completion") for r in rows if r["dialogue_id"] in wanted}
    else:
        events = side.store.events(side.summary["run_id"], types=(ResponseReceived,))
        found = {
            ev.payload["dialogue_id"]: ev.payload["completion"]
            for ev in events
            if ev.payload["dialogue_id"] in wanted
        }
    return {d: _clip(found[d], MAX_COMPLETION) or "" for d in wanted if found.get(d) is not None}
