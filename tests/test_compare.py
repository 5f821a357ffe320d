"""exprof compare: known answers, determinism, the CI gate, formats and overlap."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from conftest import write_experiment
from exprof.stats import bootstrap_means, mcnemar_exact


def make_run(tmp_path, invoke, run_id, covered, refused=(), ids=None, **config):
    """A mock run where sample i's answer covers covered[i] of its 2 facts."""
    ids = ids or [f"d{i:04d}" for i in range(len(covered))]
    samples, mocks = [], {}
    for did, k in zip(ids, covered, strict=True):
        facts = [f"{did}-alpha", f"{did}-beta"]
        samples.append({"dialogue_id": did, "system": "", "user": did, "required_facts": facts})
        meta = {"type": "refusal"} if did in refused else {}
        mocks[did] = {"completion": " ".join(facts[:k]) or "nothing", "metadata": meta}
    config_path = write_experiment(tmp_path / run_id, samples, mocks, **config)
    result = invoke("run", "--config", str(config_path), "--run-id", run_id, "--quiet")
    assert result.exit_code == 0, result.output
    return ids


def compare_json(invoke, *args):
    result = invoke("compare", *args, "--format", "json")
    return result, json.loads(result.stdout) if result.stdout.strip() else None


def test_mcnemar_matches_a_hand_computation():
    # b=1, c=6: p = 2 * (C(7,0) + C(7,1)) / 2**7 = 16 / 128
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # b=0, c=10: 2 / 1024
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)


def test_multinomial_bootstrap_matches_index_resampling():
    rng = np.random.default_rng(1)
    tuples = np.column_stack([rng.integers(0, 3, 500) / 2, rng.integers(0, 3, 500) / 2])
    fast = bootstrap_means(tuples, 4000, seed=3)
    slow = tuples[np.random.default_rng(4).integers(0, 500, (4000, 500))].mean(axis=1)
    assert fast.mean(axis=0) == pytest.approx(slow.mean(axis=0), abs=2e-3)
    assert fast.std(axis=0) == pytest.approx(slow.std(axis=0), rel=0.1)


def test_identical_runs_show_zero_change(tmp_path, invoke):
    covered = [i % 3 for i in range(60)]
    make_run(tmp_path, invoke, "a", covered, refused={"d0001"})
    result, out = compare_json(invoke, "a", "a")
    assert result.exit_code == 0
    cov = out["metrics"]["fact_coverage"]
    assert (cov["delta"], cov["ci95"], cov["verdict"]) == (0, [0, 0], "no significant change")
    assert out["metrics"]["refusal_rate"]["mcnemar_p"] == 1.0
    assert out["top_changed"] == [] and out["samples"] == {"common": 60, "a_only": 0, "b_only": 0}


def test_ci_contains_the_true_difference_and_a_shift_is_improved(tmp_path, invoke):
    a_cov = [i % 3 for i in range(200)]
    b_cov = [min(2, k + 1) if i % 4 == 0 else k for i, k in enumerate(a_cov)]
    make_run(tmp_path, invoke, "a", a_cov)
    make_run(tmp_path, invoke, "b", b_cov)
    true_delta = (sum(b_cov) - sum(a_cov)) / 2 / 200
    _, out = compare_json(invoke, "a", "b")
    cov = out["metrics"]["fact_coverage"]
    assert cov["delta"] == pytest.approx(true_delta, abs=1e-4)
    assert cov["ci95"][0] <= true_delta <= cov["ci95"][1]
    assert cov["ci95"][0] > 0 and cov["verdict"] == "improved"
    first = out["top_changed"][0]
    assert first["delta"] == 0.5 and first["facts_lost"] == []
    assert first["facts_gained"] == [f"{first['dialogue_id']}-alpha"]
    _, back = compare_json(invoke, "b", "a")
    assert back["metrics"]["fact_coverage"]["verdict"] == "regressed"
    assert back["top_changed"][0]["facts_lost"] == [
        f"{back['top_changed'][0]['dialogue_id']}-alpha"
    ]


def test_same_seed_same_output(tmp_path, invoke):
    make_run(tmp_path, invoke, "a", [i % 3 for i in range(80)])
    make_run(tmp_path, invoke, "b", [(i + 1) % 3 for i in range(80)])
    first = invoke("compare", "a", "b", "--seed", "7").stdout
    assert first == invoke("compare", "a", "b", "--seed", "7").stdout
    assert (
        invoke("compare", "a", "b", "--format", "json").stdout
        == invoke("compare", "a", "b", "--format", "json").stdout
    )


def test_gate_exit_codes(tmp_path, invoke):
    base = [1] * 100
    make_run(tmp_path, invoke, "a", base)
    make_run(tmp_path, invoke, "worse", [0 if i % 3 == 0 else 1 for i in range(100)])
    make_run(tmp_path, invoke, "refuses", base, refused={f"d{i:04d}" for i in range(5)})
    ok = invoke("compare", "a", "a", "--fail-on-regression")
    assert ok.exit_code == 0 and ok.stderr == ""
    bad = invoke("compare", "a", "worse", "--fail-on-regression")
    assert bad.exit_code == 1
    assert bad.stderr.startswith(
        "regression: fact_coverage regressed: 0.5 -> 0.33 (delta -0.17, 95% CI ["
    )
    assert invoke("compare", "worse", "a", "--fail-on-regression").exit_code == 0
    assert invoke("compare", "a", "refuses", "--fail-on-regression").exit_code == 0
    refusals = invoke("compare", "a", "refuses", "--max-refusal-increase", "0.02")
    assert refusals.exit_code == 1
    assert refusals.stderr == (
        "regression: refusal_rate rose by 0.05 (0.0 -> 0.05), past --max-refusal-increase 0.02\n"
    )
    assert invoke("compare", "a", "refuses", "--max-refusal-increase", "0.1").exit_code == 0


