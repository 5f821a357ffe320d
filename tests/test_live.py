"""Live runs: the real anthropic SDK against the fake Messages API on 127.0.0.1."""

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

from conftest import make_samples, write_experiment
from exprof.clients.credentials import redact
from exprof.clients.limits import AdaptiveLimit
from exprof.store import projections
from exprof.store.engine import Store, store_url
from exprof.store.events import ResponseReceived, RunInterrupted, SampleFailed
from fake_anthropic import FakeAnthropic


def experiment(tmp_path: Path, n: int, **config) -> Path:
    samples, mocks = make_samples(n)
    for s in samples:  # the fake echoes the prompt, so put the facts in it
        s["user"] = f"{s['user']} about {' '.join(s['required_facts'])}"
    return write_experiment(tmp_path / "e", samples, mocks, **config)


def run_json(invoke, config: Path, *extra: str):
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json", *extra)
    return result, json.loads(result.stdout) if result.stdout.strip() else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def response_counts(run_id: str = "exp") -> dict[str, int]:
    store = Store.open(store_url(None, "runs"))
    counts: dict[str, int] = {}
    for ev in store.events(run_id, types=(ResponseReceived,)):
        counts[ev.payload["dialogue_id"]] = counts.get(ev.payload["dialogue_id"], 0) + 1
    return counts


def test_happy_path_exports_mock_shape_plus_live_fields(tmp_path, invoke, fake):
    server = fake()
    config = experiment(tmp_path, 12)
    result, summary = run_json(invoke, config)
    assert result.exit_code == 0, result.output
    assert summary["mode"] == "live" and summary["fact_coverage"] == 1.0
    assert summary["estimated_cost_usd"] > 0 and summary["retries"] == 0
    live = tmp_path / "runs" / "exp"
    mock_result = invoke("run", "--config", str(config), "--mock", "--run-id", "m", "--quiet")
    assert mock_result.exit_code == 0
    mock = tmp_path / "runs" / "m"
    assert (live / "requests.jsonl").read_bytes() == (mock / "requests.jsonl").read_bytes()
    live_rows, mock_rows = (
        read_jsonl(live / "responses.jsonl"),
        read_jsonl(mock / "responses.jsonl"),
    )
    assert [r["dialogue_id"] for r in live_rows] == [r["dialogue_id"] for r in mock_rows]
    first = live_rows[0]
    assert set(first) == {
        "dialogue_id",
        "completion",
        "model",
        "token_count",
        "input_tokens",
        "output_tokens",
        "stop_reason",
        "latency_ms",
        "attempts",
        "request_id",
    }
    assert first["model"] == "claude-3-opus-fake"  # as returned, not as asked
    assert first["completion"].startswith("Answer: question 0")  # text blocks joined
    assert first["token_count"] == first["output_tokens"]
    assert first["request_id"].startswith("req_fake_")
    assert server.state.requests == 12


def test_concurrency_reaches_and_never_exceeds_the_limit(tmp_path, invoke, fake):
    server = fake(latency=0.05)
    result, _ = run_json(invoke, experiment(tmp_path, 48), "--concurrency", "8")
    assert result.exit_code == 0
    assert server.state.peak_in_flight == 8


def test_retries_every_fault_kind_until_all_complete(tmp_path, invoke, fake):
    server = fake(latency=0.005, fault_rate=0.2, seed=3, retry_after=0.01, hang_s=1.0)
    config = experiment(tmp_path, 80, timeout_s=0.4, max_retries=12, concurrency=16)
    result, summary = run_json(invoke, config)
    assert result.exit_code == 0, result.output
    assert summary["samples_completed"] == 80 and summary["retries"] > 0
    assert set(response_counts().values()) == {1}
    assert server.state.requests == 80 + summary["retries"]
    faults = {
        server.state.fault_for(s["body"]["messages"][0]["content"], 1) for s in server.state.seen
    }
    assert {"429", "529", "500", "drop", "hang"} <= faults  # every kind was exercised


