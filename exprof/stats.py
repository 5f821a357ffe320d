"""Statistics as pure functions over arrays: exact McNemar, the multinomial bootstrap,
t intervals, Holm.

Distributions come from scipy.stats, imported inside the functions that need them:
importing it costs about a second, and `run`, `summarize` and `export` never load it
(tests/test_scipy.py checks). The one quantile those commands need, Student's t at
97.5% for a clustered interval, is `t_quantile_975` below, which stays scipy-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MULTINOMIAL_MAX_TUPLES = 5000
# scipy.stats.t.ppf(0.975, df) for df = 1..29, to 10 decimals (tests/test_scipy.py checks
# every one against scipy); from df = 30 the expansion in t_quantile_975 is within 4e-8.
T975_BELOW_30 = (
    12.7062047362, 4.3026527297, 3.1824463053, 2.7764451052, 2.5705818356, 2.4469118511,
    2.3646242516, 2.3060041352, 2.2621571628, 2.2281388520, 2.2009851601, 2.1788128297,
    2.1603686565, 2.1447866879, 2.1314495456, 2.1199052992, 2.1098155778, 2.1009220402,
    2.0930240544, 2.0859634473, 2.0796138447, 2.0738730679, 2.0686576104, 2.0638985616,
    2.0595385528, 2.0555294386, 2.0518305165, 2.0484071418, 2.0452296421,
)  # fmt: skip


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b against b + c at one half."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5).pvalue)


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile at probability q with df degrees of freedom (scipy.stats)."""
    from scipy.stats import t

    return float(t.ppf(q, df))


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


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile without scipy: scipy's own values below df = 30, and
    from there the Cornish-Fisher expansion around the normal quantile (Abramowitz &
    Stegun 26.7.5), whose error is then below 4e-8 and shrinks as df**-5."""
    if df < 1:
        return math.inf
    if df < 30:
        return T975_BELOW_30[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def cluster_mean_ci(clusters: np.ndarray) -> tuple[float, float | None, float | None]:
    """The mean of an n x K array (n samples, K repeats each) with a 95% interval that
    treats each sample's repeats as one cluster: a t interval over the n cluster means.
    The repeats of one prompt are correlated, so counting them as n*K independent draws
    would make the interval too narrow; with K = 1 this is the ordinary t interval, whose
    small-sample coverage beats the percentile bootstrap's (tests/test_matrix.py)."""
    n = len(clusters)
    if n == 0:
        return math.nan, None, None
    means = np.asarray(clusters, dtype=float).reshape(n, -1).mean(axis=1)
    centre = float(means.mean())
    if n < 2:
        return centre, None, None
    half = t_quantile_975(n - 1) * float(means.std(ddof=1)) / math.sqrt(n)
    return centre, centre - half, centre + half


def bootstrap_p_value(deltas: np.ndarray) -> float:
    """Two-sided p-value of a zero change from a bootstrap distribution of the change:
    twice the smaller tail, never below one resample's weight."""
    n = len(deltas)
    tail = min(int((deltas <= 0).sum()), int((deltas >= 0).sum()))
    return min(1.0, max(2 * tail, 1) / n)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values is multiplied by
    m - i (i from 0), kept monotone and capped at 1; returned in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _mean(values: list[float] | list[bool]) -> float:
    """np.mean, bit for bit, without its ~10 us of overhead per call: below 8 values
    numpy adds them in order from 0.0, as sum() does (an experiment's summary takes
    one mean per sample and cell, twice)."""
    if len(values) < 8:
        return sum(values) / len(values)
    return float(np.mean(values))


def repeat_statistics(rows: list[tuple[str, float, bool]]) -> dict[str, Any]:
    """Per-sample statistics over repeats, from (dialogue_id, coverage, refused) rows with
    a sample's repeats next to each other: the metrics as means over samples (each the
    mean of its repeats) with clustered 95% intervals, pass@k (some repeat passes: full
    coverage, no refusal), pass^k (every repeat passes) and the refusal flips (samples
    refused in one repeat and answered in another)."""
    groups: dict[str, list[tuple[float, bool]]] = {}
    for dialogue_id, coverage, refused in rows:
        groups.setdefault(dialogue_id, []).append((coverage, refused))
    coverage_means = np.array([_mean([c for c, _ in g]) for g in groups.values()])
    refusal_means = np.array([_mean([r for _, r in g]) for g in groups.values()])
    passes = [[c == 1.0 and not r for c, r in g] for g in groups.values()]
    n = len(groups)
    out: dict[str, Any] = {"samples": n}
    for name, means in (("fact_coverage", coverage_means), ("refusal_rate", refusal_means)):
        centre, lo, hi = cluster_mean_ci(means)
        out[name] = round(centre, 4) if n else None
        # Both are proportions: an interval past [0, 1] says no more than its clipped self.
        out[f"{name}_ci95"] = (
            [round(max(lo, 0.0), 4), round(min(hi, 1.0), 4)]
            if lo is not None and hi is not None
            else None
        )
    out["pass_at_k"] = round(sum(any(p) for p in passes) / n, 4) if n else None
    out["pass_hat_k"] = round(sum(all(p) for p in passes) / n, 4) if n else None
    out["refusal_flips"] = sum(1 for m in refusal_means if 0 < m < 1)
    return out
