"""Pacing live requests: the organisation's rate limits, and AIMD over requests in flight.

The API reports each per-minute limit on every response, as
`anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining,reset}`.
A `RatePacer` keeps one token bucket per limit in its own books, refilled at the
advertised rate (a little under it, HEADROOM), and dispatch waits until every bucket
holds the request's cost, so a run goes at the binding limit without crossing it:
- requests cost 1; input tokens are estimated from the request's length (the ratio is
  learned from `usage`); output tokens from the mean so far (at first, max_tokens).
  Each estimate is settled against `usage` when the answer comes.
- `remaining` caps our level (less what we have in flight, which the server may not
  have counted yet), so a colleague's job on the same key slows us down; a lower
  `limit` takes effect on the next response.
- an empty bucket (`remaining` 0) waits for the first token the `reset` time implies.
- `retry-after` is honoured exactly by the request that got the 429. A 429 without the
  headers falls back to AIMD (AdaptiveLimit) and holds all dispatch for retry-after.
- `rate_limit: {rpm, itpm, otpm}` in the config caps each limit below the org's, from
  the first request, for sharing a key.

Sharing. There is one RatePacer per model (and endpoint, and `rate_limit` cap) in a
process (`pacer_for`), so everything that runs at once there (the cells of a matrix,
judge requests, retries, several sessions) draws on the same buckets. Across
processes (several workers on one key), each worker paces itself: the server's
`remaining` counts every worker's spend, so each one's level is capped by what is
really left and together they follow the server's bucket; a `rate_limit` cap is per
process, so give each of N workers 1/N of the share.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from exprof.clients import sanitize

HEADROOM = 0.98  # pace this close to an advertised limit: jitter lives in the rest
BURST_S = 1.0  # our buckets hold this many seconds of refill (the API may enforce per second)
LIMITS = ("requests", "input-tokens", "output-tokens")
CAP_KEYS = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}
HEADER = "anthropic-ratelimit-{}-{}"
SHOWN_FOR_S = 1.0  # the progress bar says "rate-limited" this long after a wait
FIRST_TOKENS_PER_CHAR = 0.5  # before any usage is seen; real text runs about 0.25-0.3
ESTIMATE_WEIGHT = 0.1  # exponential mean over answers
EPSILON = 1e-6  # tokens
# Bounds on what a header may say: no per-minute limit is above this, and a per-minute
# bucket is full again within the minute, whatever its `reset` claims.
MAX_LIMIT = 1e9
MAX_RESET_S = 60.0


@dataclass
class Bucket:
    """One per-minute limit in our books. `level` may go below zero: a debt."""

    limit: float
    level: float
    at: float
    not_before: float = 0.0  # set from `reset` when the server says the bucket is empty

    @property
    def rate(self) -> float:
        return self.limit / 60 * HEADROOM

    @property
    def capacity(self) -> float:
        return max(self.rate * BURST_S, 1.0)

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
            self.at = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be taken (a cost above capacity waits for a full one)."""
        short = min(cost, self.capacity) - self.level
        # A hair short is rounding, not a wait: a sleep too short to move the clock
        # would only come back here.
        return max(short / self.rate if short > EPSILON else 0.0, self.not_before - now)