def test_refusal_flips_both_ways(tmp_path, invoke):
    make_run(tmp_path, invoke, "a", [1] * 20, refused={"d0000"})
    make_run(tmp_path, invoke, "b", [1] * 20, refused={f"d{i:04d}" for i in range(1, 7)})
    _, out = compare_json(invoke, "a", "b")
    assert out["refusal_flips"] == {
        "refused_in_a_only": ["d0000"],
        "refused_in_b_only": [f"d{i:04d}" for i in range(1, 7)],
    }
    assert out["metrics"]["refusal_rate"]["mcnemar_p"] == pytest.approx(0.125)
    assert out["metrics"]["refusal_rate"]["verdict"] == "no significant change"


def test_partial_overlap_and_only_lists(tmp_path, invoke):
    make_run(tmp_path, invoke, "a", [1] * 100, ids=[f"x{i:03d}" for i in range(100)])
    make_run(tmp_path, invoke, "b", [2] * 100, ids=[f"x{i:03d}" for i in range(50, 150)])
    _, out = compare_json(invoke, "a", "b")
    assert out["samples"] == {"common": 50, "a_only": 50, "b_only": 50}
    assert out["a_only"][:2] == ["x000", "x001"] and out["b_only"][-1] == "x149"
    assert out["metrics"]["fact_coverage"]["a"] == 0.5
    assert out["metrics"]["fact_coverage"]["b"] == 1.0
    rows = list(csv.reader(io.StringIO(invoke("compare", "a", "b", "--format", "csv").stdout)))
    assert rows[0] == ["dialogue_id", "coverage_a", "coverage_b", "delta", "refused_a", "refused_b"]
    assert len(rows) == 1 + 150
    assert rows[1] == ["x050", "0.5", "1.0", "0.5", "False", "False"]


def test_every_format_parses(tmp_path, invoke):
    make_run(tmp_path, invoke, "a", [i % 3 for i in range(30)])
    make_run(tmp_path, invoke, "b", [(i + 1) % 3 for i in range(30)])
    _, out = compare_json(invoke, "a", "b")
    assert list(out) == [
        "a",
        "b",
        "samples",
        "statistics",
        "metrics",
        "refusal_flips",
        "top_changed",
        "a_only",
        "b_only",
        "config_diff",
    ]
    markdown = invoke("compare", "a", "b", "--format", "markdown").stdout.splitlines()
    tables = [line for line in markdown if line.startswith("|")]
    assert tables[0].startswith("| metric") and set(tables[1]) <= set("|-: ")
    assert all(line.endswith("|") for line in tables)
    assert "### top 10 coverage changes" in markdown
    table = invoke("compare", "a", "b").stdout
    assert "fact_coverage" in table and "top 10 coverage changes:" in table


def test_fewer_than_ten_common_samples_are_not_meaningful(tmp_path, invoke):
    make_run(tmp_path, invoke, "a", [0] * 5)
    make_run(tmp_path, invoke, "b", [2] * 5)
    _, out = compare_json(invoke, "a", "b")
    cov = out["metrics"]["fact_coverage"]
    assert cov["ci95"] is None
    assert cov["verdict"] == "not meaningful: 5 common samples (< 10)"
    assert cov["delta"] == 1.0


def test_experiment_id_and_export_dir_arguments(tmp_path, invoke):
    make_run(tmp_path, invoke, "a", [i % 3 for i in range(40)], experiment_id="exp")
    make_run(tmp_path, invoke, "b", [2] * 40, experiment_id="exp")
    _, by_id = compare_json(invoke, "a", "b")
    _, by_experiment = compare_json(invoke, "a", "exp")  # exp's latest run is b
    _, by_dir = compare_json(invoke, "runs/a", "runs/b")
    assert by_experiment["b"] == "b"
    assert by_dir["metrics"]["fact_coverage"] == by_id["metrics"]["fact_coverage"]
    assert by_dir["top_changed"] == by_id["top_changed"]
    assert by_dir["refusal_flips"] == by_id["refusal_flips"]


def test_config_diff_and_unsent_temperature(tmp_path, invoke):
    make_run(tmp_path, invoke, "a", [1] * 12, temperature=0.2)
    make_run(tmp_path, invoke, "b", [1] * 12, temperature=0.9, model="claude-other", max_tokens=7)
    _, out = compare_json(invoke, "a", "b")
    diff = out["config_diff"]
    assert diff["fields"] == {
        "model": {"a": "claude-3-opus", "b": "claude-other"},
        "max_tokens": {"a": 100, "b": 7},
    }
    assert diff["notes"] == [
        "temperature is configured differently (0.2 vs 0.9) but neither run sent it"
    ]
    assert diff["datasets_identical"] is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope", "a"], "no run, experiment or export directory named 'nope'"),
        (["a", "c"], "no common samples between a and c"),
        (["a", "a", "--top", "-1"], "Invalid value for '--top'"),
    ],
)
def test_compare_errors(tmp_path, invoke, args, message):
    make_run(tmp_path, invoke, "a", [1] * 3)
    make_run(tmp_path, invoke, "c", [1] * 3, ids=["z1", "z2", "z3"])
    result = invoke("compare", *args)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and message in line
