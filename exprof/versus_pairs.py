"""The pairs of a sequential A/B (exprof.versus), read in the recorded order.

Each arm's answers are read from the store by dataset position, a sample's repeats
averaged into one value of the metric; the walk feeds each pair both arms have
answered, as B - A, to the confidence sequence (exprof.sequential).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exprof.scoring import recorded
from exprof.sequential import BettingCS, Verdict
from exprof.store.engine import Store
from exprof.store.events import SequentialStarted
from exprof.store.record import RunRecord

# The metrics a sequence can follow, each per sample in [0, 1]: differences in [-1, 1].
METRICS: dict[str, Callable[[float, bool], float]] = {
    "fact_coverage": lambda coverage, refused: coverage,
    "refusal_rate": lambda coverage, refused: float(refused),
}


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
