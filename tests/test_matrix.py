"""Matrix experiments, repeats and the statistics over them."""

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
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import KEY, make_samples, write_experiment
from exprof.config_matrix import MAX_CELLS
from exprof.stats import (
    bootstrap_means,
    cluster_mean_ci,
    holm,
    repeat_statistics,
    t_quantile_975,
)
from exprof.store.engine import SCHEMA_HEAD, Store, store_url
from exprof.store.events import (
    JudgeScored,
    RequestSent,
    ResponseReceived,
    ResponseReused,
    SampleScored,
)
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
    assert cell["estimated_cost_usd"] is None  # the mock costs nothing


def test_summarize_experiment_reads_each_cells_scores_once(tmp_path, invoke, monkeypatch):
    """With repeats, the cell's summary and its clustered intervals come from one read of
    its scores, and its custom metrics' means and intervals from one read of its events."""
    config = counting_config(tmp_path, 6, matrix={"model": ["a", "b"]}, repeats=3)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    reads: list[str] = []
    event_reads: list[str] = []
    scores, events = Store.sample_scores, Store.events

    def counted(self: Store, run_id: str) -> list:
        reads.append(run_id)
        return scores(self, run_id)

    def counted_events(self: Store, run_id: str, *args: Any, **kwargs: Any) -> Any:
        event_reads.append(run_id)
        return events(self, run_id, *args, **kwargs)

    monkeypatch.setattr(Store, "sample_scores", counted)
    monkeypatch.setattr(Store, "events", counted_events)
    found = json_out(invoke("summarize", "exp", "--format", "json"))
    assert len(found["cells"]) == 2 and all(c["repeats"] == 3 for c in found["cells"])
    assert all(c["metrics_ci95"]["nth"] is not None for c in found["cells"])
    assert sorted(reads) == sorted(c["run_id"] for c in found["cells"])
    assert sorted(event_reads) == sorted(c["run_id"] for c in found["cells"])


def test_summarize_experiment_shows_custom_metrics_with_cis_and_reused_answers(tmp_path, invoke):
    n = 6
    config = counting_config(tmp_path / "c", n, matrix={"model": ["a", "b"]}, cache=True)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    again = invoke("run", "--config", str(config), "--quiet")  # exp-2: all from the store
    assert again.exit_code == 0, again.output
    found = json_out(invoke("summarize", "exp-2", "--format", "json"))
    for i, cell in enumerate(found["cells"]):
        assert cell["responses_reused"] == n
        assert cell["cost_avoided_usd"] is None  # the mock's models have no price
        # nth counts calls over both experiments: cell i of exp-2 scored calls
        # (2 + i) * n .. (3 + i) * n - 1.
        values = np.arange((2 + i) * n, (3 + i) * n, dtype=float)
        centre, lo, hi = cluster_mean_ci(values)
        assert cell["metrics"]["nth"] == round(centre, 4)
        assert cell["metrics_ci95"]["nth"] == [round(lo, 4), round(hi, 4)]
    first = json_out(invoke("summarize", "exp", "--format", "json"))["cells"][0]
    assert "responses_reused" not in first and "metrics_ci95" in first
    header = invoke("summarize", "exp-2").stdout.splitlines()[0].split()
    assert header[header.index("geometric_mean") + 1 :][:4] == [
        "metrics.second",
        "metrics.second_ci95",
        "metrics.nth",
        "metrics.nth_ci95",
    ]
    assert "responses_reused" in header and "cost_avoided_usd" in header


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
    assert f"more than {MAX_CELLS} cells" in invoke("run", "--help").stdout  # documented


def test_config_without_matrix_records_the_same_config_as_before(tmp_path, invoke):
    config = write_experiment(tmp_path, *make_samples(3))
    invoke("run", "--config", str(config), "--quiet")
    started = open_store(tmp_path).run_started("exp")
    assert started is not None
    assert "cell" not in started.to_payload()
    assert not {"matrix", "repeats", "cache", "budget_usd", "system"} & set(started.config)
    store = open_store(tmp_path)
    for ev in store.events("exp", (RequestSent, ResponseReceived, SampleScored)):
        assert "repeat" not in ev.payload  # no repeats: the events record what they did


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


