"""The samples one worker of a live run sends, claimed from the store a chunk at a time.

Every live run is shareable: `exprof resume RUN --join` adds workers beside the one that
started it, and each draws its samples from a ClaimSource instead of a fixed list, so no
two live workers send the same (sample, repeat) pair. The store records each claim in
the transaction that takes it (exprof/store/workers.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.scoring import judge
from exprof.store.engine import Store
from exprof.store.leases import Lease


class ClaimSource:
    """Iterate to claim: `chunk` pairs at a time, so a killed worker leaves at most that
    many claimed and sent twice; a pair this worker did not load (one that failed after
    it started) is skipped and left for a later resume."""

    def __init__(
        self,
        store: Store,
        lease: Lease,
        pending: Iterable[Sample],
        owed: tuple[str, ...],
        chunk: int,
    ) -> None:
        self.store, self.lease, self.owed, self.chunk = store, lease, owed, chunk
        self.index = {(s.dialogue_id, s.repeat): s for s in pending}

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[Sample]:
        cursor = -1
        while True:
            taken = self.store.claim(self.lease, self.owed, self.chunk, after=cursor)
            if not taken and cursor >= 0:  # behind us: a dead worker's expired claims
                taken = self.store.claim(self.lease, self.owed, self.chunk)
            if not taken:
                return
            cursor = taken[-1][0]
            for _, dialogue_id, repeat in taken:
                sample = self.index.get((dialogue_id, repeat))
                if sample is not None:
                    yield sample


def check_joinable(mode: str, config: dict[str, Any], run_id: str) -> None:
    """`resume --join` adds workers to plain live runs only; anything else is refused
    before this process registers as a worker."""
    if mode != "live":  # mock runs take seconds: nothing to share
        raise ExprofError(f"run {run_id} is a {mode} run: --join adds workers to live runs")
    if config.get("batch"):  # the Batches API runs it, not workers
        raise ExprofError(f"run {run_id} is a batch run: --join adds workers to live runs")
    if judge.specs(config["metrics"]):  # graders run after the answers, once per worker
        raise ExprofError(f"run {run_id} has judge metrics: --join is for runs without them")
    if config.get("tools"):  # each worker reads a sample's recorded turns when it starts
        raise ExprofError(
            f"run {run_id} calls tools: --join is for runs without them (a worker would not "
            "see the turns another records for a sample it takes over)"
        )
    if config.get("cache"):  # answers are reused before claiming: a joiner could race it
        raise ExprofError(f"run {run_id} reuses answers (cache): --join is for runs without it")
