"""An anytime-valid confidence sequence for the mean paired difference of two arms,
for stopping an A/B test as soon as it is decided.

The sequence is the hedged betting confidence sequence of Waudby-Smith & Ramdas,
"Estimating means of bounded random variables by betting", JRSS-B 86(1), 2024
(arXiv:2010.09686, 2020; section 4, the hedged capital process with predictable
plug-in bets). Each paired difference d_t in [low, high] is mapped to x_t in [0, 1].
For a candidate mean m, two gamblers bet that the mean is above and below m:

    K+_t(m) = prod_i (1 + l+_i(m) (x_i - m)),   K-_t(m) = prod_i (1 - l-_i(m) (x_i - m)),

with the predictable bet l_i = sqrt(2 log(2/alpha) / (s2_{i-1} i log(1 + i))), where
s2 is the running variance estimate (1/4 + sum (x_j - mu_j)^2) / (i + 1) around the
running mean mu_j = (1/2 + sum x_k) / (j + 1), capped at c/m for K+ and c/(1 - m) for
K- (c = 1/2) so that no bet can lose everything. Under the mean m, the hedged capital
max(K+/2, K-/2) is a nonnegative martingale (supermartingale) starting at 1, so by
Ville's inequality it ever reaches 1/alpha with probability at most alpha: the set of m
it has not rejected is a (1 - alpha) confidence sequence, valid at every sample size at
once, and so at any data-dependent stopping time. Unlike a fixed-n interval, it may be
checked after every pair.

The candidates are a fixed grid over [low, high] that holds 0 and +-min_effect
exactly; a rejected candidate stays rejected (the running intersection, also valid).
The interval reported runs between the rejected grid points next to the surviving
ones, so it contains the exact sequence's interval. Everything is vectorised over a
leading batch of independent sequences, which the simulations use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

GRID = 401  # candidates over [low, high]: a resolution of 0.5% of the range
TRUNCATION = 0.5  # c: the largest share of its capital a gambler may bet
MIN_PAIRS = 10  # the peeked fixed-n test starts here, as compare's intervals do


@dataclass(frozen=True)
class Verdict:
    verdict: str  # decided, equivalent or undecided
    winner: str | None  # "A" or "B" when decided
    pairs_used: int
    interval: tuple[float, float]

    def to_payload(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "winner": self.winner,
            "pairs_used": self.pairs_used,
            "interval": [round(self.interval[0], 4), round(self.interval[1], 4)],
        }


class BettingCS:
    """The confidence sequence, updated one paired difference (B - A) at a time."""

    def __init__(
        self,
        alpha: float = 0.05,
        low: float = -1.0,
        high: float = 1.0,
        min_effect: float | None = None,
        batch: tuple[int, ...] = (),
        grid: int = GRID,
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if not low < 0 < high:
            raise ValueError("the differences' range must hold 0")
        self.alpha, self.low, self.high, self.min_effect = alpha, low, high, min_effect
        marks = [0.0] + ([-min_effect, min_effect] if min_effect else [])
        deltas = np.union1d(np.linspace(low, high, grid)[1:-1], marks)
        self.deltas = deltas  # the candidate mean differences, ascending
        self._m = (deltas - low) / (high - low)  # the same candidates in x units
        self._zero = int(np.searchsorted(deltas, 0.0))
        self._threshold = math.log(1 / alpha)
        shape = (*batch, len(deltas))
        self._log_up = np.zeros(shape)
        self._log_down = np.zeros(shape)
        self.rejected = np.zeros(shape, dtype=bool)
        self._up_wins = np.zeros(shape, dtype=bool)  # which gambler rejected a candidate
        self._sum = np.zeros(batch)
        self._sum_sq = np.zeros(batch)
        self.pairs = 0

    def update(self, diffs: float | np.ndarray) -> None:
        """Add one paired difference per sequence in the batch."""
        d = np.asarray(diffs, dtype=float)
        x = (d - self.low) / (self.high - self.low)
        if np.any(x < -1e-12) or np.any(x > 1 + 1e-12):
            raise ValueError(f"a difference lies outside [{self.low}, {self.high}]")
        x = np.clip(x, 0.0, 1.0)
        t = self.pairs + 1
        variance = (0.25 + self._sum_sq) / t  # s2_{t-1}: the data before this pair
        bet = np.sqrt(2 * math.log(2 / self.alpha) / (variance * t * math.log(1 + t)))
        bet = bet[..., None]
        m = self._m
        up = np.minimum(bet, TRUNCATION / np.maximum(m, 1e-12))
        down = np.minimum(bet, TRUNCATION / np.maximum(1 - m, 1e-12))
        gain = x[..., None] - m
        self._log_up += np.log1p(up * gain)
        self._log_down += np.log1p(-down * gain)
        half = math.log(0.5)
        up_hit = self._log_up + half >= self._threshold
        down_hit = self._log_down + half >= self._threshold
        fresh = (up_hit | down_hit) & ~self.rejected
        self._up_wins |= fresh & up_hit
        self.rejected |= fresh
        self._sum += x
        mean = (0.5 + self._sum) / (t + 1)
        self._sum_sq += (x - mean) ** 2
        self.pairs = t

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """The sequence's interval for the mean difference, per batch member: from the
        rejected candidate below the lowest survivor to the one above the highest (the
        range's ends where none is rejected); an empty sequence gives its midpoint."""
        alive = ~self.rejected
        n = alive.shape[-1]
        first = np.argmax(alive, axis=-1)
        last = n - 1 - np.argmax(alive[..., ::-1], axis=-1)
        edges = np.concatenate([[self.low], self.deltas, [self.high]])
        lo = edges[first]  # edges[i] is the candidate before deltas[i]
        hi = edges[last + 2]
        empty = ~alive.any(axis=-1)
        if np.any(empty):  # every candidate rejected: only by a data error or float noise
            lo, hi = np.where(empty, 0.0, lo), np.where(empty, 0.0, hi)
        return lo, hi

    def decided(self) -> np.ndarray:
        """Whether the sequence excludes 0."""
        return self.rejected[..., self._zero]

    def equivalent(self) -> np.ndarray:
        """Whether the sequence lies within +-min_effect (and holds 0)."""
        if not self.min_effect:
            return np.zeros(self.rejected.shape[:-1], dtype=bool)
        outside = np.abs(self.deltas) >= self.min_effect
        return ~self.decided() & self.rejected[..., outside].all(axis=-1)

    def b_wins(self) -> np.ndarray:
        """Where decided: whether B is the better arm (the mean exceeds 0)."""
        return self._up_wins[..., self._zero]

    def verdict(self, exhausted: bool = False) -> Verdict | None:
        """A single sequence's verdict; None while it goes on (`exhausted`: no pairs
        are left, and an undecided sequence stops too)."""
        lo, hi = (float(v) for v in self.interval())
        if bool(self.decided()):
            winner = "B" if bool(self.b_wins()) else "A"
            return Verdict("decided", winner, self.pairs, (lo, hi))
        if bool(self.equivalent()):
            return Verdict("equivalent", None, self.pairs, (lo, hi))
        if exhausted:
            return Verdict("undecided", None, self.pairs, (lo, hi))
        return None


def replay(diffs: list[float], **options: Any) -> BettingCS:
    """The sequence after these differences, in this order: a resumed run continues the
    very same sequence by replaying its recorded pairs."""
    cs = BettingCS(**options)
    for d in diffs:
        cs.update(d)
    return cs


def simulate(
    draw: Any,
    runs: int,
    max_pairs: int,
    alpha: float = 0.05,
    min_effect: float | None = None,
    seed: int = 0,
    grid: int = GRID,
) -> dict[str, Any]:
    """`runs` sequential A/B tests side by side, each checked after every pair up to
    `max_pairs`. `draw(rng, runs)` gives one paired difference per run. Returns the
    sequence's verdicts and stopping points, and beside it how often a fixed-n paired
    t test (95%, two-sided) peeked at after every pair from MIN_PAIRS on would have
    declared a difference."""
    from exprof.stats import t_quantile

    rng = np.random.default_rng(seed)
    cs = BettingCS(alpha, min_effect=min_effect, batch=(runs,), grid=grid)
    stop = np.full(runs, max_pairs)
    verdict = np.full(runs, "undecided", dtype=object)
    b_wins = np.zeros(runs, dtype=bool)
    peeked = np.zeros(runs, dtype=bool)
    total = np.zeros(runs)
    total_sq = np.zeros(runs)
    crit = [t_quantile(1 - alpha / 2, n - 1) if n > 1 else math.inf for n in range(max_pairs + 1)]
    running = np.ones(runs, dtype=bool)
    for n in range(1, max_pairs + 1):
        d = draw(rng, runs)
        cs.update(d)
        total += d
        total_sq += d * d
        if n >= MIN_PAIRS:
            mean = total / n
            var = np.maximum(total_sq / n - mean**2, 0.0) * n / (n - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.abs(mean) / np.sqrt(var / n)
            peeked |= np.nan_to_num(z, nan=0.0) > crit[n]
        decided = cs.decided() & running
        equivalent = cs.equivalent() & running & ~decided
        for mask, name in ((decided, "decided"), (equivalent, "equivalent")):
            verdict[mask] = name
            stop[mask] = n
        b_wins[decided] = cs.b_wins()[decided]
        running &= ~(decided | equivalent)
    return {
        "runs": runs,
        "max_pairs": max_pairs,
        "decided_rate": float(np.mean(verdict == "decided")),
        "equivalent_rate": float(np.mean(verdict == "equivalent")),
        "b_wins_rate": float(np.mean((verdict == "decided") & b_wins)),
        "peeked_fixed_n_rate": float(np.mean(peeked)),
        "stop": stop,
        "verdict": verdict,
    }
