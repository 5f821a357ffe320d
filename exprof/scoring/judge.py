"""Model-graded (`judge`) metrics: the grader's prompt, its reply parsed to a
score, the cost announced before any request, and the mock grader (the spec's
`judge_responses`). The grading loop, live grader included, is exprof.run.judge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof.clients.outcome import Failure, Outcome, Response
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.files import read_text
from exprof.metric_specs import custom_specs
from exprof.pricing import estimate_cost
from exprof.scoring.custom import check_value
from exprof.store.events import Event, JudgeRequestSent, JudgeScored
from exprof.strict_json import parse_json

SYSTEM = (
    "You grade an assistant's answer against a rubric. Rubric: {rubric}\n"
    "Reply with one line: 'Score: N', where N is the number the rubric asks for."
)
USER = "Prompt given to the assistant:\n{prompt}\n\nThe assistant's answer:\n{completion}"
SCORE_RE = re.compile(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\b")
CHARS_PER_TOKEN = 4  # for the estimate only: recorded usage is what summaries report


@dataclass(frozen=True)
class Task:
    """One grader request: a sample's answer under one judge metric."""

    dialogue_id: str
    metric: str
    model: str
    max_tokens: int
    system: str
    user: str
    repeat: int = 0  # which repeat's answer: each is graded on its own


def specs(metrics: Iterable[object]) -> list[dict[str, Any]]:
    return custom_specs(metrics, "judge")


def tasks_for(
    judge_specs: Sequence[dict[str, Any]], sample: Sample, completion: str
) -> Iterator[Task]:
    prompt = sample.transcript()
    for spec in judge_specs:
        yield Task(
            sample.dialogue_id,
            spec["name"],
            spec["judge_model"],
            spec["max_tokens"],
            SYSTEM.format(rubric=spec["rubric"]),
            USER.format(prompt=prompt, completion=completion),
            sample.repeat,
        )


def parse_score(reply: str) -> float:
    """'Score: 4' anywhere in the reply (the last one wins), else a reply that starts
    with a number; anything else is the metric's error for that sample."""
    found = SCORE_RE.findall(reply)
    match = found[-1] if found else None
    if match is None:
        leading = LEADING_NUMBER.match(reply)
        match = leading.group(1) if leading else None
    if match is None:
        raise ValueError(f"no score in the grader's reply {reply[:80]!r}")
    if len(match) > 40:  # a float of 5,000 digits is inf; an int() of them raises
        raise ValueError(f"the score in the grader's reply is out of range: {match[:20]}...")
    value = float(match)
    check_value(value)
    return value


def estimate(
    tasks: Sequence[Task], pricing: dict[str, dict[str, float]], answer_tokens: int = 0
) -> tuple[int, float | None]:
    """How many grader requests, and their estimated cost in USD (None when a judge
    model has no known price). `answer_tokens` stands in for answers not yet received."""
    total = 0.0
    for task in tasks:
        tokens_in = (len(task.system) + len(task.user)) // CHARS_PER_TOKEN + answer_tokens
        cost = estimate_cost(task.model, tokens_in, task.max_tokens, pricing)
        if cost is None:
            return len(tasks), None
        total += cost
    return len(tasks), round(total, 6)


def announcement(count: int, cost: float | None, models: Iterable[str]) -> str:
    price = f"~${cost:.4f}" if cost is not None else "cost unknown (no price for the model)"
    return (
        f"judge metrics: {count} grader request(s) to {', '.join(sorted(set(models)))}, "
        f"estimated {price}"
    )


def judge_events(task: Task, outcome: Outcome) -> list[Event]:
    """The grader's request and its reply (or failure), with the score parsed from it."""
    sent = JudgeRequestSent(
        task.dialogue_id, task.metric, task.model, task.system, task.user, task.repeat
    )
    value: float | None = None
    error: str | None = None
    if isinstance(outcome, Failure):
        error = f"{outcome.error_class}: {outcome.message}"
        failed = JudgeScored(task.dialogue_id, task.metric, None, {}, None, error, task.repeat)
        return [sent, failed]
    try:
        value = parse_score(outcome.completion)
    except ValueError as exc:
        value, error = None, str(exc)
    scored = JudgeScored(
        task.dialogue_id,
        task.metric,
        outcome.completion,
        outcome.metadata,
        value,
        error,
        task.repeat,
    )
    return [sent, scored]


def require_mock_replies(config_path: object, metrics: Sequence[object]) -> None:
    """A mock run grades from each judge metric's `judge_responses`: without the file,
    every grade would fail, so the run is refused before anything is written."""
    for index, spec in enumerate(metrics):
        if isinstance(spec, dict) and spec.get("type") == "judge" and "mock_replies" not in spec:
            raise ExprofError(
                f"{config_path}: metrics[{index}] ({spec['name']}): judge_responses: "
                f"{spec['judge_responses']} not found; the mock grades from it "
                "(or run with --live)"
            )


def mock_grade(tasks: Sequence[Task], judge_specs: Sequence[dict[str, Any]]) -> list[Outcome]:
    """The mock grader: each spec's `judge_responses` replies, keyed by dialogue_id (a
    string for every judge metric, or an object keyed by metric name). The replies were
    recorded with the run; one they lack is looked up in the file again, so that a
    resume grades with the replies added since. The reply used is recorded either way."""
    replies = {spec["name"]: spec.get("mock_replies") or {} for spec in judge_specs}
    files = {spec["name"]: spec["judge_responses"] for spec in judge_specs}
    reread: dict[str, dict[str, Any]] = {}
    out: list[Outcome] = []
    for task in tasks:
        entry = _reply(replies.get(task.metric, {}), task)
        if entry is None:
            if task.metric not in reread:
                reread[task.metric] = _read_replies(files.get(task.metric))
            entry = _reply(reread[task.metric], task)
        if entry is None:
            where = files.get(task.metric)
            out.append(
                Failure(
                    "JudgeResponseMissing",
                    f"no judge response for {task.dialogue_id!r} in {where}",
                    attempts=0,
                )
            )
        else:
            out.append(Response(entry, {}))
    return out


def _reply(table: dict[str, Any], task: Task) -> str | None:
    entry = table.get(task.dialogue_id)
    if isinstance(entry, dict):
        entry = entry.get(task.metric)
    return entry if isinstance(entry, str) else None


def _read_replies(path: str | None) -> dict[str, Any]:
    """The judge_responses file as it is now: {} when it is missing or unreadable (each
    grade it cannot give is that sample's error, as before)."""
    if path is None:
        return {}
    try:
        replies = parse_json(read_text(Path(path), "judge responses"), path)
    except ExprofError:
        return {}
    return replies if isinstance(replies, dict) else {}
