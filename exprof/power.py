"""`exprof plan`: how many samples (and repeats) to pay for to detect a paired change.

The test being planned for is compare's: a paired comparison of two arms on the same
samples, significant at `alpha` (two-sided) when its interval excludes zero. Its power
at n samples is that of the paired t test on the per-sample differences d_i (each the
mean of the sample's repeats), with noncentrality DELTA * sqrt(n) / sd(d). The sd comes
from the recorded runs:

- two runs: the variance of their paired differences, with a chi-square 95% interval on
  that variance (s2 * df / chi2), which becomes a range of sample counts;
- one run: Var(a - b) = 2 * (1 - rho) * Var(a), both arms assumed to vary as this run
  does, with correlation rho (`--correlation`) between them, which the output states.

With repeats the per-sample variance splits into a between-sample part and a
within-sample part that shrinks as 1/K, so more repeats buy fewer samples.
scipy.stats supplies the t, noncentral t and chi-square distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from exprof.costs import cost_per_answer
from exprof.errors import ExprofError
from exprof.sample_values import repeat_values
from exprof.stats import bootstrap_means
from exprof.store.engine import Store

MIN_SAMPLES = 10  # compare's own floor: below it no interval is printed
MAX_N = 10**9


def t_test_power(n: int, effect: float, alpha: float) -> float:
    """Power of the two-sided one-sample t test at n for a standardized effect."""
    from scipy.stats import nct, t

    df = n - 1
    crit = t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return float(nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc))


def samples_needed(sd: float, delta: float, power: float, alpha: float) -> int:
    """The smallest n (at least 2) at which the paired t test has `power` for `delta`."""
    from scipy.stats import norm

    effect = delta / sd
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    n = max(2, math.ceil((z / effect) ** 2))  # the normal answer, never above the t one
    if n >= MAX_N:
        return n
    while t_test_power(n, effect, alpha) < power:
        n += 1
    return n


def variance_ci(s2: float, df: int, level: float = 0.95) -> tuple[float, float]:
    """The chi-square interval for a normal variance estimated as s2 on df degrees."""
    from scipy.stats import chi2

    tail = (1 - level) / 2
    return s2 * df / float(chi2.ppf(1 - tail, df)), s2 * df / float(chi2.ppf(tail, df))


@dataclass(frozen=True)
class Spread:
    """A per-sample variance at any number of repeats: between + within / K."""

    between: float
    within: float
    samples: int  # the samples it was estimated from
    repeats: int  # the repeats they have (the variance's own K)

    def at(self, repeats: int) -> float:
        return self.between + self.within / repeats


def _means_and_within(values: dict[str, list[float]], ids: list[str]) -> tuple[np.ndarray, float]:
    """Per-sample means, and the mean within-sample variance of the repeats (0 without)."""
    means = np.array([np.mean(values[d]) for d in ids])
    spreads = [np.var(values[d], ddof=1) for d in ids if len(values[d]) > 1]
    return means, float(np.mean(spreads)) if spreads else 0.0


def paired_spread(
    a: dict[str, list[float]], b: dict[str, list[float]]
) -> tuple[Spread, np.ndarray]:
    """The variance of the paired differences of two runs, split by repeats; and the
    differences themselves."""
    ids = [d for d in a if d in b]
    means_a, within_a = _means_and_within(a, ids)
    means_b, within_b = _means_and_within(b, ids)
    diffs = means_b - means_a
    k = max(1, round(np.mean([len(a[d]) for d in ids] + [len(b[d]) for d in ids])))
    within = within_a + within_b
    total = float(np.var(diffs, ddof=1)) if len(ids) > 1 else 0.0
    return Spread(max(0.0, total - within / k), within, len(ids), k), diffs


def single_spread(a: dict[str, list[float]], correlation: float) -> Spread:
    """One run as both arms: Var(a - b) = 2 (1 - rho) Var(a), at every K."""
    ids = list(a)
    means, within = _means_and_within(a, ids)
    k = max(1, round(np.mean([len(a[d]) for d in ids])))
    total = float(np.var(means, ddof=1)) if len(ids) > 1 else 0.0
    scale = 2 * (1 - correlation)
    return Spread(scale * max(0.0, total - within / k), scale * within, len(ids), k)


def plan(
    store: Store,
    run_a: str,
    run_b: str | None,
    metric: str,
    delta: float,
    power: float = 0.8,
    alpha: float = 0.05,
    correlation: float = 0.5,
) -> dict[str, Any]:
    """The samples needed per repeats option, their range from the variance's 95%
    interval, and each run's expected cost for them."""
    if not 0 < delta < math.inf:
        raise ExprofError(f"--detect must be a positive, finite difference, not {delta:g}")
    a = repeat_values(store, run_a, metric)
    b = repeat_values(store, run_b, metric) if run_b is not None else None
    common = len([d for d in a if d in b]) if b is not None else len(a)
    if common < MIN_SAMPLES:
        what = f"{run_a!r} and {run_b!r} share" if b is not None else f"{run_a!r} has"
        raise ExprofError(
            f"{what} {common} samples with a {metric} value; "
            f"at least {MIN_SAMPLES} are needed to estimate its variance"
        )
    notes: list[str] = []
    if b is not None:
        spread, _ = paired_spread(a, b)
        basis = f"variance of the paired differences {run_b} - {run_a} over {common} samples"
    else:
        spread = single_spread(a, correlation)
        basis = f"one run: correlation {correlation:g} between the two arms assumed"
        notes.append(
            f"assumed: the two arms correlate at {correlation:g} (--correlation) and vary as "
            f"{run_a} does; plan from two runs for a measured variance"
        )
    variance = spread.at(spread.repeats)
    if not variance > 0:
        which = f"the differences of {run_a} and {run_b}" if b is not None else run_a
        raise ExprofError(
            f"{metric} has no variance in {which}: every sample scores the same, so "
            "there is nothing to plan from"
        )
    low, high = variance_ci(variance, spread.samples - 1)
    costs = {run: cost_per_answer(store, run) for run in ([run_a, run_b] if run_b else [run_a])}
    options = sorted({1, spread.repeats, 2 * spread.repeats}) if spread.repeats > 1 else [1]
    rows: list[dict[str, Any]] = []
    for k in options:
        at_k = spread.at(k)
        n = samples_needed(math.sqrt(at_k), delta, power, alpha)
        ratio_low, ratio_high = low / variance, high / variance
        n_range = [
            samples_needed(math.sqrt(at_k * ratio_low), delta, power, alpha),
            samples_needed(math.sqrt(at_k * ratio_high), delta, power, alpha),
        ]
        rows.append(
            {
                "repeats": k,
                "samples": n,
                "samples_ci95": n_range,
                "requests_per_arm": n * k,
                "sd_paired": round(math.sqrt(at_k), 4),
                "cost_usd": {
                    run: None if per is None else round(per * n * k, 6)
                    for run, per in costs.items()
                },
            }
        )
    if any(per is None for per in costs.values()):
        notes.append("cost unknown for a run whose model has no price (see pricing:)")
    dataset = min(store.run_row(r).samples_total for r in costs)
    if rows[0]["samples"] > dataset:
        notes.append(f"more samples than the dataset's {dataset}: the arms would need more data")
    return {
        "metric": metric,
        "detect": delta,
        "power": power,
        "alpha": alpha,
        "runs": list(costs),
        "basis": basis,
        "correlation": correlation if b is None else None,
        "samples_estimated_from": spread.samples,
        "sd_paired": round(math.sqrt(variance), 4),
        "sd_paired_ci95": [round(math.sqrt(low), 4), round(math.sqrt(high), 4)],
        "plan": rows,
        "notes": notes,
    }


def simulated_power(
    diffs: np.ndarray,
    n: int,
    delta: float,
    trials: int,
    seed: int,
    resamples: int = 1000,
    alpha: float = 0.05,
) -> float:
    """The share of `trials` simulated paired experiments of n samples, drawn from the
    recorded differences recentred on `delta`, in which compare's paired bootstrap
    interval excludes zero: the power plan's n is meant to give."""
    rng = np.random.default_rng(seed)
    population = np.asarray(diffs, dtype=float) - float(np.mean(diffs)) + delta
    hits = 0
    for trial in range(trials):
        drawn = rng.choice(population, size=n, replace=True).reshape(-1, 1)
        means = bootstrap_means(drawn, resamples, seed + 1 + trial)[:, 0]
        lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        hits += bool(lo > 0 or hi < 0)
    return hits / trials
