"""Matrix experiments, repeats and the statistics over them (issue 12)."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import KEY, make_samples, write_experiment
from exprof.config import MAX_CELLS
from exprof.stats import bootstrap_means, cluster_mean_ci, holm, t_quantile_975
from exprof.store.engine import Store, store_url
from fake_anthropic import FakeAnthropic

MATRIX = {"model": ["claude-3-opus", "claude-3-haiku"], "temperature": [0.0, 0.5, 1.0]}


def matrix_config(folder: Path, n: int = 12, **config) -> Path:
    samples, mocks = make_samples(n, refuse_every=5)
    return write_experiment(folder, samples, mocks, **{"matrix": MATRIX, **config})


def json_out(result) -> dict:
    return json.loads(result.stdout)


def open_store(tmp_path: Path) -> Store:
    return Store.open(store_url(None, tmp_path / "runs"))


# -- the matrix in mock mode ---------------------------------------------------------


def test_matrix_runs_every_cell_as_its_own_run(tmp_path, invoke):
    config = matrix_config(tmp_path)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json_out(result)
    assert found["experiment_id"] == "exp"
    cells = found["cells"]
    assert len(cells) == 6
    assert cells[0]["params"] == {"model": "claude-3-opus", "temperature": 0.0}
    assert cells[0]["run_id"] == "exp.model-claude-3-opus.t-0.0"
    assert {c["status"] for c in cells} == {"complete"}
    store = open_store(tmp_path)
    for cell in cells:
        started = store.run_started(cell["run_id"])
        assert started is not None and started.cell is not None
        assert started.config["model"] == cell["params"]["model"]
        assert started.config["temperature"] == cell["params"]["temperature"]
        assert "matrix" not in started.config  # the cell's own config: no matrix
        assert (tmp_path / "runs" / cell["run_id"] / "responses.jsonl").exists()
    listing = json.loads(invoke("runs", "--format", "json").stdout)
    assert len(listing) == 6
    assert {r["cell"] for r in listing} == {
        f"model={m}, temperature={t}" for m in MATRIX["model"] for t in MATRIX["temperature"]
    }


def test_summarize_experiment_gives_one_row_per_cell_with_cis(tmp_path, invoke):
    invoke("run", "--config", str(matrix_config(tmp_path, n=30)), "--quiet")
    table = invoke("summarize", "exp")
    assert table.exit_code == 0
    assert table.stdout.count("model=claude-3-haiku") == 3
    found = json_out(invoke("summarize", "exp", "--format", "json"))
    cell = found["cells"][0]
    lo, hi = cell["fact_coverage_ci95"]
    assert lo < cell["fact_coverage"] < hi
    assert 0 <= cell["refusal_rate_ci95"][0] <= cell["refusal_rate"] == pytest.approx(0.2)
    assert cell["estimated_cost_usd"] > 0


def test_second_experiment_takes_the_next_id(tmp_path, invoke):
    config = matrix_config(tmp_path)
    invoke("run", "--config", str(config), "--quiet")
    again = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert json_out(again)["experiment_id"] == "exp-2"
    plain = write_experiment(tmp_path / "plain", *make_samples(3))
    solo = invoke("run", "--config", str(plain), "--quiet", "--format", "json")
    assert json_out(solo)["run_id"] == "exp-3"  # neither experiment's id


def test_system_matrix_replaces_each_samples_system_prompt(tmp_path, invoke):
    config = matrix_config(tmp_path, matrix={"system": {"terse": "Be terse.", "kind": "Be kind."}})
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert [c["cell"] for c in json_out(result)["cells"]] == ["sys-terse", "sys-kind"]
    lines = (tmp_path / "runs" / "exp.sys-kind" / "requests.jsonl").read_text().splitlines()
    assert {json.loads(line)["prompt"]["system"] for line in lines} == {"Be kind."}


def test_matrix_key_missing_at_top_level_is_taken_from_the_matrix(tmp_path, invoke):
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path, samples, mocks, matrix={"model": ["a", "b"]})
    raw = yaml.safe_load(config.read_text())
    del raw["model"]
    config.write_text(json.dumps(raw))
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [c["params"]["model"] for c in json_out(result)["cells"]] == ["a", "b"]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({"temprature": [0.1]}, "matrix.temprature: 'temprature' cannot vary"),
        ({"temperature": [0.1, 3]}, "matrix.temperature[1]: must be a number in [0, 1], got 3"),
        ({"model": ["a", ""]}, "matrix.model[1]: must be a non-empty string"),
        ({"max_tokens": [0]}, "matrix.max_tokens[0]: must be an integer >= 1, got 0"),
        ({"model": ["a", "a"]}, "matrix.model[1]: 'a' is listed twice"),
        ({"model": []}, "matrix.model: must be a non-empty list"),
        ({"system": {"bad name": "x"}}, "matrix.system: name 'bad name'"),
        ([1, 2], "matrix: must be a mapping"),
    ],
)
def test_bad_matrix_names_key_and_value_and_writes_nothing(tmp_path, invoke, matrix, message):
    config = matrix_config(tmp_path, matrix=matrix)
    result = CliResult(invoke("run", "--config", str(config), "--quiet"))
    assert result.code == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_too_many_cells_need_yes(tmp_path, invoke):
    models = [f"m{i}" for i in range(MAX_CELLS + 1)]
    config = matrix_config(tmp_path, n=2, matrix={"model": models})
    refused = CliResult(invoke("run", "--config", str(config), "--quiet"))
    assert refused.code == 2 and f"{MAX_CELLS + 1} cells" in refused.stderr
    assert "--yes" in refused.stderr and not (tmp_path / "runs").exists()
    allowed = invoke("run", "--config", str(config), "--quiet", "--yes", "--format", "json")
    assert allowed.exit_code == 0 and len(json_out(allowed)["cells"]) == MAX_CELLS + 1


def test_config_without_matrix_records_the_same_config_as_before(tmp_path, invoke):
    config = write_experiment(tmp_path, *make_samples(3))
    invoke("run", "--config", str(config), "--quiet")
    started = open_store(tmp_path).run_started("exp")
    assert started is not None
    assert "cell" not in started.to_payload()
    assert not {"matrix", "repeats", "cache", "budget_usd", "system"} & set(started.config)


class CliResult:
    """A click result with its exit code and stderr under short names."""

    def __init__(self, result) -> None:
        self.code = result.exit_code
        self.stderr = result.stderr


# -- comparing cells ------------------------------------------------------------------


def test_holm_matches_a_hand_computation():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.4, 0.5]) == pytest.approx([0.8, 0.8])  # 2*0.4, max(0.8, 0.5)
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_compare_experiment_against_a_baseline_is_holm_corrected(tmp_path, invoke):
    samples, mocks = make_samples(40, refuse_every=5)
    folder = tmp_path / "e"
    config = write_experiment(folder, samples, mocks, matrix={"model": ["a", "b", "c"]})
    invoke("run", "--config", str(config), "--quiet")
    result = invoke("compare", "exp", "--baseline", "model-a", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json_out(result)
    assert found["baseline"] == "model-a"
    assert [c["cell"] for c in found["cells"]] == ["model-b", "model-c"]
    ps = [c["fact_coverage_p"] for c in found["cells"]]
    assert [c["fact_coverage_p_holm"] for c in found["cells"]] == pytest.approx(holm(ps))
    by_run_id = invoke("compare", "exp", "--baseline", "exp.model-a", "--format", "json")
    assert json_out(by_run_id)["cells"] == found["cells"]
    bad = CliResult(invoke("compare", "exp", "--baseline", "model-z"))
    assert bad.code == 2 and "no cell 'model-z'" in bad.stderr and "model-a" in bad.stderr
    # Two cells compare like two runs: the CI gate works on any pair.
    pair = invoke("compare", "exp.model-a", "exp.model-b", "--fail-on-regression")
    assert pair.exit_code == 0


# -- statistics ---------------------------------------------------------------------


def test_t_quantile_is_close_to_the_exact_table():
    exact = {3: 3.182446, 5: 2.570582, 9: 2.262157, 29: 2.045230, 199: 1.971957}
    for df, value in exact.items():
        assert t_quantile_975(df) == pytest.approx(value, abs=2e-3)


def simulate(n: int, k: int, trials: int, seed: int) -> tuple[float, float]:
    """Coverage of the true mean difference by (clustered t, percentile bootstrap) over
    `trials` simulated paired experiments: n prompts, k repeats each, a prompt effect
    shared by its repeats (so repeats are correlated) and a known true delta of 0.1."""
    rng = np.random.default_rng(seed)
    truth = 0.1
    hits_t = hits_boot = 0
    for trial in range(trials):
        prompt = rng.normal(0, 1, size=(n, 1))  # shared by every repeat of the prompt
        noise = rng.normal(0, 0.5, size=(n, k))
        skew = rng.exponential(1.0, size=(n, 1)) - 1.0  # a skewed prompt effect too
        delta = truth + prompt + skew + noise
        _, lo, hi = cluster_mean_ci(delta)
        hits_t += lo <= truth <= hi
        means = bootstrap_means(delta.mean(axis=1, keepdims=True), 2000, seed + trial)[:, 0]
        blo, bhi = np.percentile(means, [2.5, 97.5])
        hits_boot += blo <= truth <= bhi
    return hits_t / trials, hits_boot / trials


def test_clustered_ci_covers_the_known_truth_at_small_n():
    t_cover, boot_cover = simulate(n=15, k=5, trials=600, seed=7)
    # The percentile bootstrap is too narrow at n = 15; the t interval holds ~95%.
    assert boot_cover < 0.93
    assert 0.93 <= t_cover <= 0.97


def test_treating_repeats_as_independent_would_undercover():
    rng = np.random.default_rng(11)
    hits_clustered = hits_naive = 0
    for _ in range(400):
        delta = 0.1 + rng.normal(0, 1, size=(30, 1)) + rng.normal(0, 0.3, size=(30, 5))
        _, lo, hi = cluster_mean_ci(delta)
        hits_clustered += lo <= 0.1 <= hi
        _, nlo, nhi = cluster_mean_ci(delta.reshape(-1, 1))  # 150 "independent" rows
        hits_naive += nlo <= 0.1 <= nhi
    assert hits_clustered / 400 >= 0.93
    assert hits_naive / 400 < 0.85


def test_cluster_ci_degenerate_inputs():
    mean, lo, hi = cluster_mean_ci(np.array([[0.5, 0.7]]))
    assert mean == pytest.approx(0.6) and lo is None and hi is None
    assert math.isnan(cluster_mean_ci(np.empty((0, 3)))[0])


# -- against the fake Messages API ------------------------------------------------------


def exprof_proc(*args: str, cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "exprof", *args, "--quiet"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ok_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM samples WHERE status = 'ok'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def live_env(server: FakeAnthropic) -> dict:
    repo = str(Path(__file__).resolve().parent.parent)
    return {
        **os.environ,
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_BASE_URL": server.url,
        "PYTHONPATH": repo,
    }


def test_live_matrix_killed_then_resumed_finishes_every_cell(tmp_path):
    n, cells = 10, 6
    config = matrix_config(tmp_path, n=n, concurrency=2)
    db = tmp_path / "runs" / "exprof.db"
    with FakeAnthropic(latency=0.02) as server:
        env = live_env(server)
        proc = exprof_proc("run", "--config", str(config), cwd=tmp_path, env=env)
        deadline = time.monotonic() + 60
        while ok_rows(db) < 2 * n and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # into the third cell
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = ok_rows(db)
        assert 0 < done_before < cells * n
        resumed = exprof_proc("resume", "exp", cwd=tmp_path, env=env)
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        assert "experiment exp complete: 6 cells" in err
        # Every request answered once, bar at most the two in flight at the kill.
        assert cells * n <= server.state.requests <= cells * n + 2
    store = open_store(tmp_path)
    summary = store_summary(store)
    assert [c["status"] for c in summary["cells"]] == ["complete"] * cells
    for cell in summary["cells"]:
        assert store.sample_status_counts(cell["run_id"]) == {"ok": n}


def store_summary(store: Store) -> dict:
    from exprof.experiment import experiment_summary

    return experiment_summary(store, "exp")