def test_ci_gate_on_every_cell_against_the_baseline(tmp_path, invoke, fake):
    fake(latency=0.0)
    # The fake echoes the user text (which holds the facts: "cannot comply" in it reads as
    # a refusal), but answers "Score: N" to a system prompt starting "You grade": that
    # cell covers nothing and refuses nothing.
    samples = [
        {
            "dialogue_id": f"d{i}",
            "system": "",
            "user": f"Tell me about alpha{i} and beta{i}{' or cannot comply' * (i % 3 == 0)}",
            "required_facts": [f"alpha{i}", f"beta{i}"],
        }
        for i in range(12)
    ]
    matrix = {"system": {"plain": "Be brief.", "grader": "You grade answers."}}
    config = write_experiment(tmp_path, samples, {}, matrix=matrix)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    gate = ("compare", "exp", "--baseline")
    worse = invoke(*gate, "sys-plain", "--fail-on-regression")
    assert worse.exit_code == 1, worse.output
    assert "regression: sys-grader: fact_coverage regressed against sys-plain" in worse.stderr
    assert invoke(*gate, "sys-plain").exit_code == 0  # no flag, no gate
    better = invoke(*gate, "sys-grader", "--fail-on-regression")
    assert better.exit_code == 0, better.output  # coverage improved
    refusals = invoke(*gate, "sys-grader", "--max-refusal-increase", "0.1")
    assert refusals.exit_code == 1
    assert "sys-plain: refusal_rate rose by 0.3333 against sys-grader" in refusals.stderr
    assert invoke(*gate, "sys-grader", "--max-refusal-increase", "0.5").exit_code == 0
    # Two cells compare like two runs: the same gate on the pair.
    pair = invoke("compare", "exp.sys-plain", "exp.sys-grader", "--fail-on-regression")
    assert pair.exit_code == 1 and "fact_coverage regressed" in pair.stderr


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


def test_live_matrix_with_repeats_killed_then_resumed_finishes_every_cell(tmp_path):
    n, cells, k, flight = 8, 6, 5, 4
    config = matrix_config(tmp_path, n=n, concurrency=flight, repeats=k)
    db = tmp_path / "runs" / "exprof.db"
    with FakeAnthropic(latency=0.02) as server:
        env = live_env(server)
        proc = exprof_proc("run", "--config", str(config), cwd=tmp_path, env=env)
        deadline = time.monotonic() + 120
        while ok_rows(db) < 2 * n * k and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # into the third cell
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < ok_rows(db) < cells * n * k
        resumed = exprof_proc("resume", "exp", cwd=tmp_path, env=env)
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert "experiment exp complete: 6 cells" in err
        # Every (cell, sample, repeat) answered once, bar those in flight at the kill.
        assert cells * n * k <= server.state.requests <= cells * n * k + flight
        bodies = [
            (s["body"]["model"], s["body"]["messages"][0]["content"]) for s in server.state.seen
        ]
    store = open_store(tmp_path)
    summary = store_summary(store)
    assert [c["status"] for c in summary["cells"]] == ["complete"] * cells
    for cell in summary["cells"]:
        assert store.sample_status_counts(cell["run_id"]) == {"ok": n * k}
        assert cell["repeats"] == k
    # Each model saw each prompt k times per temperature: 3 temperatures x 5 repeats.
    assert {bodies.count(b) for b in set(bodies)} <= {3 * k, 3 * k + 1}


def test_export_killed_before_its_marker_is_finished_by_resume(tmp_path, invoke):
    """kill -9 mid-export can leave a run's folder holding only the marker's temporary
    file: resume must finish the export, not refuse the folder as another program's."""
    config = write_experiment(tmp_path, *make_samples(3))
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    out = tmp_path / "runs" / "exp"
    before = (out / "scores.jsonl").read_bytes()
    for child in out.iterdir():
        child.unlink()
    dead = 2**22 + 12345  # above pid_max's default: no such process
    (out / f"..exprof-export.json.exprof-{dead}-abcd1234.tmp").write_text("{")
    result = invoke("resume", "exp", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "scores.jsonl").read_bytes() == before
    assert not list(out.glob("*.tmp"))
    (out / f".notes.txt.exprof-{dead}-abcd1234.tmp").write_text("x")  # not an export file
    for name in ("scores.jsonl", ".exprof-export.json", "summary.json"):
        (out / name).unlink()
    refused = invoke("resume", "exp", "--quiet")
    assert refused.exit_code == 2 and "not empty and not an export" in refused.stderr


def test_live_matrix_request_count_is_exact_without_a_kill(tmp_path, invoke, fake):
    server = fake(latency=0.0)
    config = matrix_config(tmp_path, n=4, repeats=5)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert server.state.requests == 6 * 4 * 5
    cells = json_out(result)["cells"]
    assert all(c["estimated_cost_usd"] > 0 for c in cells)


def store_summary(store: Store) -> dict:
    from exprof.experiment import experiment_summary

    return experiment_summary(store, "exp")


