"""Sequential A/B: `exprof run --config A.yaml --versus B.yaml --stop-when-decided`.

The two arms run as an experiment of two cells, "A" and "B", on the same samples. The
pairs are dispatched in a random order of the dataset, seeded by --seed and recorded in
SequentialStarted. After each completed pair (both arms answered and scored; a sample's
repeats averaged into one observation), the paired difference B - A of the metric
updates an anytime-valid confidence sequence for the mean difference: the hedged
betting sequence of Waudby-Smith & Ramdas, "Estimating means of bounded random
variables by betting", JRSS-B 86(1), 2024 (exprof.sequential). Dispatching stops once
it excludes 0 (decided, and which arm wins), lies within +-min_effect (equivalent), or
the dataset or budget_usd runs out (undecided); the stop is a SequentialStopped event.

The pairs go out in rounds of at most concurrency / (2 * repeats), so that the requests
sent past the deciding pair are fewer than the requests in flight at once; the sequence
is read pair by pair in the recorded order, whatever the rounds, so `resume` replays
the answered pairs and continues the very same sequence.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from exprof.config import Config, auto_run_id
from exprof.dataset import Sample
from exprof.dataset_stream import dataset_sha256
from exprof.errors import EXIT_OK, ConcurrencyError, ExprofError, stop_exit_code
from exprof.experiment import Cell, ExperimentResult, cell_run_id, experiment_summary
from exprof.render import Progress
from exprof.run.budget import Budget
from exprof.run.runner import Runner
from exprof.run.session import Session
from exprof.scoring import judge, recorded
from exprof.sequential import BettingCS, Verdict
from exprof.signals import deferred_signals
from exprof.store.engine import Store
from exprof.store.events import (
    ExperimentStarted,
    RunFinished,
    RunResumed,
    SequentialStarted,
    SequentialStopped,
)
from exprof.store.leases import Lease
from exprof.store.record import RunRecord, load_run, sequential_events

ARMS = ("A", "B")
# The metrics a sequence can follow, each per sample in [0, 1]: differences in [-1, 1].
METRICS: dict[str, Callable[[float, bool], float]] = {
    "fact_coverage": lambda coverage, refused: coverage,
    "refusal_rate": lambda coverage, refused: float(refused),
}
# Custom metric types that score every answer true or false: in [0, 1] too.
BOOLEAN_TYPES = ("contains_all", "contains_any", "regex", "json", "length")
_SCALARS = (str, int, float, bool, type(None))
BUDGET = "budget_usd reached"
REASONS = {
    "decided": "the sequence excludes 0",
    "equivalent": "the sequence lies within +-min_effect",
}


@dataclass(frozen=True)
class Options:
    metric: str = "fact_coverage"
    alpha: float = 0.05
    min_effect: float | None = None
    seed: int = 0


@dataclass
class Arm:
    name: str
    record: RunRecord
    lease: Lease
    session: Session
    warned: bool = False  # the live loop's warnings: said once, in the first round


# -- checking and starting ------------------------------------------------------------


def check_versus(a: Config, b: Config, samples_a: list[Sample], samples_b: list[Sample]) -> None:
    """What a sequential A/B run refuses, before anything is written."""
    for name, config in (("--config", a), ("--versus", b)):
        if config.matrix:
            raise ExprofError(f"{name}: a sequential A/B run compares two configs, not a matrix")
        if config.batch:
            raise ExprofError(f"{name}: batch runs answer at once; --stop-when-decided needs live")
        if judge.specs(config.metrics):
            raise ExprofError(f"{name}: judge metrics are graded after the answers; drop them")
        if config.cache:
            raise ExprofError(f"{name}: cache: true is not supported with --stop-when-decided")
    if dataset_sha256(samples_a) != dataset_sha256(samples_b):
        raise ExprofError("--versus: the two configs must share a dataset (the same samples)")


def check_metric(metric: str, configs: tuple[Config, Config]) -> None:
    """The metric must be bounded, per sample in [0, 1]: a built-in one, or a custom
    metric both arms score with a boolean type."""
    if metric in METRICS:
        return
    for config in configs:
        spec = next(
            (m for m in config.metrics if isinstance(m, dict) and m["name"] == metric), None
        )
        if spec is None:
            names = ", ".join(METRICS)
            raise ExprofError(
                f"--metric: {metric!r} is not {names} or a custom metric of both arms"
            )
        if spec["type"] not in BOOLEAN_TYPES:
            raise ExprofError(
                f"--metric: {metric} is a {spec['type']} metric, with no known range; the "
                f"sequence needs one in [0, 1]: {', '.join(METRICS)}, or a custom metric of "
                f"type {', '.join(BOOLEAN_TYPES)}"
            )


def check_options(options: Options) -> None:
    if not 0 < options.alpha < 1:
        raise ExprofError("--alpha must lie strictly between 0 and 1")
    if options.min_effect is not None and not 0 < options.min_effect < 1:
        raise ExprofError("--min-effect must lie strictly between 0 and 1")
    if options.seed < 0:
        raise ExprofError("--seed must be 0 or more")


def differing(a: Config, b: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each arm's plain values where the two configs differ: the cells' parameters."""
    da, db = a.to_dict(), b.to_dict()
    keys = [
        k
        for k in da
        if da.get(k) != db.get(k) and isinstance(da.get(k), _SCALARS) and k != "experiment_id"
    ]
    return {k: da[k] for k in keys}, {k: db.get(k) for k in keys}


