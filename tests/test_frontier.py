"""The cost-quality frontier of `summarize EXPERIMENT_ID`, against an independent
computation on a 6-cell mock experiment whose cells answer from different mock files
(a matrix over mock_responses_path) with known costs and qualities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exprof.frontier import pareto
from exprof.pricing import PRICES_PER_MTOK

FACTS = 5
N = 60
# name: (output tokens per answer before the per-sample jitter, chance a fact is covered)
CELLS = {
    "m1": (10, 0.2),
    "m2": (20, 0.5),
    "m3": (30, 0.4),  # dearer than m2 and worse: off the frontier
    "m4": (40, 0.8),
    "m5": (60, 0.75),  # dearer than m4 and no better: off
    "m6": (100, 1.0),
}
PRICE = PRICES_PER_MTOK["claude-3-haiku"]["output"] / 1e6  # a mock answer's tokens are output


def write_cells(folder: Path, seed: int = 3) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """The dataset, one mock file per cell, the config; and each cell's true per-sample
    coverage and cost, computed from what was written, not from exprof."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    samples = [
        {
            "dialogue_id": f"d{i:03d}",
            "system": "s",
            "user": f"q{i}",
            "required_facts": [f"f{i}-{k}" for k in range(FACTS)],
        }
        for i in range(N)
    ]
    (folder / "dialogues.json").write_text(json.dumps(samples))
    truth: dict[str, dict[str, np.ndarray]] = {}
    for name, (tokens, share) in CELLS.items():
        mocks, coverage, cost = {}, [], []
        for i, sample in enumerate(samples):
            covered = [f for f in sample["required_facts"] if rng.random() < share]
            count = tokens + i % 5
            meta = {"model": "claude-3-haiku", "token_count": count}
            mocks[sample["dialogue_id"]] = {"completion": " ".join(covered), "metadata": meta}
            coverage.append(len(covered) / FACTS)
            cost.append(count * PRICE)
        (folder / f"{name}.json").write_text(json.dumps(mocks))
        truth[name] = {"coverage": np.array(coverage), "cost": np.array(cost)}
    config = {
        "experiment_id": "fx",
        "model": "claude-3-haiku",
        "max_tokens": 200,
        "temperature": 0.0,
        "dataset_path": "dialogues.json",
        "matrix": {"mock_responses_path": [f"{name}.json" for name in CELLS]},
    }
    (folder / "config.yaml").write_text(json.dumps(config))
    return folder / "config.yaml", truth


def independent_frontier(points: dict[str, tuple[float, float]]) -> list[str]:
    """A sweep by cost: a cell is on the frontier when it beats the best quality of
    every cheaper cell (ties in cost resolved towards quality)."""
    order = sorted(points, key=lambda n: (points[n][0], -points[n][1]))
    best, out = -1.0, []
    for name in order:
        if points[name][1] > best:
            out.append(name)
            best = points[name][1]
    return out


def ratio_interval(cost: np.ndarray, quality: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(cost), size=(20_000, len(cost)))
    return np.percentile(cost[idx].sum(axis=1) / quality[idx].sum(axis=1), [2.5, 97.5])


