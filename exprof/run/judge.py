"""The grading phase: after the answers, every answer without a judge score yet is
graded, a wave at a time, each grader request and reply recorded; resumable like the
answers themselves. A rescore grades the way the run it rescores answered."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from exprof.clients.outcome import Failure, Outcome
from exprof.config import Config
from exprof.dataset import Sample
from exprof.render import Progress
from exprof.run.session import Session
from exprof.scoring import judge
from exprof.signals import raising_signals
from exprof.store.engine import Store
from exprof.store.events import JudgeScored
from exprof.store.record import iter_samples, load_started, recorded_responses, rescore_source

JUDGE_BATCH = 200  # grader requests per transaction (and per wave of live requests)


def run_judge(session: Session, concurrency: int | None, quiet: bool, announce: bool) -> None:
    """Grade what is owed; `announce` prints the count and estimated cost first."""
    store, config = session.store, session.config
    specs = judge.specs(config.metrics)
    tasks = owed_tasks(store, session.run_id) if specs else []
    if not tasks:
        return
    if announce:
        announce_grading(tasks, config.pricing)
    live = grading_mode(store, session.run_id) == "live"
    width = concurrency or config.concurrency
    session.restart(Progress(len(tasks), quiet=quiet))
    for start in range(0, len(tasks), JUDGE_BATCH):
        session.check_signals()
        chunk = tasks[start : start + JUDGE_BATCH]
        if live:
            with raising_signals():  # replies still in flight are abandoned, as live ones
                outcomes = live_grade(chunk, config, width)
        else:
            outcomes = judge.mock_grade(chunk, specs)
        for task, outcome in zip(chunk, outcomes, strict=True):
            session.grade(task, outcome)
        session.flush()
        session.show("grading")
    session.progress.close()


def grading(
    specs: list[dict[str, Any]],
    samples: Iterable[Sample],
    answers: dict[tuple[str, int], tuple[str, dict[str, Any]]],
) -> list[judge.Task]:
    """The grader requests for every recorded answer, each repeat's on its own, in
    dataset order then repeat order."""
    by_sample: dict[str, list[int]] = {}
    for dialogue_id, repeat in answers:
        by_sample.setdefault(dialogue_id, []).append(repeat)
    return [
        task
        for sample in samples
        for repeat in sorted(by_sample.get(sample.dialogue_id, ()))
        for task in judge.tasks_for(
            specs,
            dataclasses.replace(sample, repeat=repeat),
            answers[sample.dialogue_id, repeat][0],
        )
    ]


def owed_tasks(store: Store, run_id: str) -> list[judge.Task]:
    """Grader requests owed: each answered sample under each judge metric, but those
    already scored (a failed or unparsable grade is tried again)."""
    specs = judge.specs(load_started(store, run_id).config["metrics"])
    if not specs:
        return []
    answers = recorded_responses(store, run_id)
    done = {
        (stored.event.dialogue_id, stored.event.repeat, stored.event.metric)
        for stored in store.events(run_id, types=(JudgeScored,))
        if isinstance(stored.event, JudgeScored) and stored.event.value is not None
    }
    return [
        task
        for task in grading(specs, iter_samples(store, run_id), answers)
        if (task.dialogue_id, task.repeat, task.metric) not in done
    ]


def grading_mode(store: Store, run_id: str) -> str:
    """mock or live: a rescore grades the way the run it rescores answered."""
    mode = load_started(store, run_id).mode
    while mode == "rescore":
        run_id = rescore_source(store, run_id).source_run_id
        mode = load_started(store, run_id).mode
    return mode


def announce_grading(
    tasks: list[judge.Task], pricing: dict[str, Any], answer_tokens: int = 0
) -> None:
    """The grader requests' count and estimated cost, on stderr, before any is sent."""
    count, cost = judge.estimate(tasks, pricing, answer_tokens)
    print(judge.announcement(count, cost, (t.model for t in tasks)), file=sys.stderr)


def live_grade(tasks: Sequence[judge.Task], config: Config, concurrency: int) -> list[Outcome]:
    """The grader through the SDK, as the run's own requests go: same retries, limits."""
    from exprof.clients.limits import AdaptiveLimit
    from exprof.clients.live import Halted, LiveClient

    async def grade_all() -> list[Outcome]:
        limiter = AdaptiveLimit(concurrency)
        clients: dict[tuple[str, int], LiveClient] = {}
        for task in tasks:
            key = (task.model, task.max_tokens)
            if key not in clients:
                judge_config = Config.from_dict(
                    {**config.to_dict(), "model": task.model, "max_tokens": task.max_tokens}
                )
                clients[key] = LiveClient(judge_config, limiter)
        gate = asyncio.Semaphore(concurrency)

        async def one(task: judge.Task) -> Outcome:
            async with gate:
                client = clients[(task.model, task.max_tokens)]
                try:
                    return await client.complete(Sample(task.dialogue_id, task.system, task.user))
                except Halted:
                    return Failure("Halted", "not sent: the grader failed for every request")

        try:
            return list(await asyncio.gather(*(one(t) for t in tasks)))
        finally:
            for client in clients.values():
                await client.close()

    return asyncio.run(grade_all())