# -- repeats ------------------------------------------------------------------------


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_repeats_send_each_sample_k_times_with_a_repeat_field(tmp_path, invoke):
    config = write_experiment(tmp_path, *make_samples(4, refuse_every=3), repeats=3)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json_out(result)
    assert summary["repeats"] == 3 and summary["samples_total"] == 12
    assert summary["samples_completed"] == 12 and summary["status"] == "complete"
    out = tmp_path / "runs" / "exp"
    for name in ("requests.jsonl", "responses.jsonl", "scores.jsonl"):
        lines = read_lines(out / name)
        assert [(r["dialogue_id"], r["repeat"]) for r in lines] == [
            (f"d{i:05d}", r) for i in range(4) for r in range(3)
        ]
        assert list(lines[0])[:2] == ["dialogue_id", "repeat"]
    store = open_store(tmp_path)
    sent = [
        (e.payload["dialogue_id"], e.payload.get("repeat", 0))
        for e in store.events("exp", (RequestSent,))
    ]
    assert len(sent) == len(set(sent)) == 12
    # make_samples: coverage 0, 1/2, 1, 0 and d00000, d00003 refused, every repeat alike.
    assert summary["fact_coverage"] == 0.375 and summary["refusal_rate"] == 0.5
    assert summary["pass_at_k"] == 0.25 and summary["pass_hat_k"] == 0.25
    assert summary["refusal_flips"] == 0
    lo, hi = summary["fact_coverage_ci95"]
    assert lo < 0.375 < hi


def test_repeats_flag_overrides_the_config_and_is_checked(tmp_path, invoke):
    config = write_experiment(tmp_path, *make_samples(2))
    result = invoke("run", "--config", str(config), "--quiet", "--repeats", "2", "--format", "json")
    assert json_out(result)["samples_completed"] == 4
    bad = CliResult(invoke("run", "--config", str(config), "--quiet", "--repeats", "0"))
    assert bad.code == 2 and "--repeats: must be an integer in [1, 1000], got 0" in bad.stderr


def test_repeats_in_the_config_are_checked(tmp_path, invoke):
    config = write_experiment(tmp_path, *make_samples(2), repeats=1.5)
    bad = CliResult(invoke("run", "--config", str(config), "--quiet"))
    assert bad.code == 2 and "repeats: must be an integer, got 1.5" in bad.stderr
    assert not (tmp_path / "runs").exists()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from([0.0, 1 / 3, 2 / 3, 1.0]), st.floats(0, 1), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_repeat_means_are_numpys_bit_for_bit(values):
    """The per-sample mean over repeats skips np.mean's overhead but not its result."""
    from exprof.stats import _mean

    assert _mean(values) == float(np.mean(values))


def test_repeat_statistics_by_hand():
    rows = [
        ("a", 1.0, False),
        ("a", 1.0, False),
        ("a", 0.5, False),  # passes 2 of 3
        ("b", 1.0, True),
        ("b", 0.0, False),
        ("b", 1.0, False),  # refused once: a flip
        ("c", 0.0, True),
        ("c", 0.0, True),
        ("c", 0.0, True),  # never passes
        ("d", 1.0, False),
        ("d", 1.0, False),
        ("d", 1.0, False),  # always passes
    ]
    found = repeat_statistics(rows)
    assert found["samples"] == 4
    # sample means: a 5/6, b 2/3, c 0, d 1 -> 2.5 / 4
    assert found["fact_coverage"] == pytest.approx(0.625)
    assert found["refusal_rate"] == pytest.approx(round((1 / 3 + 1) / 4, 4))
    assert found["pass_at_k"] == 0.75  # a, b, d pass at least once
    assert found["pass_hat_k"] == 0.25  # only d passes every time
    assert found["refusal_flips"] == 1  # b