def test_persistent_500_is_a_recorded_failure_and_exit_1(tmp_path, invoke, fake):
    config = experiment(tmp_path, 5, max_retries=2)
    doomed = json.loads((tmp_path / "e" / "dialogues.json").read_text())[2]["user"]
    fake(always_fail={doomed}, retry_after=0.01)
    result, summary = run_json(invoke, config)
    assert result.exit_code == 1
    assert "1 sample(s) failed; retry them with: exprof resume exp" in result.stderr
    assert summary["samples_completed"] == 4
    assert summary["failures_by_class"] == {"InternalServerError": 1}
    store = Store.open(store_url(None, "runs"))
    [failure] = [e.payload for e in store.events("exp", types=(SampleFailed,))]
    assert failure == {
        "dialogue_id": "d00002",
        "error_class": "InternalServerError",
        "message": "Internal server error",
        "status": 500,
        "attempts": 3,
    }


def test_retry_after_is_honoured(tmp_path, invoke, fake):
    config = experiment(tmp_path, 1)
    user = json.loads((tmp_path / "e" / "dialogues.json").read_text())[0]["user"]
    server = fake(script={user: ["429"]}, retry_after=0.6)
    result, summary = run_json(invoke, config)
    assert result.exit_code == 0 and summary["retries"] == 1
    first, second = server.state.seen
    assert second["t"] - first["t"] >= 0.6  # a lower bound: a busy machine only waits longer


def test_aimd_halves_on_429_and_grows_back():
    limit = AdaptiveLimit(16)
    limit.on_rate_limited()
    assert limit.limit == 8
    limit.on_rate_limited()  # within the same window: no second cut
    assert limit.limit == 8
    limit.last_cut = 0.0
    limit.on_rate_limited()
    assert limit.limit == 4
    for _ in range(4):
        limit.on_success()
    assert limit.limit == 5
    for _ in range(1000):
        limit.on_success()
    assert limit.limit == 16


def test_sustained_429s_lower_the_in_flight_limit(tmp_path, invoke, fake):
    config = experiment(tmp_path, 64, max_retries=20)
    users = [s["user"] for s in json.loads((tmp_path / "e" / "dialogues.json").read_text())]
    calm = fake(latency=0.05)
    assert run_json(invoke, config, "--concurrency", "16", "--run-id", "calm")[0].exit_code == 0
    assert calm.state.peak_in_flight == 16
    # 200 ms per answer leaves the first 16 requests ample time to be in flight together.
    storm = {u: ["429", "429", "429"] for u in users[:16]}  # the first wave only
    stormy = fake(latency=0.2, script=storm, retry_after=0.3)
    result, _ = run_json(invoke, config, "--concurrency", "16", "--run-id", "storm")
    assert result.exit_code == 0
    first = [s["in_flight"] for s in stormy.state.seen if s["attempt"] == 1]
    # The first wave's retries all come before any success (which needs a 4th attempt).
    retries = [s["in_flight"] for s in stormy.state.seen if s["attempt"] == 2][:16]
    assert max(first) == 16  # the first wave, before any 429, used the full limit
    assert len(retries) == 16 and max(retries) <= 8  # halved by the 429s


def test_refusal_stop_reason_marks_the_response(tmp_path, invoke, fake):
    fake()
    config = experiment(tmp_path, 4)
    data = json.loads((tmp_path / "e" / "dialogues.json").read_text())
    data[1]["user"] += " REFUSE"
    (tmp_path / "e" / "dialogues.json").write_text(json.dumps(data))
    _, summary = run_json(invoke, config)
    rows = read_jsonl(tmp_path / "runs" / "exp" / "responses.jsonl")
    assert [r.get("type") for r in rows] == [None, "refusal", None, None]
    assert rows[1]["stop_reason"] == "refusal"
    assert summary["refusal_rate"] == 0.25


def test_temperature_is_never_sent_under_2026_10_21(tmp_path, invoke, fake):
    server = fake()
    result, summary = run_json(invoke, experiment(tmp_path, 4))
    assert result.exit_code == 0  # the fake answers 400 to any sampling parameter here
    assert "temperature 0.5 is recorded but not sent" in result.stderr
    assert result.stderr.count("warning:") == 1
    assert all("temperature" not in s["body"] for s in server.state.seen)
    assert {s["headers"]["anthropic-version"] for s in server.state.seen} == {"2026-10-21"}
    assert summary["sent_params"] == {}
    requests = read_jsonl(tmp_path / "runs" / "exp" / "requests.jsonl")
    assert {r["temperature"] for r in requests} == {0.5}  # recorded as configured


