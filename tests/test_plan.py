"""`exprof plan`: the samples needed to detect a paired difference, checked against
textbook values, an independent computation, and by simulation of compare's test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import write_experiment
from exprof.power import (
    Spread,
    paired_spread,
    samples_needed,
    simulated_power,
    single_spread,
    t_test_power,
    variance_ci,
)
from exprof.pricing import PRICES_PER_MTOK

FACTS = 4


def pair_of_runs(folder: Path, n: int, seed: int, tokens: tuple[int, int] = (20, 30)) -> None:
    """Two mock runs `a` and `b` on the same n samples: B covers about as many facts as
    A, give or take one, so their coverages correlate (claude-3-haiku prices)."""
    rng = np.random.default_rng(seed)
    samples, mocks_a, mocks_b = [], {}, {}
    for i in range(n):
        facts = [f"f{i}-{k}" for k in range(FACTS)]
        did = f"d{i:04d}"
        samples.append(
            {"dialogue_id": did, "system": "s", "user": f"q{i}", "required_facts": facts}
        )
        ka = int(rng.integers(0, FACTS + 1))
        kb = int(np.clip(ka + rng.integers(-1, 2), 0, FACTS))
        for mocks, k, t in ((mocks_a, ka, tokens[0]), (mocks_b, kb, tokens[1])):
            meta = {"model": "claude-3-haiku", "token_count": t}
            mocks[did] = {"completion": "x " + " ".join(facts[:k]), "metadata": meta}
    for name, mocks in (("a", mocks_a), ("b", mocks_b)):
        write_experiment(folder / name, samples, mocks, experiment_id=name, model="claude-3-haiku")


def run_pair(tmp_path: Path, invoke, n: int = 200, seed: int = 1) -> None:
    pair_of_runs(tmp_path / "cfg", n, seed)
    for name in ("a", "b"):
        config = str(tmp_path / "cfg" / name / "config.yaml")
        assert invoke("run", "--config", config, "--quiet").exit_code == 0


def coverages(tmp_path: Path, name: str) -> np.ndarray:
    lines = (tmp_path / "runs" / name / "scores.jsonl").read_text().splitlines()
    return np.array([json.loads(line)["fact_coverage"] for line in lines])


def plan_json(invoke, *args: str) -> dict:
    result = invoke("plan", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the math ---------------------------------------------------------------------------


def test_samples_needed_matches_the_textbook():
    # Paired t test, d = 0.5, two-sided 5%, power 80%: 34 pairs (Cohen; G*Power gives 34).
    assert samples_needed(1.0, 0.5, 0.8, 0.05) == 34
    assert samples_needed(2.0, 1.0, 0.8, 0.05) == 34  # only delta / sd matters
    assert samples_needed(1.0, 0.2, 0.9, 0.05) == 265
    n = samples_needed(0.3, 0.05, 0.8, 0.05)
    assert t_test_power(n, 0.05 / 0.3, 0.05) >= 0.8 > t_test_power(n - 1, 0.05 / 0.3, 0.05)


def test_variance_ci_covers_the_true_variance_95_percent():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(2000):
        draws = rng.normal(0, 2.0, size=25)
        lo, hi = variance_ci(float(np.var(draws, ddof=1)), 24)
        hits += lo <= 4.0 <= hi
    assert 0.935 <= hits / 2000 <= 0.965


def test_repeats_split_the_variance_into_between_and_within():
    rng = np.random.default_rng(5)
    n, k = 4000, 3
    base = rng.normal(0, 1.0, size=n)  # a sample's own difficulty, shared by both arms
    effect = rng.normal(0, 0.5, size=n)  # how B differs from A on this sample
    a = {f"d{i}": list(base[i] + rng.normal(0, 0.8, size=k)) for i in range(n)}
    b = {f"d{i}": list(base[i] + effect[i] + rng.normal(0, 0.6, size=k)) for i in range(n)}
    spread, diffs = paired_spread(a, b)
    assert spread.repeats == k and spread.samples == n and len(diffs) == n
    assert spread.between == pytest.approx(0.25, rel=0.1)
    assert spread.within == pytest.approx(0.64 + 0.36, rel=0.05)
    assert spread.at(k) == pytest.approx(float(np.var(diffs, ddof=1)))
    single = single_spread(a, 0.5)  # 2 (1 - 0.5) Var(a): Var(a) at K repeats
    assert single.at(k) == pytest.approx(float(np.var([np.mean(v) for v in a.values()], ddof=1)))
    assert Spread(1.0, 3.0, 10, 3).at(1) == 4.0


# -- the command ------------------------------------------------------------------------


def test_plan_from_two_runs_equals_an_independent_computation(tmp_path, invoke):
    from scipy import stats

    run_pair(tmp_path, invoke)
    found = plan_json(invoke, "a", "b", "--detect", "0.05")
    diffs = coverages(tmp_path, "b") - coverages(tmp_path, "a")
    n = len(diffs)
    s2 = float(np.var(diffs, ddof=1))
    lo = s2 * (n - 1) / stats.chi2.ppf(0.975, n - 1)
    hi = s2 * (n - 1) / stats.chi2.ppf(0.025, n - 1)

    def needed(var: float) -> int:  # the smallest n whose paired t test has 80% power
        m = 2
        while True:
            crit = stats.t.ppf(0.975, m - 1)
            nc = 0.05 * math.sqrt(m / var)
            if stats.nct.sf(crit, m - 1, nc) + stats.nct.cdf(-crit, m - 1, nc) >= 0.8:
                return m
            m += 1

    samples = needed(s2)
    price = PRICES_PER_MTOK["claude-3-haiku"]["output"] / 1e6  # the mock's tokens are output
    assert found == {
        "metric": "fact_coverage",
        "detect": 0.05,
        "power": 0.8,
        "alpha": 0.05,
        "runs": ["a", "b"],
        "basis": f"variance of the paired differences b - a over {n} samples",
        "correlation": None,
        "samples_estimated_from": n,
        "sd_paired": round(math.sqrt(s2), 4),
        "sd_paired_ci95": [round(math.sqrt(lo), 4), round(math.sqrt(hi), 4)],
        "plan": [
            {
                "repeats": 1,
                "samples": samples,
                "samples_ci95": [needed(lo), needed(hi)],
                "requests_per_arm": samples,
                "sd_paired": round(math.sqrt(s2), 4),
                "cost_usd": {
                    "a": round(samples * 20 * price, 6),
                    "b": round(samples * 30 * price, 6),
                },
            }
        ],
        "notes": [],
    }
    table = invoke("plan", "a", "b", "--detect", "0.05")
    assert table.exit_code == 0
    assert f"from: variance of the paired differences b - a over {n} samples" in table.stdout
    assert f"{needed(lo)}-{needed(hi)}" in table.stdout


def test_plan_from_one_run_assumes_a_correlation_and_says_so(tmp_path, invoke):
    run_pair(tmp_path, invoke, n=60)
    found = plan_json(invoke, "a", "--detect", "0.1", "--correlation", "0.3")
    var_a = float(np.var(coverages(tmp_path, "a"), ddof=1))
    assert found["sd_paired"] == round(math.sqrt(2 * 0.7 * var_a), 4)
    assert found["correlation"] == 0.3
    assert found["basis"] == "one run: correlation 0.3 between the two arms assumed"
    assert found["plan"][0]["samples"] == samples_needed(math.sqrt(1.4 * var_a), 0.1, 0.8, 0.05)
    assert list(found["plan"][0]["cost_usd"]) == ["a"]
    table = invoke("plan", "a", "--detect", "0.1", "--correlation", "0.3").stdout
    assert "note: assumed: the two arms correlate at 0.3 (--correlation)" in table
    # Higher correlation, smaller variance of the difference, fewer samples.
    assert (
        plan_json(invoke, "a", "--detect", "0.1", "--correlation", "0.8")["plan"][0]["samples"]
        < found["plan"][0]["samples"]
    )


def test_plan_covers_custom_metrics_and_repeats(tmp_path, invoke):
    rng = np.random.default_rng(2)
    samples, mocks = [], {}
    for i in range(30):
        samples.append(
            {"dialogue_id": f"d{i}", "system": "s", "user": "q", "required_facts": ["x"]}
        )
        words = " ".join(["w"] * int(rng.integers(1, 12)))
        mocks[f"d{i}"] = {"completion": words, "metadata": {"token_count": 5}}
    metrics = ["fact_coverage", {"name": "long", "type": "length", "unit": "words", "min": 6}]
    config = write_experiment(tmp_path / "c", samples, mocks, repeats=2, metrics=metrics)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    found = plan_json(invoke, "exp", "--detect", "0.2", "--metric", "long")
    assert [row["repeats"] for row in found["plan"]] == [1, 2, 4]
    assert found["plan"][1]["requests_per_arm"] == 2 * found["plan"][1]["samples"]
    # The mock answers every repeat alike: no within-sample variance, so repeats buy nothing.
    assert len({row["samples"] for row in found["plan"]}) == 1
    per_answer = 5 * PRICES_PER_MTOK["claude-3-opus"]["output"] / 1e6
    for row in found["plan"]:
        assert row["cost_usd"] == {"exp": round(per_answer * row["requests_per_arm"], 6)}


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["a", "b", "--detect", "0"],
            "Error: --detect must be a positive, finite difference, not 0",
        ),
        (
            ["a", "--detect", "-0.1"],
            "Error: --detect must be a positive, finite difference, not -0.1",
        ),
        (
            ["a", "--detect", "nan"],
            "Error: --detect must be a positive, finite difference, not nan",
        ),
        (
            ["a", "--detect", "0.1", "--metric", "geometric_mean"],
            "Error: geometric_mean is a run-level metric with no per-sample value; "
            "use --metric fact_coverage or refusal_rate",
        ),
        (
            ["a", "--detect", "0.1", "--metric", "nope"],
            "Error: run 'a' has no metric 'nope' (it has: fact_coverage, refusal_rate)",
        ),
        (
            ["a", "--detect", "0.1", "--metric", "refusal_rate"],
            "Error: refusal_rate has no variance in a: every sample scores the same, "
            "so there is nothing to plan from",
        ),
        (
            ["a", "b", "--detect", "0.1", "--metric", "refusal_rate"],
            "Error: refusal_rate has no variance in the differences of a and b: every sample "
            "scores the same, so there is nothing to plan from",
        ),
        (
            ["small", "--detect", "0.1"],
            "Error: 'small' has 6 samples with a fact_coverage value; at least 10 are "
            "needed to estimate its variance",
        ),
        (["a", "nothere", "--detect", "0.1"], None),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, invoke, args, line):
    run_pair(tmp_path, invoke, n=40)
    pair_of_runs(tmp_path / "s", 6, 0)
    small = tmp_path / "s" / "a" / "config.yaml"
    text = small.read_text().replace('"experiment_id": "a"', '"experiment_id": "small"')
    small.write_text(text)
    assert invoke("run", "--config", str(small), "--quiet").exit_code == 0
    result = invoke("plan", *args)
    assert result.exit_code == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error: ")
    if line is not None:
        assert errors[0] == line
    assert result.stdout == ""


# -- by simulation ----------------------------------------------------------------------


def test_the_planned_n_gives_80_percent_power_by_simulation(tmp_path, invoke):
    """compare's paired bootstrap test, run on n samples drawn from the recorded
    differences shifted to the planned delta, detects it about 80% of the time."""
    run_pair(tmp_path, invoke, n=300, seed=4)
    diffs = coverages(tmp_path, "b") - coverages(tmp_path, "a")
    for delta in (0.03, 0.06):
        n = plan_json(invoke, "a", "b", "--detect", str(delta))["plan"][0]["samples"]
        power = simulated_power(diffs, n, delta, trials=600, seed=11, resamples=1000)
        assert 0.75 <= power <= 0.85, (delta, n, power)