def start_versus(
    runner: Runner,
    configs: tuple[Config, Config],
    samples: list[Sample],
    mode: str,
    mocks: tuple[dict[str, dict[str, Any]] | None, dict[str, dict[str, Any]] | None],
    options: Options,
    experiment_id: str | None = None,
    concurrency: int | None = None,
) -> ExperimentResult:
    """Record the experiment and its plan, start both arms, run the sequence."""
    a = configs[0]
    store = runner.store
    if experiment_id is not None and store.experiment_record(experiment_id) is not None:
        raise ExprofError(f"experiment {experiment_id!r} already exists; choose another --run-id")
    lease = store.acquire_new_run(
        a.experiment_id, experiment_id, lambda n: auto_run_id(a.experiment_id, n)
    )
    exp = lease.run_id
    params = differing(*configs)
    cells = [Cell(n, p, cell_run_id(exp, n)) for n, p in zip(ARMS, params, strict=True)]
    order = [int(i) for i in np.random.default_rng(options.seed).permutation(len(samples))]
    try:
        taken = [c.run_id for c in cells if store.run_exists(c.run_id)]
        if taken:
            raise ExprofError(f"run {taken[0]!r} already exists; choose another --run-id")
        record = ExperimentStarted(exp, mode, a.to_dict(), [c.to_payload() for c in cells])
        plan = SequentialStarted(
            options.metric,
            -1.0,
            1.0,
            options.alpha,
            options.min_effect,
            options.seed,
            order,
            {n: c.to_dict() for n, c in zip(ARMS, configs, strict=True)},
        )
        try:
            store.append(exp, [record, plan], after_seq=0)
        except ConcurrencyError:
            raise ExprofError(f"experiment {exp!r} already exists") from None
    finally:
        store.release_lease(lease)
    arms = []
    try:
        for cell, config, answers in zip(cells, configs, mocks, strict=True):
            where = {
                "experiment": exp,
                "name": cell.name,
                "params": cell.params,
                "sequential": True,
            }
            rec, arm_lease, seq = runner.begin_run(
                config, samples, mode, answers, cell.run_id, where
            )
            arms.append(_arm(runner, cell.name, rec, arm_lease, seq))
    except BaseException:
        for arm in arms:
            store.release_lease(arm.lease)
        raise
    limits = [c.budget_usd for c in configs if c.budget_usd is not None]
    return _drive(
        runner, exp, plan, arms, concurrency, _budget(store, cells, min(limits, default=None))
    )


def resume_versus(
    runner: Runner,
    experiment_id: str,
    concurrency: int | None = None,
    budget_usd: float | None = None,
) -> ExperimentResult:
    """Continue the very same sequence: the answered pairs are replayed in the recorded
    order, and dispatching goes on from the first pair not yet answered; a stopped one
    sends nothing."""
    store = runner.store
    record = store.experiment_record(experiment_id)
    plan, stopped = sequential_events(store, experiment_id)
    if record is None or plan is None:
        raise ExprofError(f"{store.location}: no sequential experiment {experiment_id!r}")
    cells = [Cell(c["name"], c["params"], c["run_id"]) for c in record.cells]
    missing = [c.run_id for c in cells if not store.run_exists(c.run_id)]
    if missing:
        raise ExprofError(
            f"experiment {experiment_id} stopped before its arm {missing[0]} started; "
            "run the configs again"
        )
    if stopped is not None and stopped.reason == BUDGET and budget_usd is not None:
        stopped = None  # a larger budget: the same sequence goes on (it is anytime-valid)
    if stopped is not None and all(_finished(store, c.run_id) for c in cells):
        return _report(store, experiment_id, _verdict_of(stopped).to_payload(), stopped.reason)
    if record.mode == "live":
        from exprof.clients.credentials import require_credentials

        require_credentials(f"resume {experiment_id}")
    arms: list[Arm] = []
    try:
        for cell in cells:
            lease = store.acquire_lease(cell.run_id)
            arms.append(_arm(runner, cell.name, load_run(store, cell.run_id), lease, 0))
            arms[-1].session.append([RunResumed(os.getpid(), socket.gethostname(), False)])
    except BaseException:
        for arm in arms:
            store.release_lease(arm.lease)
        raise
    given = [c.get("budget_usd") for c in plan.configs.values()]
    limits = [float(v) for v in given if v is not None]
    limit = budget_usd if budget_usd is not None else min(limits, default=None)
    budget = _budget(store, cells, limit)
    if stopped is not None:
        return _conclude(runner, experiment_id, arms, _verdict_of(stopped), stopped.reason, None)
    return _drive(runner, experiment_id, plan, arms, concurrency, budget)


