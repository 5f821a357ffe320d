"""Pacing live requests: AIMD over requests in flight."""

from __future__ import annotations

import asyncio
import collections
import time


class AdaptiveLimit:
    """AIMD over requests in flight: halve the limit on a 429 (at most once a second),
    add one back after each `limit` successes, never above the configured concurrency.
    A request waiting to retry holds no slot, so a 429 storm really thins the traffic."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self.in_flight = 0
        self.successes = 0
        self.last_cut = 0.0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self.waiters:
            self.in_flight += 1  # the common case: no lock, no await
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # the slot is handed over by release()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot we can no longer use
            else:
                self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters and self.in_flight < self.limit:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def on_rate_limited(self) -> None:
        now = time.monotonic()
        if now - self.last_cut > 1.0:
            self.limit = max(1, self.limit // 2)
            self.last_cut = now
            self.successes = 0

    def on_success(self) -> None:
        if self.limit < self.ceiling:
            self.successes += 1
            if self.successes >= self.limit:
                self.limit += 1
                self.successes = 0
                self._wake()