@dataclass
class RatePacer:
    """The buckets for one model. Thread-safe; time is passed in, so tests simulate it."""

    caps: dict[str, int] = field(default_factory=dict)  # bucket name -> per-minute cap
    buckets: dict[str, Bucket] = field(default_factory=dict)
    outstanding: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LIMITS, 0.0))
    blocked_until: float = 0.0
    binding: str = ""  # the limit that made the last request wait
    waited_at: float = float("-inf")
    tokens_per_char: float = FIRST_TOKENS_PER_CHAR
    output_mean: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cap(self, caps: Mapping[str, int], now: float) -> None:
        """Apply a config's `rate_limit` ({rpm, itpm, otpm}); the lowest cap wins."""
        with self.lock:
            for key, value in caps.items():
                name = CAP_KEYS[key]
                self.caps[name] = min(value, self.caps.get(name, value))
                self._set_limit(name, self.caps[name], now)

    def estimate(self, chars: int, max_tokens: int) -> dict[str, float]:
        """What a request of `chars` characters is expected to cost."""
        output = max_tokens if self.output_mean is None else min(self.output_mean, max_tokens)
        return {
            "requests": 1.0,
            "input-tokens": chars * self.tokens_per_char,
            "output-tokens": float(output),
        }

    def reserve(self, cost: Mapping[str, float], now: float) -> float:
        """Take `cost` from every bucket and return 0, or return the seconds to wait
        before asking again (taking nothing)."""
        with self.lock:
            wait, binding = self.blocked_until - now, "retry-after"
            for name, bucket in self.buckets.items():
                bucket.refill(now)
                needed = bucket.wait(cost[name], now)
                if needed > wait:
                    wait, binding = needed, name
            if wait > 0:
                self.binding, self.waited_at = binding, now
                return wait
            for name, bucket in self.buckets.items():
                bucket.level -= cost[name]
            for name in LIMITS:
                self.outstanding[name] += cost[name]
            return 0.0

    def settle(
        self,
        cost: Mapping[str, float],
        headers: Mapping[str, str] | None,
        now: float,
        wall_now: float | None = None,
        usage: tuple[int, int] | None = None,
        chars: int = 0,
    ) -> bool:
        """A reserved request came back: correct its estimates by `usage` (input and
        output tokens), learn from the headers. Returns whether they had any limit."""
        with self.lock:
            for name in LIMITS:
                self.outstanding[name] = max(self.outstanding[name] - cost[name], 0.0)
            if usage is not None:
                self._learn(cost, usage, chars, now)
            return self._read_headers(headers, now, wall_now) if headers is not None else False

    def hold(self, seconds: float, now: float) -> None:
        """Dispatch nothing for `seconds`: a 429 that said retry-after and nothing else."""
        with self.lock:
            self.blocked_until = max(self.blocked_until, now + seconds)

    def status(self, now: float) -> str:
        """For the progress bar: which limit is holding the run back, if one is."""
        if now - self.waited_at > SHOWN_FOR_S:
            return ""
        bucket = self.buckets.get(self.binding)
        if bucket is None:
            return "rate-limited (retry-after)"
        short = {v: k for k, v in CAP_KEYS.items()}[self.binding]
        return f"rate-limited ({short} {bucket.limit:g})"

    # -- internals (the lock is held) -----------------------------------------------

    def _learn(
        self, cost: Mapping[str, float], usage: tuple[int, int], chars: int, now: float
    ) -> None:
        input_tokens, output_tokens = usage
        for name, actual in (("input-tokens", input_tokens), ("output-tokens", output_tokens)):
            bucket = self.buckets.get(name)
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.capacity, bucket.level + cost[name] - actual)
        if chars:
            ratio = input_tokens / chars
            self.tokens_per_char += ESTIMATE_WEIGHT * (ratio - self.tokens_per_char)
        if self.output_mean is None:
            self.output_mean = float(output_tokens)
        else:
            self.output_mean += ESTIMATE_WEIGHT * (output_tokens - self.output_mean)

    def _set_limit(self, name: str, limit: float, now: float) -> Bucket:
        limit = min(limit, self.caps.get(name, limit))
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = Bucket(limit, 0.0, now)
            bucket.level = bucket.capacity
        elif bucket.limit != limit:
            bucket.refill(now)
            bucket.limit = limit
            bucket.level = min(bucket.level, bucket.capacity)
        return bucket

    def _read_headers(self, headers: Mapping[str, str], now: float, wall_now: float | None) -> bool:
        seen = False
        for name in LIMITS:
            limit = sanitize.number(headers.get(HEADER.format(name, "limit")), 0, MAX_LIMIT)
            if limit is None or limit < 1:
                continue
            seen = True
            bucket = self._set_limit(name, limit, now)
            remaining = sanitize.number(headers.get(HEADER.format(name, "remaining")), 0, limit)
            if remaining is None:
                continue
            bucket.refill(now)
            # What the server had left, less what we sent that it may not have counted.
            bucket.level = min(bucket.level, remaining - self.outstanding[name])
            if remaining < 1:
                reset = headers.get(HEADER.format(name, "reset"))
                reset_in = sanitize.seconds_until(reset, MAX_RESET_S, wall_now)
                if reset_in is not None and reset_in > 0:
                    # The server refills to `limit` by `reset`: its first token comes after.
                    bucket.not_before = now + reset_in / max(limit - remaining, 1.0)
        return seen


class Gate:
    """Dispatch through a RatePacer, first come first served, for one event loop: the
    first waiter sleeps until its cost is there, the rest queue behind it."""

    def __init__(self, pacer: RatePacer) -> None:
        self.pacer = pacer
        self.lock = asyncio.Lock()

    async def enter(self, cost: Mapping[str, float]) -> None:
        if not self.lock.locked() and self.pacer.reserve(cost, time.monotonic()) == 0:
            return  # the common case: no lock, no sleep
        async with self.lock:
            while (wait := self.pacer.reserve(cost, time.monotonic())) > 0:
                await asyncio.sleep(wait)


_PACERS: dict[tuple[str, str, tuple[tuple[str, int], ...]], RatePacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(model: str, endpoint: str = "", caps: Mapping[str, int] | None = None) -> RatePacer:
    """The process's one RatePacer for `model` at `endpoint` under `caps` (a config's
    `rate_limit`), so that one config's cap never slows another config's run."""
    key = (endpoint, model, tuple(sorted((caps or {}).items())))
    with _PACERS_LOCK:
        pacer = _PACERS.get(key)
        if pacer is None:
            pacer = _PACERS[key] = RatePacer()
            if caps:
                pacer.cap(caps, time.monotonic())
        return pacer


class AdaptiveLimit:
    """AIMD over requests in flight: halve the limit on a 429 (at most once a second),
    add one back after each `limit` successes, never above the configured concurrency.
    A request waiting to retry holds no slot, so a 429 storm really thins the traffic.
    Used when 429s come without rate-limit headers; with them, RatePacer paces."""

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