def _arm(runner: Runner, name: str, record: RunRecord, lease: Lease, seq: int) -> Arm:
    store = runner.store
    seq = seq or store.last_seq(record.run_id)
    return Arm(name, record, lease, Session(store, record, lease, seq, Progress(0, quiet=True)))


def _budget(store: Store, cells: list[Cell], limit: float | None) -> Budget | None:
    return Budget(store, [c.run_id for c in cells], limit) if limit is not None else None


# -- the sequence ---------------------------------------------------------------------


@dataclass
class ArmState:
    values: dict[int, float]  # position -> the metric, averaged over the repeats
    pending: set[int]  # positions with a repeat still owed an answer
    failed: set[int]  # positions with a repeat that failed


def arm_state(store: Store, record: RunRecord, metric: str) -> ArmState:
    """What the store holds of one arm, by dataset position."""
    run_id, repeats = record.run_id, record.config.repeats
    position = {s.dialogue_id: i for i, s in enumerate(record.samples)}
    sums: dict[int, list[float]] = {}
    if metric in METRICS:
        value = METRICS[metric]
        for dialogue_id, coverage, refused in store.sample_scores(run_id):
            sums.setdefault(position[dialogue_id], []).append(value(coverage, refused))
    else:  # a boolean custom metric; an answer it could not score is left out
        scored = recorded.per_sample(store, run_id, record.started.config)
        for (dialogue_id, _), row in scored.items():
            if isinstance(row.get(metric), bool):
                sums.setdefault(position[dialogue_id], []).append(float(row[metric]))
    owed = store.pending_positions(run_id, retry_failed=True)
    pending = store.pending_positions(run_id, retry_failed=False)
    return ArmState(
        {p: sum(v) / len(v) for p, v in sums.items()},
        {slot // repeats for slot in pending},
        {slot // repeats for slot in owed - pending},
    )


class Walk:
    """The sequence over the recorded order: pairs are read from `cursor` on while both
    arms have answered them; a pair that failed in either arm is skipped."""

    def __init__(self, plan: SequentialStarted) -> None:
        self.plan = plan
        self.cs = BettingCS(plan.alpha, plan.low, plan.high, plan.min_effect)
        self.read_upto = 0
        self.verdict: Verdict | None = None

    def advance(self, states: list[ArmState]) -> None:
        a, b = states
        order = self.plan.order
        while self.verdict is None and self.read_upto < len(order):
            p = order[self.read_upto]
            if p in a.pending or p in b.pending:
                return
            self.read_upto += 1
            if p in a.failed or p in b.failed or p not in a.values or p not in b.values:
                continue
            self.cs.update(b.values[p] - a.values[p])
            self.verdict = self.cs.verdict()

    def next_round(self, states: list[ArmState], size: int) -> list[int]:
        """The next `size` positions, in order, that either arm still owes."""
        out = []
        for p in self.plan.order[self.read_upto :]:
            if any(p in s.pending for s in states):
                out.append(p)
                if len(out) == size:
                    break
        return out


def _round_size(arms: list[Arm], concurrency: int | None) -> int:
    config = arms[0].record.config
    limit = concurrency or config.concurrency
    repeats = max(arm.record.config.repeats for arm in arms)
    return max(1, limit // (2 * repeats))


def _drive(
    runner: Runner,
    exp: str,
    plan: SequentialStarted,
    arms: list[Arm],
    concurrency: int | None,
    budget: Budget | None,
) -> ExperimentResult:
    """Dispatch rounds of pairs until the sequence stops, then record the stop."""
    store = runner.store
    for arm in arms:
        arm.session.budget = budget
    walk = Walk(plan)
    size = _round_size(arms, concurrency)
    try:
        with deferred_signals() as check:
            for arm in arms:
                arm.session.check_signals = check
            reason = _rounds(store, walk, arms, size, concurrency, budget, check)
    except KeyboardInterrupt as stop:
        return _interrupted(runner, exp, arms, stop)
    except BaseException:
        for arm in arms:
            store.release_lease(arm.lease)
        raise
    assert walk.verdict is not None
    return _conclude(runner, exp, arms, walk.verdict, reason, plan)


def _rounds(
    store: Store,
    walk: Walk,
    arms: list[Arm],
    size: int,
    concurrency: int | None,
    budget: Budget | None,
    check: Callable[[], None],
) -> str:
    """Send rounds until a verdict; returns why the sequence stopped."""
    metric = walk.plan.metric
    last: tuple[int, ...] = ()
    while True:
        states = [arm_state(store, arm.record, metric) for arm in arms]
        walk.advance(states)
        if walk.verdict is not None:
            return REASONS[walk.verdict.verdict]
        todo = walk.next_round(states, size)
        spent = budget is not None and (budget.reached or budget.check())
        if not todo or spent or tuple(todo) == last:
            walk.verdict = walk.cs.verdict(exhausted=True)
            return BUDGET if spent else "no pairs left"
        last = tuple(todo)  # the same round twice: nothing it sent was answered
        check()
        for arm, state in zip(arms, states, strict=True):
            _send(arm, [p for p in todo if p in state.pending], concurrency)


def _send(arm: Arm, positions: list[int], concurrency: int | None) -> None:
    """One arm's share of a round: every repeat of these samples still owed."""
    if not positions:
        return
    record = arm.record
    repeats = record.config.repeats
    owed = arm.session.store.pending_positions(record.run_id, retry_failed=False)
    samples = [
        dataclasses.replace(record.samples[p], repeat=r)
        for p in positions
        for r in range(repeats)
        if p * repeats + r in owed
    ]
    if record.started.mode == "mock":
        from exprof.run.mock import run_mock

        run_mock(arm.session, samples)
    else:
        from exprof.run.live import run_live

        run_live(arm.session, samples, concurrency, warn=not arm.warned)
        arm.warned = True


# -- ending ---------------------------------------------------------------------------


def _verdict_of(stopped: SequentialStopped) -> Verdict:
    lo, hi = stopped.interval
    return Verdict(stopped.verdict, stopped.winner, stopped.pairs_used, (lo, hi))


def _conclude(
    runner: Runner,
    exp: str,
    arms: list[Arm],
    verdict: Verdict,
    reason: str,
    plan: SequentialStarted | None,
) -> ExperimentResult:
    """Record the stop (once: `plan` is None when it is recorded already), finish and
    export both arms, and report."""
    store = runner.store
    began = time.monotonic()
    try:
        if plan is not None:
            payload = verdict.to_payload()
            stop = SequentialStopped(
                verdict.verdict,
                verdict.winner,
                verdict.pairs_used,
                payload["interval"],
                plan.seed,
                plan.order,
                reason,
            )
            store.append(exp, [stop], after_seq=store.last_seq(exp))
        for arm in arms:
            counts = store.sample_stats(arm.record.run_id)
            ok = counts["ok"].count if "ok" in counts else 0
            failed = counts["failed"].count if "failed" in counts else 0
            arm.session.append([RunFinished(ok, failed, round(time.monotonic() - began, 3))])
            runner._export(arm.record.run_id, arm.record)
    finally:
        for arm in arms:
            store.release_lease(arm.lease)
    return _report(store, exp, verdict.to_payload(), reason)


def _finished(store: Store, run_id: str) -> bool:
    return store.run_row(run_id).status in ("complete", "failed")


def _report(store: Store, exp: str, outcome: dict[str, Any], reason: str) -> ExperimentResult:
    return ExperimentResult(
        exp,
        experiment_summary(store, exp)["cells"],
        EXIT_OK,
        f"experiment {exp}: {describe(outcome)} ({reason})",
        sequential=outcome,
    )


def _interrupted(
    runner: Runner, exp: str, arms: list[Arm], stop: KeyboardInterrupt
) -> ExperimentResult:
    for arm in arms:
        runner._interrupted(arm.record, arm.lease, stop)
    return ExperimentResult(
        exp,
        experiment_summary(runner.store, exp)["cells"],
        stop_exit_code(stop),
        f"interrupted; continue the same sequence with: exprof resume {exp}",
    )


def describe(outcome: dict[str, Any]) -> str:
    """The verdict in words, for the summary's line."""
    lo, hi = outcome["interval"]
    pairs = f"after {outcome['pairs_used']} pairs, interval [{lo}, {hi}] for B - A"
    if outcome["verdict"] == "decided":
        return f"decided: {outcome['winner']} wins {pairs}"
    return f"{outcome['verdict']} {pairs}"
