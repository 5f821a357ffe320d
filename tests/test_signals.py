"""Ctrl-C and SIGTERM are honoured in every phase, within the live grace period and a
little: while a custom metric sleeps, loops or backtracks, while every live slot waits
on a slow server, and while a batch run's create call hangs. And `metric_timeout_s`
turns a metric that overruns into that sample's metric error. Real subprocesses, real
signals; each bound below is a liveness bound (a hang fails), not a speed test."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch import batch_samples, env_for
from test_batch import experiment as batch_experiment

from conftest import make_samples, write_experiment
from fake_anthropic import FakeAnthropic

HANG_BOUND_S = 40  # far past the 5 s grace, far short of the hangs provoked (120 s+)
STOPS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]

METRIC_MODULE = """
import pathlib, time
HERE = pathlib.Path(__file__).parent

def score(sample, completion, metadata):
    (HERE / "started").touch()
    mode = (HERE / "slow").read_text() if (HERE / "slow").exists() else ""
    if mode == "sleep":
        time.sleep(600)
    elif mode == "loop":
        while True:
            pass
    elif mode == "swallow":  # a metric that catches every exception, and sleeps on
        for _ in range(600):
            try:
                time.sleep(1)
            except Exception:
                pass
    return 1.0
"""
BACKTRACKS = "(a|aa)+$"  # exponential on a run of a's that does not end the text


def start(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "exprof", *args, "--quiet"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the phase"
        time.sleep(0.02)


def stopped(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=HANG_BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running {HANG_BOUND_S} s after the signal")
    return proc.returncode, err


def metric_experiment(tmp_path: Path, n: int, metric: dict, completion: str = "", **config):
    samples, mocks = make_samples(n)
    if completion:
        for entry in mocks.values():
            entry["completion"] = completion
    folder = tmp_path / "e"
    folder.mkdir(parents=True)
    (folder / "slowmetric.py").write_text(METRIC_MODULE)
    return write_experiment(folder, samples, mocks, metrics=["fact_coverage", metric], **config)


PYTHON_METRIC = {"name": "slow", "type": "python", "function": "slowmetric:score"}


@pytest.mark.parametrize("mode", ["sleep", "loop", "swallow"])
@pytest.mark.parametrize(("sig", "code"), STOPS)
def test_a_stop_ends_a_mock_run_whose_python_metric_hangs(tmp_path, mode, sig, code):
    config = metric_experiment(tmp_path, 30, PYTHON_METRIC, metric_timeout_s=3600)
    (tmp_path / "e" / "slow").write_text(mode)
    proc = start(tmp_path, "run", "--config", str(config))
    wait_for(lambda: (tmp_path / "e" / "started").exists())
    status, err = stopped(proc, sig)
    assert status == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted; continue with: exprof resume exp"
    db = tmp_path / "runs" / "exprof.db"
    with contextlib.closing(sqlite3.connect(db)) as raw:  # closed: see Store.open
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (tmp_path / "e" / "slow").unlink()  # the metric is quick again: the resume finishes
    resumed = start(tmp_path, "resume", "exp")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err


@pytest.mark.parametrize(("sig", "code"), STOPS)
def test_a_stop_ends_a_mock_run_whose_regex_metric_backtracks(tmp_path, sig, code):
    metric = {"name": "bt", "type": "regex", "pattern": BACKTRACKS}
    config = metric_experiment(tmp_path, 5, metric, "a" * 80 + "b", metric_timeout_s=3600)
    proc = start(tmp_path, "run", "--config", str(config))
    wait_for(lambda: (tmp_path / "runs" / "exprof.db").exists())
    time.sleep(1.0)  # in the match by now (it would take centuries)
    status, err = stopped(proc, sig)
    assert status == code, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("metric", "completion", "slow"),
    [
        (PYTHON_METRIC, "", "sleep"),
        (PYTHON_METRIC, "", "loop"),
        ({"name": "slow", "type": "regex", "pattern": BACKTRACKS}, "a" * 80 + "b", None),
    ],
    ids=["python-sleep", "python-loop", "regex-backtracking"],
)
def test_a_metric_over_its_time_limit_is_that_samples_metric_error(
    tmp_path, invoke, metric, completion, slow
):
    config = metric_experiment(tmp_path, 3, metric, completion, metric_timeout_s=0.2)
    if slow:
        (tmp_path / "e" / "slow").write_text(slow)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    scores = [
        json.loads(line)
        for line in (tmp_path / "runs" / "exp" / "scores.jsonl").read_text().splitlines()
    ]
    assert len(scores) == 3
    for line in scores:
        assert line["slow"] is None
        assert "metric_timeout_s (0.2 s)" in line["metric_errors"]["slow"]
        assert line["fact_coverage"] is not None  # the answer itself is recorded and scored


def test_metric_timeout_s_must_be_a_positive_number(tmp_path, invoke):
    for bad in ("soon", 0, -1, ".nan"):
        config = metric_experiment(tmp_path / str(bad), 1, PYTHON_METRIC, metric_timeout_s=bad)
        result = invoke("run", "--config", str(config))
        assert result.exit_code == 2, result.output
        assert "metric_timeout_s" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / str(bad) / "runs").exists()


@pytest.mark.parametrize(("sig", "code"), STOPS)
def test_a_stop_ends_a_live_run_while_every_slot_waits_on_a_slow_server(tmp_path, sig, code):
    with FakeAnthropic(latency=120) as server:
        samples, mocks = make_samples(20)
        config = write_experiment(tmp_path / "e", samples, mocks, concurrency=2, max_retries=0)
        env = {"PATH": "/usr/bin:/bin", **env_for(server)}
        proc = start(tmp_path, "run", "--config", str(config), "--live", env=env)
        wait_for(lambda: server.state.requests >= 2)  # both slots are waiting
        status, err = stopped(proc, sig)
        assert status == code, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == "interrupted; continue with: exprof resume exp"
        assert server.state.requests == 2  # nothing more was sent after the signal


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), STOPS)
def test_a_stop_as_a_live_run_starts_sends_nothing_more(tmp_path, sig, code):
    with FakeAnthropic(latency=0.5) as server:
        samples, mocks = make_samples(40)
        config = write_experiment(tmp_path / "e", samples, mocks, concurrency=4)
        proc = start(tmp_path, "run", "--config", str(config), "--live", env=env_for(server))
        wait_for(lambda: server.state.requests >= 1)
        status, err = stopped(proc, sig)
        assert status == code, err
        assert "Traceback" not in err
        assert server.state.requests <= 8  # those in flight, and none after the signal
        resumed = start(tmp_path, "resume", "exp", env=env_for(server))
        server.state.latency = 0.0
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), STOPS)
def test_a_stop_ends_a_batch_run_whose_create_call_hangs(tmp_path, sig, code):
    with FakeAnthropic() as server:
        server.batches.create_delay_s = 120.0  # the batch exists; the answer hangs
        config = batch_experiment(tmp_path, batch_samples(10))
        env = {**env_for(server), "EXPROF_BATCH_LIST_SETTLE_S": "0"}
        proc = start(tmp_path, "run", "--config", str(config), "--run-id", "r", env=env)
        wait_for(lambda: server.batches.created == 1)
        status, err = stopped(proc, sig)
        assert status == code, err
        assert "Traceback" not in err
        server.batches.create_delay_s = 0.0
        resumed = start(tmp_path, "resume", "r", env=env)
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        assert server.batches.created == 1  # adopted on resume, not sent again
        assert server.batches.billed == 10


def test_a_disk_that_fills_mid_run_leaves_it_recorded_and_resumable(tmp_path):
    """The store's file cannot grow past a limit (RLIMIT_FSIZE, as a full disk): the run
    began, so it is recorded: exit 1 and the way on, never exit 2 ("nothing written")."""
    import resource

    samples, mocks = make_samples(20_000)
    config = write_experiment(tmp_path / "e", samples, mocks)

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (9_000_000, 9_000_000))

    full = subprocess.run(
        [sys.executable, "-m", "exprof", "run", "--config", str(config), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
        timeout=300,
    )
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    [line] = full.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "the run is recorded" in line, line
    assert "exprof resume exp" in line
    resumed = start(tmp_path, "resume", "exp")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    lines = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text().splitlines()
    assert len(lines) == 20_000
