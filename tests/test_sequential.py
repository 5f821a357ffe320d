"""The betting confidence sequence for sequential A/B tests: its error rates by
simulation (at a size CI can afford; benchmarks/bench_sequential.py runs the full
one), and its bookkeeping (replay, batches, verdicts)."""

from __future__ import annotations

import numpy as np
import pytest

from exprof.sequential import BettingCS, replay, simulate


def coverage_pairs(shift: float):
    """Per-sample coverage of 3 facts in both arms, with a shared per-sample difficulty
    (so the arms correlate); B's chance per fact is A's plus `shift` exactly."""

    def draw(rng: np.random.Generator, runs: int) -> np.ndarray:
        p = 0.85 * rng.beta(2, 2, size=runs)
        a = rng.binomial(3, p) / 3
        b = rng.binomial(3, p + shift) / 3
        return b - a

    return draw


def test_no_difference_is_seldom_decided_though_a_peeked_fixed_n_test_often_is():
    found = simulate(coverage_pairs(0.0), runs=400, max_pairs=500, seed=1)
    assert found["decided_rate"] <= 0.05
    assert found["peeked_fixed_n_rate"] >= 0.25  # peeking a fixed-n test: far above 5%


def test_a_true_difference_of_015_stops_early_and_picks_b():
    found = simulate(coverage_pairs(0.15), runs=200, max_pairs=2000, seed=2)
    assert found["decided_rate"] == 1.0 and found["b_wins_rate"] == 1.0
    assert np.median(found["stop"]) <= 0.4 * 2000


def test_the_true_difference_is_seldom_excluded():
    """Coverage at every sample size at once: the true 0.15 is ever rejected in at most
    5% of runs (min_effect puts it on the grid exactly)."""
    rng = np.random.default_rng(3)
    draw = coverage_pairs(0.15)
    cs = BettingCS(min_effect=0.15, batch=(300,))
    for _ in range(600):
        cs.update(draw(rng, 300))
    truth = int(np.searchsorted(cs.deltas, 0.15))
    assert cs.deltas[truth] == pytest.approx(0.15)
    assert cs.rejected[:, truth].mean() <= 0.05
    lo, hi = cs.interval()
    assert np.mean((lo <= 0.15) & (0.15 <= hi)) >= 0.95


def test_equivalence_is_declared_for_no_difference_but_seldom_at_the_margin():
    none = simulate(coverage_pairs(0.0), runs=200, max_pairs=2000, min_effect=0.1, seed=4)
    assert none["equivalent_rate"] >= 0.9
    # A true difference of exactly min_effect is not equivalent: at most alpha say so.
    edge = simulate(coverage_pairs(0.1), runs=200, max_pairs=1500, min_effect=0.1, seed=5)
    assert edge["equivalent_rate"] <= 0.05


def test_replay_continues_the_same_sequence_and_batches_agree():
    rng = np.random.default_rng(6)
    diffs = list(coverage_pairs(0.1)(rng, 300))
    whole = replay(diffs, min_effect=0.05)
    first = replay(diffs[:120], min_effect=0.05)
    for d in diffs[120:]:
        first.update(d)
    assert np.array_equal(whole.rejected, first.rejected)
    batch = BettingCS(min_effect=0.05, batch=(2,))
    for d in diffs:
        batch.update(np.array([d, -d]))
    assert np.array_equal(batch.rejected[0], whole.rejected)
    lo, hi = batch.interval()
    assert lo[0] == pytest.approx(-hi[1]) and hi[0] == pytest.approx(-lo[1])  # mirrored


def test_verdicts():
    cs = BettingCS()
    assert cs.verdict() is None
    start = cs.verdict(exhausted=True)
    assert start is not None and start.verdict == "undecided" and start.interval == (-1.0, 1.0)
    for _ in range(200):
        cs.update(-0.5)  # A is better by 0.5 every time
        if cs.verdict() is not None:
            break
    found = cs.verdict()
    assert found is not None and found.verdict == "decided" and found.winner == "A"
    assert found.interval[1] < 0 and found.pairs_used < 50
    assert found.to_payload()["verdict"] == "decided"
    with pytest.raises(ValueError, match="outside"):
        cs.update(1.5)
