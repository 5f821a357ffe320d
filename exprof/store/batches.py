"""A batch run's Message Batches, folded from its batch events.

Intents, the batches they created, what the last poll saw, which ended and which the
user cancelled: everything a resume, `exprof cancel` and `exprof runs` need, read back
from the events alone.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from exprof.store.engine import Store
from exprof.store.events import (
    BATCH_EVENTS,
    BatchCancelled,
    BatchEnded,
    BatchIntent,
    BatchPolled,
    BatchSubmitted,
    BatchVoided,
)


@dataclass
class Batch:
    intent: int
    batch_id: str
    created_at: str
    requests: int
    status: str = "submitted"  # then in_progress / canceling / ended, as last polled
    counts: dict[str, int] = field(default_factory=dict)
    ended: bool = False  # every result recorded (BatchEnded)
    cancelled: bool = False  # by the user, with `exprof cancel`


@dataclass
class BatchState:
    intents: dict[int, BatchIntent] = field(default_factory=dict)
    batches: dict[str, Batch] = field(default_factory=dict)
    voided: set[int] = field(default_factory=set)

    @property
    def unresolved(self) -> list[BatchIntent]:
        """Intents with neither a batch nor a void: a crash may have hit their create."""
        claimed = {b.intent for b in self.batches.values()}
        return [i for n, i in self.intents.items() if n not in claimed and n not in self.voided]

    @property
    def live(self) -> list[Batch]:
        """Batches whose results are not all recorded yet."""
        return [b for b in self.batches.values() if not b.ended]

    @property
    def next_intent(self) -> int:
        return max(self.intents, default=0) + 1

    def live_ranges(self) -> Ranges:
        return Ranges([r for b in self.live for r in self.intents[b.intent].ranges])

    def attempts(self, position: int) -> int:
        """How many batches (created or maybe created) carried this sample."""
        return sum(
            Ranges(i.ranges).contains(position)
            for n, i in self.intents.items()
            if n not in self.voided
        )

    def describe(self) -> str:
        """One line for `exprof runs`: batches by state, and the request counts."""
        if not self.batches and not self.intents:
            return ""
        by_status: dict[str, int] = {}
        totals: dict[str, int] = {}
        for b in self.batches.values():
            status = "ended" if b.ended else b.status
            by_status[status] = by_status.get(status, 0) + 1
            for key, value in b.counts.items():
                totals[key] = totals.get(key, 0) + value
        parts = [f"{n} {status}" for status, n in sorted(by_status.items())]
        parts += [f"{key} {value}" for key, value in sorted(totals.items()) if value]
        return ", ".join(parts) or "submitting"


def batch_state(store: Store, run_id: str) -> BatchState:
    state = BatchState()
    for stored in store.events(run_id, types=BATCH_EVENTS):
        ev = stored.event
        if isinstance(ev, BatchIntent):
            state.intents[ev.intent] = ev
        elif isinstance(ev, BatchSubmitted):
            state.batches[ev.batch_id] = Batch(ev.intent, ev.batch_id, ev.created_at, ev.requests)
        elif isinstance(ev, BatchVoided):
            state.voided.add(ev.intent)
        elif isinstance(ev, BatchPolled) and ev.batch_id in state.batches:
            state.batches[ev.batch_id].status = ev.status
            state.batches[ev.batch_id].counts = dict(ev.counts)
        elif isinstance(ev, BatchEnded) and ev.batch_id in state.batches:
            batch = state.batches[ev.batch_id]
            batch.ended, batch.status, batch.counts = True, "ended", dict(ev.counts)
        elif isinstance(ev, BatchCancelled):
            for batch_id in ev.batch_ids:
                if batch_id in state.batches:
                    state.batches[batch_id].cancelled = True
    return state


class Ranges:
    """Sorted, merged [start, stop) position ranges: a million contiguous samples take
    one pair, not a million set entries."""

    def __init__(self, ranges: list[list[int]]) -> None:
        merged: list[list[int]] = []
        for start, stop in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        self.starts = [r[0] for r in merged]
        self.stops = [r[1] for r in merged]

    def contains(self, position: int) -> bool:
        k = bisect.bisect_right(self.starts, position) - 1
        return k >= 0 and position < self.stops[k]


def to_ranges(positions: list[int]) -> list[list[int]]:
    """Sorted positions as [start, stop) ranges."""
    out: list[list[int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return out


def iter_ranges(ranges: list[list[int]]) -> list[int]:
    return [p for start, stop in ranges for p in range(start, stop)]