def test_temperature_is_sent_under_2023_06_01(tmp_path, invoke, fake):
    server = fake()
    result, summary = run_json(invoke, experiment(tmp_path, 4, api_version="2023-06-01"))
    assert result.exit_code == 0
    assert "warning" not in result.stderr
    assert [s["body"]["temperature"] for s in server.state.seen] == [0.5] * 4
    assert {s["headers"]["anthropic-version"] for s in server.state.seen} == {"2023-06-01"}
    assert summary["sent_params"] == {"temperature": 0.5}
    assert read_jsonl(tmp_path / "runs" / "exp" / "responses.jsonl")[0]["temperature"] == 0.5


def test_unknown_model_cost_is_unknown(tmp_path, invoke, fake):
    fake()
    _, summary = run_json(invoke, experiment(tmp_path, 2, model="claude-next-preview"))
    assert summary["estimated_cost_usd"] == "cost unknown"


def test_pricing_block_overrides_the_table(tmp_path, invoke, fake):
    fake()
    config = experiment(tmp_path, 2, model="mine", pricing={"mine": {"input": 1e6, "output": 0}})
    _, summary = run_json(invoke, config)
    assert summary["estimated_cost_usd"] == summary["input_tokens"]


def test_redact_masks_any_anthropic_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "plainsecret")
    assert redact("a plainsecret and sk-ant-xyz_1-2 b") == "a [redacted] and sk-ant-[redacted] b"


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "exprof", *args, "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_after(server: FakeAnthropic, successes: int, proc: subprocess.Popen, sig: int) -> str:
    """Send `sig` once the server has answered `successes` requests; return stderr."""
    deadline = time.monotonic() + 30
    while server.state.successes < successes and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    return stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "what"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "interrupted")],
)
def test_ctrl_c_or_sigterm_records_what_arrived_and_resumes(tmp_path, fake, sig, code, what):
    server = fake(latency=0.2)
    config = experiment(tmp_path, 200, concurrency=4)
    proc = start(tmp_path, "run", "--config", str(config))
    stderr = stop_after(server, 12, proc, sig)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"{what}; continue with: exprof resume exp"
    db = tmp_path / "runs" / "exprof.db"
    with contextlib.closing(sqlite3.connect(db)) as raw:  # closed: see Store.open
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = Store.open(store_url(None, "runs"))
    assert store.lease("exp") is None  # released
    done = sum(response_counts().values())
    assert 12 <= done < 200
    with store.write() as conn:
        before = conn.exec_driver_sql("SELECT * FROM samples ORDER BY idx").all()
        projections.rebuild(conn)
        assert conn.exec_driver_sql("SELECT * FROM samples ORDER BY idx").all() == before
    # A resume is stopped the same way.
    resuming = start(tmp_path, "resume", "exp")
    stderr = stop_after(server, server.state.successes + 8, resuming, sig)
    assert resuming.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"{what}; continue with: exprof resume exp"
    assert store.lease("exp") is None
    done = sum(response_counts().values())
    reasons = [e.payload["reason"] for e in store.events("exp", types=(RunInterrupted,))]
    assert reasons == [f"interrupted by {'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'}"] * 2
    sent_before = server.state.requests
    resumed = start(tmp_path, "resume", "exp", "--concurrency", "32")
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr
    assert set(response_counts().values()) == {1} and len(response_counts()) == 200
    assert server.state.requests - sent_before == 200 - done


def test_live_without_a_key_is_a_clean_error(tmp_path, invoke, monkeypatch):
    config = experiment(tmp_path, 2)
    result = invoke("run", "--config", str(config), "--live")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --live: live mode needs ANTHROPIC_API_KEY set in the environment\n"
    )
    assert not (tmp_path / "runs" / "exprof.db").exists()


def test_resuming_a_live_run_without_a_key_is_a_clean_error(tmp_path, invoke, fake, monkeypatch):
    fake(always_fail={"nothing"})
    config = experiment(tmp_path, 2)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (tmp_path / "runs" / "exp" / "summary.json").unlink()
    result = invoke("resume", "exp")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: resume exp: live mode needs ANTHROPIC_API_KEY set in the environment\n"
    )
    assert not (tmp_path / "runs" / "exp" / "summary.json").exists()  # nothing was done