def test_frontier_matches_an_independent_computation(tmp_path, invoke):
    config, truth = write_cells(tmp_path / "fx")
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json.loads(invoke("summarize", "fx", "--format", "json").stdout)
    cells = {c["cell"]: c for c in found["cells"]}
    assert sorted(cells) == [f"mock-{name}" for name in CELLS]  # the matrix's cell names
    points = {}
    for name, t in truth.items():
        cell = cells[f"mock-{name}"]
        cost, quality = t["cost"], t["coverage"]
        points[name] = (cost.mean(), quality.mean())
        assert cell["params"] == {"mock_responses_path": name}
        assert cell["fact_coverage"] == round(quality.mean(), 4)
        assert cell["cost_per_sample"] == pytest.approx(cost.mean(), abs=1e-8)
        assert cell["cost_per_correct"] == pytest.approx(cost.sum() / quality.sum(), abs=1e-8)
        assert cell["quality_per_usd"] == pytest.approx(quality.sum() / cost.sum(), abs=1e-4)
        lo, hi = cell["cost_per_correct_ci95"]
        ilo, ihi = ratio_interval(cost, quality, seed=5)
        assert lo < cell["cost_per_correct"] < hi
        assert lo == pytest.approx(ilo, rel=0.05) and hi == pytest.approx(ihi, rel=0.05)
    on = independent_frontier(points)
    assert on == ["m1", "m2", "m4", "m6"]
    assert {n: cells[f"mock-{n}"]["on_frontier"] for n in CELLS} == {n: n in on for n in CELLS}
    tests = found["frontier"]["neighbours"]
    assert [(t["from"], t["to"]) for t in tests] == [
        (f"mock-{a}", f"mock-{b}") for a, b in zip(on, on[1:], strict=False)
    ]
    for t, (a, b) in zip(tests, zip(on, on[1:], strict=False), strict=True):
        dq = truth[b]["coverage"] - truth[a]["coverage"]
        dc = truth[b]["cost"] - truth[a]["cost"]
        assert t["samples"] == N
        assert t["quality_delta"] == round(dq.mean(), 4)
        assert t["cost_per_sample_delta"] == pytest.approx(dc.mean(), abs=1e-8)
        assert t["quality_ci95"][0] < t["quality_delta"] < t["quality_ci95"][1]
        # Each sample costs the dearer cell the same amount more: a zero-width cost interval.
        assert t["cost_per_sample_ci95"][0] == pytest.approx(dc.mean(), abs=1e-8)
        assert t["cost_per_sample_ci95"][1] == pytest.approx(dc.mean(), abs=1e-8)
    table = invoke("summarize", "fx")
    assert table.exit_code == 0
    assert "on_frontier" in table.stdout
    assert "cost-quality frontier (fact_coverage): neighbours, paired bootstrap" in table.stdout


def test_pareto_marks_only_undominated_points():
    points = [(1.0, 0.5), (2.0, 0.5), (2.0, 0.7), (3.0, 0.6), None, (0.5, 0.1), (1.0, 0.5)]
    assert pareto(points) == [True, False, True, False, None, True, True]


def test_frontier_with_a_custom_metric_and_an_unpriced_model(tmp_path, invoke):
    config, truth = write_cells(tmp_path / "fx")
    data = json.loads(config.read_text())
    data["metrics"] = [
        "fact_coverage",
        {"name": "many", "type": "length", "unit": "words", "min": 4},
    ]
    data["matrix"] = {
        "model": ["claude-3-haiku", "no-such-model"],
        "mock_responses_path": ["m1.json", "m6.json"],
    }
    config.write_text(json.dumps(data))
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    found = json.loads(invoke("summarize", "fx", "--metric", "many", "--format", "json").stdout)
    cells = {c["cell"]: c for c in found["cells"]}
    assert found["frontier"]["metric"] == "many"
    priced = cells["model-claude-3-haiku.mock-m6"]
    words = (truth["m6"]["coverage"] * FACTS >= 4).mean()
    assert priced["quality"] == round(words, 4)
    assert cells["model-no-such-model.mock-m1"]["on_frontier"] is None
    assert cells["model-no-such-model.mock-m1"]["cost_per_sample"] is None
    bad = invoke("summarize", "fx", "--metric", "nope")
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: run 'fx.")


def test_the_experiment_page_draws_the_frontier(tmp_path, invoke):
    config, _ = write_cells(tmp_path / "fx")
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    result = invoke("report", "fx")
    assert result.exit_code == 0, result.output
    page = Path(result.stdout.strip()).read_text()
    assert 'id="frontier"' in page
    assert page.count('class="frontier-point on"') == 4
    assert page.count('class="frontier-point off"') == 2
    assert 'class="frontier-line"' in page
