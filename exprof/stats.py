"""Statistics as pure functions over arrays: exact McNemar, the multinomial bootstrap."""

from __future__ import annotations

import math

import numpy as np

MULTINOMIAL_MAX_TUPLES = 5000


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b against b + c at one half."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top + math.log(sum(math.exp(x - top) for x in logs)) - n * math.log(2))
    return min(1.0, 2 * tail)


def bootstrap_means(tuples: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` paired bootstrap resamples of the rows of `tuples` (n x m)."""
    rng = np.random.default_rng(seed)
    n = len(tuples)
    distinct, counts = np.unique(tuples, axis=0, return_counts=True)
    if len(distinct) <= MULTINOMIAL_MAX_TUPLES:
        draws = rng.multinomial(n, counts / n, size=resamples)
        return (draws @ distinct) / n
    out = np.empty((resamples, tuples.shape[1]))
    step = max(1, 2_000_000 // n)
    for start in range(0, resamples, step):
        stop = min(start + step, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = tuples[idx].mean(axis=1)
    return out
