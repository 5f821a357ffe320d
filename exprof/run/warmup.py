"""Cache-aware scheduling for the live loop (`prompt_cache`, unless `schedule: false`).

Samples are grouped by their cacheable prefix (its hash, exprof.clients.caching). The
first request of a group goes alone and writes the prefix; the rest of the group wait
until its answer has arrived, then fan out and read it, so the prefix is written once
and not once per slot. Meanwhile the other groups' requests, and samples with nothing
to cache, fill the concurrency. A group whose last answer is older than the TTL is
warmed again by its next request (after a pause: a resume, a rate limit); a warm-up
that fails hands the role to the group's next sample.

What is warm is kept for the process, by endpoint and prefix, so the matrix cells and
repeats that share a prefix share its warm-up. The samples are drawn from the source as
they are needed, at most LOOKAHEAD_PER_SLOT per slot ahead, so a shared run's workers
still divide the work between them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from exprof.dataset import Sample

LOOKAHEAD_PER_SLOT = 8
WARMING = -1.0
# (endpoint, prefix hash) -> when its last answer arrived (time.monotonic()), or WARMING.
WARM: dict[tuple[str, str], float] = {}


class Scheduler:
    def __init__(
        self,
        samples: Iterable[Sample],
        prefix: Callable[[Sample], str | None],
        ttl_s: float,
        concurrency: int,
    ) -> None:
        self.source: Iterator[Sample] | None = iter(samples)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.endpoint = os.environ.get("ANTHROPIC_BASE_URL") or ""
        self.lookahead = LOOKAHEAD_PER_SLOT * concurrency
        self.ready: deque[Sample] = deque()
        self.held: dict[str, deque[Sample]] = {}  # per warming prefix, in dataset order
        self.warmers: dict[tuple[str, int], str] = {}  # (dialogue_id, repeat) -> prefix
        self.given: dict[tuple[str, int], str] = {}  # the other samples given out, by prefix
        self.changed = asyncio.Event()
        self.warmups = 0  # requests sent alone to write a prefix

    def _held_count(self) -> int:
        return sum(len(q) for q in self.held.values())

    async def next(self, halt: asyncio.Event) -> Sample | None:
        """The next sample to send, waiting while only held ones are left; None when
        every sample has been given out (or on a halt)."""
        while not halt.is_set():
            found = self._take()
            if found is not None:
                return found
            if self.source is None and not self.held:
                return None
            self.changed.clear()
            waiting = asyncio.ensure_future(self.changed.wait())
            halted = asyncio.ensure_future(halt.wait())
            await asyncio.wait({waiting, halted}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            halted.cancel()
        return None

    def _take(self) -> Sample | None:
        if self.ready:
            return self.ready.popleft()
        while self.source is not None and self._held_count() < self.lookahead:
            sample = next(self.source, None)
            if sample is None:
                self.source = None
                break
            found = self._admit(sample)
            if found is not None:
                return found
        return None

    def _admit(self, sample: Sample) -> Sample | None:
        """The sample, if it may go now (a warm prefix, none, or its group's warm-up);
        else None, and it is held until its group is warm."""
        prefix = self.prefix(sample)
        if prefix is None:
            return sample
        key = (self.endpoint, prefix)
        state = WARM.get(key)
        if state == WARMING and prefix in self.held:
            self.held[prefix].append(sample)
            return None
        if state is not None and state != WARMING and time.monotonic() - state < self.ttl_s:
            self.given[(sample.dialogue_id, sample.repeat)] = prefix
            return sample
        return self._warm(sample, prefix)

    def _warm(self, sample: Sample, prefix: str) -> Sample:
        WARM[(self.endpoint, prefix)] = WARMING
        self.held.setdefault(prefix, deque())
        self.warmers[(sample.dialogue_id, sample.repeat)] = prefix
        self.warmups += 1
        return sample

    def answered(self, sample: Sample, ok: bool) -> None:
        """A request is over: a warm-up's answer releases its group (a failed one passes
        the warm-up to the group's next sample); any answer keeps its prefix warm."""
        prefix = self.warmers.pop((sample.dialogue_id, sample.repeat), None)
        if prefix is not None:
            held = self.held.pop(prefix)
            if ok:
                WARM[(self.endpoint, prefix)] = time.monotonic()
                self.given.update(((s.dialogue_id, s.repeat), prefix) for s in held)
                self.ready.extend(held)
            else:
                WARM.pop((self.endpoint, prefix), None)
                if held:
                    self.held[prefix] = held
                    self.ready.append(self._warm(held.popleft(), prefix))
        else:
            prefix = self.given.pop((sample.dialogue_id, sample.repeat), None)
            if ok and prefix is not None and WARM.get((self.endpoint, prefix)) != WARMING:
                WARM[(self.endpoint, prefix)] = time.monotonic()
        self.changed.set()