def test_resume_with_repeats_sends_only_the_missing_pairs(tmp_path, invoke):
    samples, mocks = make_samples(5)
    del mocks["d00002"]  # fails in every repeat
    config = write_experiment(tmp_path, samples, mocks, repeats=2)
    first = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert first.exit_code == 1 and json_out(first)["samples_failed"] == 2
    store = open_store(tmp_path)
    assert store.pending_positions("exp", True) == {4, 5}  # slots of d00002's repeats
    # Give the mock its answer back through a fresh run's record: resume reads the
    # recorded mocks, so instead check what resume would send.
    from exprof.dataset import pending_pairs
    from exprof.store.record import load_run

    owed = store.pending_positions("exp", True)
    record = load_run(store, "exp", {slot // 2 for slot in owed})
    pairs = pending_pairs(record.samples, owed, 2)
    assert [(s.dialogue_id, s.repeat) for s in pairs] == [("d00002", 0), ("d00002", 1)]
    again = invoke("resume", "exp", "--quiet")
    assert again.exit_code == 1
    sent = [e.payload for e in store.events("exp", (RequestSent,))]
    assert len(sent) == 12  # 10 at first, then the two owed pairs again
    assert [(p["dialogue_id"], p.get("repeat", 0)) for p in sent[-2:]] == [
        ("d00002", 0),
        ("d00002", 1),
    ]


def test_compare_of_cells_with_repeats_averages_them(tmp_path, invoke):
    config = matrix_config(tmp_path, n=12, matrix={"model": ["a", "b"]}, repeats=3)
    invoke("run", "--config", str(config), "--quiet")
    result = invoke("compare", "exp.model-a", "exp.model-b", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json_out(result)
    assert found["samples"]["common"] == 12  # samples, not 36 (sample, repeat) pairs
    assert found["metrics"]["fact_coverage"]["delta"] == 0.0
    assert found["metrics"]["refusal_rate"]["a"] == pytest.approx(0.25)  # d0, d5, d10


# -- custom metrics with repeats: one value per (sample, repeat) -----------------------

# A stateful metric, so that the repeats of one sample score differently on the mock
# (whose answers are the same in every repeat): `second` is True on every second call
# (repeat 1 of each sample, the mock scoring in order), `nth` counts the calls.
COUNTING_METRICS = """
import itertools

_second = itertools.count()
_nth = itertools.count()


def second(sample, completion, metadata):
    return next(_second) % 2 == 1


def nth(sample, completion, metadata):
    return next(_nth)
"""


def counting_config(folder: Path, n: int = 12, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    module = f"counting_{folder.name}".replace("-", "_")
    (folder / f"{module}.py").write_text(COUNTING_METRICS, encoding="utf-8")
    metrics = [
        "fact_coverage",
        "refusal_rate",
        "geometric_mean",
        {"name": "second", "type": "python", "function": f"{module}:second"},
        {"name": "nth", "type": "python", "function": f"{module}:nth"},
    ]
    return write_experiment(folder, *make_samples(n), metrics=metrics, **config)


def test_custom_metrics_with_repeats_keep_every_repeats_value(tmp_path, invoke):
    n = 12
    config = counting_config(tmp_path / "c", n, repeats=2)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    scores = read_lines(tmp_path / "runs" / "exp" / "scores.jsonl")
    assert [(s["dialogue_id"], s["repeat"], s["second"], s["nth"]) for s in scores] == [
        (f"d{i:05d}", r, r == 1, 2 * i + r) for i in range(n) for r in range(2)
    ]
    summary = json_out(result)
    # Means over samples, each the mean of its repeats: nth's are 2i + 0.5.
    clusters = np.arange(n) * 2 + 0.5
    centre, lo, hi = cluster_mean_ci(clusters)
    assert summary["metrics"] == {"second": 0.5, "nth": round(centre, 4)}
    assert summary["metrics_ci95"] == {
        "second": [0.5, 0.5],
        "nth": [round(lo, 4), round(hi, 4)],
    }


def test_custom_metric_intervals_stay_in_the_unit_range_for_rates():
    from exprof.scoring.recorded import _cis

    rate = [{"ok": True}] * 11 + [{"ok": False}]
    centre, lo, hi = cluster_mean_ci(np.array([1.0] * 11 + [0.0]))
    assert hi > 1.0  # the t interval runs past what a rate can be
    assert _cis(rate, ["ok"]) == {"ok": [round(lo, 4), 1.0]}
    counts = [{"n": 1}] * 11 + [{"n": 0}]  # 0/1 counts read as a rate too
    assert _cis(counts, ["n"]) == {"n": [round(lo, 4), 1.0]}
    wide = [{"n": 2.0}] * 11 + [{"n": 0.0}]  # not in [0, 1]: never clipped
    _, lo2, hi2 = cluster_mean_ci(np.array([2.0] * 11 + [0.0]))
    assert _cis(wide, ["n"]) == {"n": [round(lo2, 4), round(hi2, 4)]}


def test_compare_pairs_custom_metrics_by_sample_averaging_repeats(tmp_path, invoke):
    config = counting_config(tmp_path / "c", 12, repeats=2)
    for run_id in ("a", "b"):
        done = invoke("run", "--config", str(config), "--quiet", "--run-id", run_id)
        assert done.exit_code == 0, done.output
    from_store = json_out(invoke("compare", "a", "b", "--format", "json"))
    runs = tmp_path / "runs"
    from_files = json_out(invoke("compare", str(runs / "a"), str(runs / "b"), "--format", "json"))
    for found in (from_store, from_files):
        assert found["samples"]["common"] == 12  # samples, not 24 (sample, repeat) pairs
        second = found["metrics"]["metrics.second"]
        assert (second["a"], second["b"], second["samples"]) == (0.5, 0.5, 12)
        assert found["metrics"]["metrics.nth"]["delta"] == 24.0  # b's calls follow a's
    labels = ("a", "b")
    assert {k: v for k, v in from_files.items() if k not in labels} == {
        k: v for k, v in from_store.items() if k not in labels
    }


def test_rescore_of_a_run_with_repeats_rescores_every_repeat(tmp_path, invoke):
    config = write_experiment(tmp_path / "c", *make_samples(4), repeats=3)
    assert invoke("run", "--config", str(config), "--quiet", "--run-id", "src").exit_code == 0
    other = counting_config(tmp_path / "r", 4, repeats=3)
    result = invoke("rescore", "src", "--config", str(other), "--quiet", "--run-id", "re")
    assert result.exit_code == 0, result.output
    runs = tmp_path / "runs"

    def answers(run_id: str) -> list[tuple]:
        lines = read_lines(runs / run_id / "responses.jsonl")
        return [(r["dialogue_id"], r["repeat"], r["completion"]) for r in lines]

    assert answers("re") == answers("src") and len(answers("src")) == 12
    scores = read_lines(runs / "re" / "scores.jsonl")
    assert [(s["dialogue_id"], s["repeat"], s["nth"]) for s in scores] == [
        (f"d{i:05d}", r, 3 * i + r) for i in range(4) for r in range(3)
    ]


def test_rescore_of_a_cached_run_rescores_its_reused_answers(tmp_path, invoke):
    config = write_experiment(tmp_path / "c", *make_samples(4), repeats=2)
    assert invoke("run", "--config", str(config), "--quiet", "--run-id", "a").exit_code == 0
    cached = invoke("run", "--config", str(config), "--quiet", "--run-id", "b", "--cache")
    assert cached.exit_code == 0, cached.output
    other = counting_config(tmp_path / "r", 4, repeats=2)
    result = invoke("rescore", "b", "--config", str(other), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output  # every answer b holds is a reused one
    assert json_out(result)["samples_completed"] == 8


def test_judge_grades_each_repeat(tmp_path, invoke):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "grades.json").write_text(json.dumps({"d00000": "Score: 5", "d00001": "2"}))
    judge = {
        "name": "helpful",
        "type": "judge",
        "rubric": "Rate 1-5 how helpful the answer is.",
        "judge_model": "claude-haiku-4-5",
        "judge_responses": "grades.json",
    }
    config = write_experiment(folder, *make_samples(2), metrics=[judge], repeats=2)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("judge metrics: 4 grader request(s)")
    store = open_store(tmp_path)
    graded = [
        (e.payload["dialogue_id"], e.payload.get("repeat", 0))
        for e in store.events("exp", types=(JudgeScored,))
    ]
    assert graded == [("d00000", 0), ("d00000", 1), ("d00001", 0), ("d00001", 1)]
    scores = read_lines(tmp_path / "runs" / "exp" / "scores.jsonl")
    assert [s["helpful"] for s in scores] == [5.0, 5.0, 2.0, 2.0]
    assert json_out(result)["metrics"] == {"helpful": 3.5}
    again = invoke("resume", "exp", "--quiet")  # every repeat graded: nothing owed
    assert again.exit_code == 0 and "already complete" in again.stderr


# -- cache: reuse of recorded answers ------------------------------------------------


def cached_run(invoke, config: Path, run_id: str):
    args = ("--cache", "--repeats", "3", "--run-id", run_id, "--format", "json")
    return invoke("run", "--config", str(config), "--quiet", *args)


def test_cached_rerun_sends_nothing_and_repeat_i_reuses_only_repeat_i(tmp_path, invoke, fake):
    server = fake(latency=0.0)
    config = write_experiment(tmp_path, *make_samples(6), repeats=2)
    first = invoke("run", "--config", str(config), "--quiet", "--run-id", "a", "--format", "json")
    assert first.exit_code == 0, first.output
    assert server.state.requests == 12
    # Three repeats with the cache: repeats 0 and 1 are reused, repeat 2 is new.
    more = cached_run(invoke, config, "b")
    assert more.exit_code == 0, more.output
    assert server.state.requests == 12 + 6
    assert json_out(more)["responses_reused"] == 12
    # Again: every answer is in the store now, so nothing is sent at all.
    again = cached_run(invoke, config, "c")
    summary = json_out(again)
    assert server.state.requests == 18
    assert summary["responses_reused"] == 18 and summary["samples_completed"] == 18
    assert summary["cost_avoided_usd"] > 0
    assert summary["input_tokens"] == summary["output_tokens"] == 0  # nothing paid for
    assert "estimated_cost_usd" in summary and summary["estimated_cost_usd"] == 0
    store = open_store(tmp_path)
    originals = {
        e.id: (e.run_id, e.payload["dialogue_id"], e.payload.get("repeat", 0))
        for e in store.events(types=(ResponseReceived,))
    }
    reused = list(store.events("c", (ResponseReused,)))
    assert len(reused) == 18
    for ev in reused:  # each points at the first record of the same (sample, repeat)
        run, dialogue, repeat = originals[ev.payload["source_event_id"]]
        assert (dialogue, repeat) == (ev.payload["dialogue_id"], ev.payload.get("repeat", 0))
        assert run == ("a" if repeat < 2 else "b")
    assert not list(store.events("c", (RequestSent,)))
    lines_a = read_lines(tmp_path / "runs" / "a" / "responses.jsonl")
    lines_c = read_lines(tmp_path / "runs" / "c" / "responses.jsonl")
    assert [r for r in lines_c if r["repeat"] < 2] == lines_a  # the same answers, scored alike
    assert len(read_lines(tmp_path / "runs" / "c" / "requests.jsonl")) == 18


def test_cache_never_reuses_a_different_request(tmp_path, invoke, fake):
    server = fake(latency=0.0)
    config = write_experiment(tmp_path, *make_samples(4))
    invoke("run", "--config", str(config), "--quiet", "--run-id", "a")
    other = write_experiment(tmp_path / "o", *make_samples(4), max_tokens=99, cache=True)
    result = invoke("run", "--config", str(other), "--quiet", "--run-id", "b", "--format", "json")
    assert result.exit_code == 0 and "responses_reused" not in json_out(result)
    assert server.state.requests == 8
    off = invoke("run", "--config", str(config), "--quiet", "--run-id", "c")
    assert off.exit_code == 0 and server.state.requests == 12  # off by default


# -- dry run ---------------------------------------------------------------------


def test_dry_run_counts_requests_and_cost_and_writes_nothing(tmp_path, invoke):
    config = matrix_config(tmp_path, n=7, repeats=5)
    result = invoke("run", "--config", str(config), "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json_out(result)
    assert found["requests"] == 6 * 7 * 5 and len(found["cells"]) == 6
    assert found["token_count"] == "heuristic"
    # make_samples: system "sys", user "question i": ceil(len / 4) + 8 per request.
    per_cell = sum(math.ceil((3 + len(f"question {i}")) / 4) + 8 for i in range(7)) * 5
    assert [c["input_tokens"] for c in found["cells"]] == [per_cell] * 6
    opus = found["cells"][0]
    assert opus["input_cost_usd"] == pytest.approx(per_cell * 15 / 1e6, abs=1e-6)
    assert opus["max_cost_usd"] == pytest.approx(opus["input_cost_usd"] + 35 * 100 * 75 / 1e6)
    assert not (tmp_path / "runs").exists()


def heuristic(i: int) -> int:
    """make_samples' prompt i by estimate.py's offline heuristic."""
    return math.ceil((3 + len(f"question {i}")) / 4) + 8


def test_dry_run_with_the_cache_prices_only_what_the_store_cannot_answer(tmp_path, invoke):
    n = 6
    config = write_experiment(tmp_path, *make_samples(n), repeats=2)
    assert invoke("run", "--config", str(config), "--quiet", "--run-id", "a").exit_code == 0
    db = tmp_path / "runs" / "exprof.db"
    before = db.read_bytes()
    args = ("run", "--config", str(config), "--cache", "--repeats", "3")
    result = invoke(*args, "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json_out(result)
    # Repeats 0 and 1 are in the store: only repeat 2 is sent and priced.
    assert (found["reused"], found["requests"]) == (2 * n, n)
    assert found["input_tokens"] == sum(heuristic(i) for i in range(n))
    assert found["input_cost_usd"] == pytest.approx(found["input_tokens"] * 15 / 1e6, abs=1e-6)
    assert found["max_cost_usd"] == pytest.approx(found["input_cost_usd"] + n * 100 * 75 / 1e6)
    assert db.read_bytes() == before and not (tmp_path / "runs" / "exp").exists()
    table = invoke(*args, "--dry-run")
    assert "reused" in table.stdout.splitlines()[0]
    assert f"{2 * n} request(s) the store already answered are reused" in table.stderr
    # The prediction holds: the run reuses exactly what the dry run said.
    done = invoke(*args, "--quiet", "--run-id", "b", "--format", "json")
    assert json_out(done)["responses_reused"] == found["reused"]
    off = json_out(invoke("run", "--config", str(config), "--dry-run", "--format", "json"))
    assert off["requests"] == 2 * n and "reused" not in off  # off by default


def test_dry_run_with_the_cache_counts_what_earlier_cells_will_answer(tmp_path, invoke):
    # The mock sends no temperature: the second cell's requests are the first's.
    n = 4
    matrix = {"model": ["claude-3-opus"], "temperature": [0.0, 0.5]}
    config = matrix_config(tmp_path, n=n, matrix=matrix, repeats=2, cache=True)
    found = json_out(invoke("run", "--config", str(config), "--dry-run", "--format", "json"))
    assert [(c["requests"], c["reused"]) for c in found["cells"]] == [(2 * n, 0), (0, 2 * n)]
    assert not (tmp_path / "runs").exists()
    run = json_out(invoke("run", "--config", str(config), "--quiet", "--format", "json"))
    second = run["cells"][1]["run_id"]
    summary = json_out(invoke("summarize", second, "--format", "json"))
    assert summary["responses_reused"] == 2 * n


def test_live_dry_run_counts_tokens_with_the_api_and_sends_no_message(tmp_path, invoke, fake):
    server = fake()
    config = matrix_config(tmp_path, n=5)
    result = invoke("run", "--config", str(config), "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    found = json_out(result)
    assert found["token_count"] == "messages.count_tokens"
    assert found["cells"][0]["input_tokens"] == 5 * (1 + 2 + 3)  # "sys", "question i", +3
    assert server.state.requests == 0
    assert server.state.token_counts == 2 * 5  # per model, per distinct prompt
    assert not (tmp_path / "runs").exists()


def test_live_dry_run_counts_each_distinct_body_once_within_its_bound(
    tmp_path, invoke, fake, monkeypatch
):
    """One count per distinct request body (12 samples, 3 bodies), and no more
    than EXPROF_MAX_TOKEN_COUNTS of them; the rest are estimated, and the output says
    how each input was counted."""
    server = fake()
    samples, mocks = make_samples(12)
    for i, sample in enumerate(samples):
        sample["user"] = f"question {i % 3}"
    config = write_experiment(tmp_path / "e", samples, mocks)
    found = json_out(invoke("run", "--config", str(config), "--dry-run", "--format", "json"))
    assert server.state.token_counts == 3
    assert found["token_counts"] == {"calls": 3, "from_store": 0, "estimated": 0}
    assert found["input_tokens"] == 12 * (1 + 2 + 3)
    monkeypatch.setenv("EXPROF_MAX_TOKEN_COUNTS", "2")
    bounded = json_out(invoke("run", "--config", str(config), "--dry-run", "--format", "json"))
    assert server.state.token_counts == 3 + 2
    assert bounded["token_counts"] == {"calls": 2, "from_store": 0, "estimated": 1}


def test_live_dry_run_reuses_the_counts_the_store_recorded(tmp_path, invoke, fake):
    """A dry run after a live run of the same inputs asks count_tokens nothing: each
    input's count is what the API reported for it then."""
    server = fake()
    config = write_experiment(tmp_path / "e", *make_samples(5))
    ran = json_out(invoke("run", "--config", str(config), "--quiet", "--format", "json"))
    counts_before = server.state.token_counts
    found = json_out(invoke("run", "--config", str(config), "--dry-run", "--format", "json"))
    assert server.state.token_counts == counts_before
    assert found["token_counts"] == {"calls": 0, "from_store": 5, "estimated": 0}
    assert found["input_tokens"] == ran["input_tokens"]


# -- budget ----------------------------------------------------------------------


def test_budget_stops_then_resume_with_a_larger_one_finishes(tmp_path, invoke, fake):
    server = fake(latency=0.0)
    n = 30
    config = write_experiment(tmp_path, *make_samples(n), concurrency=1, budget_usd=0.003)
    first = invoke("run", "--config", str(config), "--yes", "--quiet", "--format", "json")
    assert first.exit_code == 1
    assert "budget reached" in first.stderr and "exprof resume exp --budget-usd" in first.stderr
    summary = json_out(first)
    assert 0 < summary["samples_completed"] < n
    assert summary["estimated_cost_usd"] >= 0.003
    sent = server.state.requests
    listing = json.loads(invoke("runs", "--format", "json").stdout)
    assert listing[0]["status"] == "interrupted"
    same = invoke("resume", "exp", "--quiet")  # the recorded budget: still reached
    assert same.exit_code == 1 and server.state.requests == sent
    more = invoke("resume", "exp", "--quiet", "--budget-usd", "10", "--format", "json")
    assert more.exit_code == 0, more.output
    assert json_out(more)["samples_completed"] == n
    assert server.state.requests == n  # nothing sent twice


def test_budget_spans_the_cells_of_an_experiment(tmp_path, invoke, fake):
    fake(latency=0.0)
    # Ten claude-3-opus answers from the fake cost $0.003: the budget ends in cell 2.
    config = matrix_config(tmp_path, n=10, concurrency=1, budget_usd=0.0045)
    first = invoke("run", "--config", str(config), "--yes", "--quiet", "--format", "json")
    assert first.exit_code == 1 and "exprof resume exp --budget-usd" in first.stderr
    statuses = [c["status"] for c in json_out(first)["cells"]]
    assert statuses == ["complete", "incomplete"] + ["not started"] * 4
    done = invoke("resume", "exp", "--quiet", "--budget-usd", "100", "--format", "json")
    assert done.exit_code == 0, done.output
    assert {c["status"] for c in json_out(done)["cells"]} == {"complete"}


def mock_costs(n: int) -> list[float]:
    """make_samples' mock answers priced as claude-3-opus output ($75 per million)."""
    return [(10 + i % 7) * 75 / 1e6 for i in range(n)]


def answered_before_limit(costs: list[float], limit: float) -> int:
    """Answers dispatched while the spending so far is under the limit."""
    spent, count = 0.0, 0
    for cost in costs:
        if spent >= limit:
            break
        spent, count = spent + cost, count + 1
    return count


def test_budget_holds_a_mock_run_then_resume_finishes_it(tmp_path, invoke):
    n, limit = 30, 0.01
    config = write_experiment(tmp_path, *make_samples(n), budget_usd=limit)
    first = invoke("run", "--config", str(config), "--yes", "--quiet", "--format", "json")
    assert first.exit_code == 1, first.output
    assert "budget reached: $0.01" in first.stderr
    assert "exprof resume exp --budget-usd" in first.stderr
    expected = answered_before_limit(mock_costs(n), limit)
    assert 0 < expected < n
    assert json_out(first)["samples_completed"] == expected
    listing = json.loads(invoke("runs", "--format", "json").stdout)
    assert listing[0]["status"] == "interrupted"
    store = open_store(tmp_path)
    assert len(list(store.events("exp", (RequestSent,)))) == expected
    same = invoke("resume", "exp", "--quiet")  # the recorded budget: still reached
    assert same.exit_code == 1 and "budget reached" in same.stderr
    assert len(list(store.events("exp", (RequestSent,)))) == expected
    more = invoke("resume", "exp", "--quiet", "--budget-usd", "10", "--format", "json")
    assert more.exit_code == 0, more.output
    assert json_out(more)["samples_completed"] == n
    sent = [e.payload["dialogue_id"] for e in store.events("exp", (RequestSent,))]
    assert sent == [f"d{i:05d}" for i in range(n)]  # nothing twice, nothing skipped


def test_budget_spans_the_cells_of_a_mock_experiment(tmp_path, invoke):
    n, limit = 10, 0.012
    config = matrix_config(tmp_path, n=n, budget_usd=limit)
    first = invoke("run", "--config", str(config), "--yes", "--quiet", "--format", "json")
    assert first.exit_code == 1 and "exprof resume exp --budget-usd" in first.stderr
    cells = json_out(first)["cells"]
    assert [c["status"] for c in cells] == ["complete", "incomplete"] + ["not started"] * 4
    spent_in_first = sum(mock_costs(n))
    second = answered_before_limit(mock_costs(n), limit - spent_in_first)
    assert cells[1]["samples"] == f"{second}/{n}"
    done = invoke("resume", "exp", "--quiet", "--budget-usd", "100", "--format", "json")
    assert done.exit_code == 0, done.output
    assert {c["status"] for c in json_out(done)["cells"]} == {"complete"}


def test_upgrade_from_0003_rebuilds_samples_per_repeat(tmp_path, invoke):
    """A 0003 store's samples have no repeat column: 0004 rebuilds them from the events,
    and the exports of a run made before are unchanged."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from exprof.store.engine import migrations_dir

    config = write_experiment(tmp_path, *make_samples(5, missing_every=4))
    invoke("run", "--config", str(config), "--quiet")
    before = (tmp_path / "runs" / "exp" / "scores.jsonl").read_bytes()
    store = open_store(tmp_path)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    db = tmp_path / "runs" / "exprof.db"
    raw = sqlite3.connect(db)
    assert "repeat" not in [r[1] for r in raw.execute("PRAGMA table_info(samples)")]
    raw.close()
    assert invoke("db", "upgrade").exit_code == 0  # to head, the projections caught up
    reopened = open_store(tmp_path)
    assert reopened.revision() == SCHEMA_HEAD
    assert reopened.sample_status_counts("exp") == {"ok": 3, "failed": 2}
    assert invoke("export", "exp").exit_code == 0
    assert (tmp_path / "runs" / "exp" / "scores.jsonl").read_bytes() == before
    assert invoke("doctor").exit_code == 0


@pytest.mark.parametrize(
    "n, expected",
    [(3, "not meaningful: 3 common samples (< 10)"), (5, None), (12, "no significant change")],
)
def test_baseline_compare_and_a_pair_compare_give_one_verdict(tmp_path, invoke, n, expected):
    """One rule: `compare EXP --baseline CELL` says what `compare A B` says of the same
    two cells; from a handful of samples, no p-value and "not meaningful"."""
    config = matrix_config(tmp_path, n=n, matrix={"model": ["a", "b"]})
    invoke("run", "--config", str(config), "--quiet")
    found = json_out(invoke("compare", "exp", "--baseline", "model-a", "--format", "json"))
    [cell] = found["cells"]
    pair = json_out(invoke("compare", "exp.model-a", "exp.model-b", "--format", "json"))
    expected = expected or f"not meaningful: {n} common samples (< 10)"
    assert cell["verdict"] == pair["metrics"]["fact_coverage"]["verdict"] == expected
    assert (cell["fact_coverage_p"] is None) == (n < 10)
    table = invoke("compare", "exp", "--baseline", "model-a").stdout
    assert table.splitlines()[-1].endswith(expected)


def test_batch_mode_with_repeats_is_refused_before_anything_is_written(tmp_path, invoke, fake):
    fake()
    config = write_experiment(tmp_path, *make_samples(3), batch=True, repeats=2)
    refused = CliResult(invoke("run", "--config", str(config), "--quiet"))
    assert refused.code == 2
    assert "batch: cannot be combined with repeats, cache or budget_usd" in refused.stderr
    assert not (tmp_path / "runs").exists()
