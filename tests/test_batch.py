"""Batch mode: the real SDK's messages.batches against the fake's batch
endpoints; crashes are real subprocesses killed with SIGKILL, SIGINT and SIGTERM."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_resume import TIMING, exprof, finish, listed_runs, peek

from conftest import KEY, write_experiment
from exprof.clients.batch import SETTLE_ENV
from exprof.pricing import estimate_cost
from exprof.store.batches import batch_state
from exprof.store.engine import Store, store_url
from exprof.store.events import BatchSubmitted
from fake_anthropic import FakeAnthropic

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@pytest.fixture(autouse=True)
def no_list_settle(monkeypatch):
    """Void an unlisted intent at once (the fake lists a batch as soon as it exists),
    but in the test of the settle wait itself."""
    monkeypatch.setenv(SETTLE_ENV, "0")


def batch_samples(n: int, prefix: str = "d") -> list[dict]:
    return [
        {
            "dialogue_id": f"{prefix}{i:05d}",
            "system": "sys",
            "user": f"question {i} fact{i}a" + (" REFUSE" if i % 7 == 3 else ""),
            "required_facts": [f"fact{i}a", f"fact{i}b"],
        }
        for i in range(n)
    ]


def user_of(i: int) -> str:
    return batch_samples(i + 1)[i]["user"]


def experiment(folder: Path, samples: list[dict], **config) -> Path:
    settings = {"batch": True, "batch_poll_s": 0.02, **config}
    return write_experiment(folder, samples, {}, **settings)


def env_for(fake: FakeAnthropic) -> dict:
    return {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url}


def exported(folder: Path) -> dict:
    """The exports whole, but summary.json without its timing fields."""
    out = {n: (folder / n).read_text() for n in ("requests.jsonl", "responses.jsonl")}
    out["scores.jsonl"] = (folder / "scores.jsonl").read_text()
    summary = json.loads((folder / "summary.json").read_text())
    out["summary.json"] = {k: v for k, v in summary.items() if k not in TIMING}
    return out


def open_store(folder: Path) -> Store:
    return Store.open(store_url(None, folder / "runs"))


def test_batch_run_records_every_answer_at_half_the_price(tmp_path, fake, invoke):
    server = fake()
    samples = batch_samples(40)
    config = experiment(tmp_path, samples)
    result = invoke("run", "--config", str(config), "--format", "json")
    assert result.exit_code == 0, result.output
    assert (server.batches.created, server.batches.billed) == (1, 40)
    assert server.state.requests == 0  # nothing went through messages.create
    lines = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text().splitlines()
    answers = [json.loads(line) for line in lines]
    assert [a["dialogue_id"] for a in answers] == [s["dialogue_id"] for s in samples]
    for answer, sample in zip(answers, samples, strict=True):
        if "REFUSE" in sample["user"]:
            assert answer["type"] == "refusal"
        else:
            assert answer["completion"] == f"Answer: {sample['user']}"
    summary = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    full = estimate_cost("claude-3-opus", summary["input_tokens"], summary["output_tokens"], {})
    assert full
    assert summary["batch"] is True
    assert summary["estimated_cost_usd"] == round(full * 0.5, 6)
    assert summary["batch_saving_usd"] == round(full - full * 0.5, 6)
    assert summary["status"] == "complete"


def test_no_batch_flag_overrides_the_config(tmp_path, fake, invoke):
    server = fake()
    config = experiment(tmp_path, batch_samples(5))
    result = invoke("run", "--config", str(config), "--no-batch", "--format", "json")
    assert result.exit_code == 0, result.output
    assert (server.batches.created, server.state.successes) == (0, 5)


def test_batch_flag_turns_it_on(tmp_path, fake, invoke):
    server = fake()
    config = experiment(tmp_path, batch_samples(5), batch=False)
    assert invoke("run", "--config", str(config), "--batch").exit_code == 0
    assert (server.batches.created, server.state.requests) == (1, 0)


def test_custom_ids_are_valid_whatever_the_dialogue_ids(tmp_path, fake, invoke):
    server = fake()
    odd = ["a b/c", "é" * 80, "x" * 300, "dup?", "🙂", "-", "\t", "id.with.dots"]
    samples = [
        {"dialogue_id": did, "system": "", "user": f"q{i} about {did}", "required_facts": []}
        for i, did in enumerate(odd)
    ]
    config = experiment(tmp_path, samples)
    assert invoke("run", "--config", str(config)).exit_code == 0
    [batch] = server.batches.batches.values()
    assert all(CUSTOM_ID.match(cid) for cid, _ in batch.requests)
    lines = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text().splitlines()
    for line, sample in zip(lines, samples, strict=True):
        answer = json.loads(line)
        assert answer["dialogue_id"] == sample["dialogue_id"]
        assert answer["completion"] == f"Answer: {sample['user']}"


def test_results_arrive_shuffled_and_join_on_custom_id(tmp_path, fake, invoke):
    server = fake()
    server.batches.processing_s = 0.0
    samples = batch_samples(60)
    config = experiment(tmp_path, samples)
    assert invoke("run", "--config", str(config)).exit_code == 0
    [batch] = server.batches.batches.values()
    url = f"{server.url}/v1/messages/batches/{batch.id}/results"
    with urllib.request.urlopen(url) as response:  # the order the client was sent
        order = [json.loads(line)["custom_id"] for line in response.read().splitlines()]
    sent = [cid for cid, _ in batch.requests]
    assert sorted(order) == sorted(sent) and order != sent
    lines = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text().splitlines()
    assert [json.loads(x)["dialogue_id"] for x in lines] == [s["dialogue_id"] for s in samples]


def test_expired_batch_is_sent_again(tmp_path, fake, invoke):
    server = fake()
    server.batches.expire_batches = 1
    config = experiment(tmp_path, batch_samples(12))
    result = invoke("run", "--config", str(config), "--format", "json")
    assert result.exit_code == 0, result.output
    assert (server.batches.created, server.batches.submitted, server.batches.billed) == (2, 24, 12)
    state = batch_state(open_store(tmp_path), "exp")
    assert [b.counts["expired"] for b in state.batches.values()] == [12, 0]


def test_errored_requests_are_sent_again_and_invalid_ones_fail(tmp_path, fake, invoke):
    server = fake()
    server.batches.script = {
        user_of(1): ["errored", "errored"],
        user_of(2): ["expired"],
        user_of(4): ["invalid"],
    }
    config = experiment(tmp_path, batch_samples(6))
    result = invoke("run", "--config", str(config), "--format", "json")
    assert result.exit_code == 1, result.output  # the invalid request failed
    assert server.batches.created == 3  # all six, then samples 1 and 2, then sample 1
    assert server.batches.submitted == 6 + 2 + 1
    summary = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    assert (summary["samples_completed"], summary["failures_by_class"]) == (
        5,
        {"invalid_request_error": 1},
    )


def test_errors_past_max_retries_are_recorded_as_failures(tmp_path, fake, invoke):
    server = fake()
    server.batches.script = {user_of(0): ["errored"] * 5}
    config = experiment(tmp_path, batch_samples(2), max_retries=1)
    assert invoke("run", "--config", str(config)).exit_code == 1
    assert server.batches.created == 2  # the first try and one retry


def test_polls_back_off_from_the_poll_interval(tmp_path, fake, invoke):
    server = fake()
    server.batches.processing_s = 1.5
    config = experiment(tmp_path, batch_samples(3), batch_poll_s=30)
    assert invoke("run", "--config", str(config), "--poll-interval", "0.02").exit_code == 0
    # Every 0.02 s would be ~75 polls; 30 s (the config, overridden) would be 2.
    assert 4 <= server.batches.polls <= 20


def test_batch_split_at_the_request_limit(tmp_path, fake, invoke, monkeypatch):
    import exprof.run.batch

    monkeypatch.setattr(exprof.run.batch, "MAX_REQUESTS", 7)
    server = fake()
    config = experiment(tmp_path, batch_samples(30))
    assert invoke("run", "--config", str(config)).exit_code == 0
    sizes = [len(b.requests) for b in server.batches.batches.values()]
    assert sizes == [7, 7, 7, 7, 2]
    assert server.batches.billed == 30


@pytest.mark.slow
def test_batch_split_at_256_mb_with_large_prompts(tmp_path, fake, invoke, monkeypatch):
    """Large synthetic prompts: 215 of 1.25 MB split into two bodies, each at most 256 MB."""
    monkeypatch.setenv("EXPROF_MAX_INPUT_BYTES", str(1 << 30))  # the dataset is ~270 MB
    server = fake()
    server.batches.processing_s = 0.0
    big = "word " * (1 << 18)  # 1.25 MB
    samples = [
        {"dialogue_id": f"b{i}", "system": "", "user": f"{i} {big}", "required_facts": []}
        for i in range(215)
    ]
    config = experiment(tmp_path, samples)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    sizes = server.batches.body_sizes
    assert len(sizes) == 2 and max(sizes) <= 256 * 1024 * 1024 < sum(sizes)
    assert server.batches.billed == 215


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_waiting_keeps_the_batch_and_resume_reattaches(tmp_path, sig, code):
    with FakeAnthropic() as server:
        server.batches.processing_s = 3.0  # still in progress when the client comes back
        config = experiment(tmp_path, batch_samples(20))
        proc = exprof(
            "run", "--config", str(config), "--run-id", "r", cwd=tmp_path, env=env_for(server)
        )
        db = tmp_path / "runs" / "exprof.db"
        wait_for(lambda: peek(db, "SELECT count(*) FROM events WHERE type = 'batch_submitted'"))
        proc.send_signal(sig)
        status, err = finish(proc)
        assert status == code, err
        assert err.strip().splitlines()[-1] == "interrupted; continue with: exprof resume r"
        [row] = listed_runs(tmp_path)
        assert row["status"] == "interrupted"  # the lease is released
        assert row["batches"].startswith("1 ")
        assert not next(iter(server.batches.batches.values())).cancelled
        status, err = finish(exprof("resume", "r", cwd=tmp_path, env=env_for(server)))
        assert status == 0, err
        assert (server.batches.created, server.batches.billed) == (1, 20)
        [row] = listed_runs(tmp_path)
        assert row["batches"] == "1 ended, succeeded 20"


def test_cancel_stops_the_batch_and_resume_sends_it_again(tmp_path, invoke):
    with FakeAnthropic() as server:
        server.batches.processing_s = 30.0
        config = experiment(tmp_path, batch_samples(10))
        proc = exprof(
            "run", "--config", str(config), "--run-id", "r", cwd=tmp_path, env=env_for(server)
        )
        db = tmp_path / "runs" / "exprof.db"
        wait_for(lambda: peek(db, "SELECT count(*) FROM events WHERE type = 'batch_submitted'"))
        cancelled = subprocess.run(
            [*exprof_cmd(), "cancel", "r"],
            cwd=tmp_path,
            env=env_for(server),
            capture_output=True,
            text=True,
        )
        assert cancelled.returncode == 0, cancelled.stderr
        status, err = finish(proc)
        assert status == 1, err  # the cancelled requests are failures, not sent again
        assert server.batches.created == 1
        summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
        assert summary["failures_by_class"] == {"batch_canceled": 10}
        server.batches.processing_s = 0.0
        status, err = finish(exprof("resume", "r", cwd=tmp_path, env=env_for(server)))
        assert status == 0, err
        assert (server.batches.created, server.batches.billed) == (2, 10)


def exprof_cmd() -> list[str]:
    return [sys.executable, "-m", "exprof"]


def test_cancel_refuses_a_run_that_is_not_a_batch_run(tmp_path, fake, invoke):
    fake()
    config = experiment(tmp_path, batch_samples(2), batch=False)
    assert invoke("run", "--config", str(config)).exit_code == 0
    result = invoke("cancel", "exp")
    assert (result.exit_code, result.stderr) == (
        2,
        "Error: run 'exp' is not a batch run: there is nothing to cancel\n",
    )


def test_kill_between_create_and_record_adopts_the_batch(tmp_path):
    """The create call has made the batch, but the answer never reached the process."""
    with FakeAnthropic() as server:
        server.batches.create_delay_s = 5.0
        server.batches.processing_s = 0.0
        config = experiment(tmp_path, batch_samples(15))
        proc = exprof(
            "run", "--config", str(config), "--run-id", "r", cwd=tmp_path, env=env_for(server)
        )
        wait_for(lambda: server.batches.created == 1)
        proc.kill()
        proc.wait()
        server.batches.create_delay_s = 0.0
        status, err = finish(exprof("resume", "r", cwd=tmp_path, env=env_for(server)))
        assert status == 0, err
        assert (server.batches.created, server.batches.billed) == (1, 15)
        submitted = [e.event for e in open_store(tmp_path).events("r", types=(BatchSubmitted,))]
        assert [(s.batch_id, s.adopted) for s in submitted if isinstance(s, BatchSubmitted)] == [
            ("msgbatch_fake_000001", True)
        ]


def test_a_batch_the_list_shows_late_is_still_adopted(tmp_path):
    """The remaining window, closed: killed after the create call made the batch, and
    resumed before the API lists it. Resume lists again until the settle time has passed
    since the intent instead of voiding it and paying for the samples twice."""
    with FakeAnthropic() as server:
        server.batches.create_delay_s = 5.0
        server.batches.processing_s = 0.0
        server.batches.list_lag_s = 1.5
        config = experiment(tmp_path, batch_samples(15))
        env = {**env_for(server), SETTLE_ENV: "20"}
        proc = exprof("run", "--config", str(config), "--run-id", "r", cwd=tmp_path, env=env)
        wait_for(lambda: server.batches.created == 1)
        proc.kill()
        proc.wait()
        server.batches.create_delay_s = 0.0
        status, err = finish(exprof("resume", "r", cwd=tmp_path, env=env))
        assert status == 0, err
        assert (server.batches.created, server.batches.billed) == (1, 15)


def test_kill_before_create_sends_the_intent_again(tmp_path):
    """An intent whose create broke before any batch existed (none in the list) is
    voided and its samples sent once, by the run itself or by a resume."""
    with FakeAnthropic() as server:
        server.batches.processing_s = 0.0
        config = experiment(tmp_path, batch_samples(15))
        server.batches.drop_creates = 1  # the model check passes; the first create breaks
        run = exprof(
            "run", "--config", str(config), "--run-id", "r", cwd=tmp_path, env=env_for(server)
        )
        status, err = finish(run)
        if status != 0:
            status, err = finish(exprof("resume", "r", cwd=tmp_path, env=env_for(server)))
        assert status == 0, err
        assert server.batches.drop_creates == 0  # the broken create did happen
        assert (server.batches.created, server.batches.billed) == (1, 15)


def kill_loop_fake() -> FakeAnthropic:
    server = FakeAnthropic().__enter__()
    server.batches.processing_s = 0.6
    server.batches.create_delay_s = 0.2  # a window between the batch existing and its record
    # Some samples come back errored a few times: a chain of batches to submit and ingest.
    server.batches.script = {user_of(i): ["errored"] * (1 + i % 5) for i in range(0, 400, 9)}
    return server


PHASES = {
    "batch_intent": "submit",
    "batch_voided": "submit",
    "batch_submitted": "poll",
    "batch_polled": "poll",
    "batch_ended": "poll",
    "run_resumed": "poll",
    "request_sent": "ingest",
    "response_received": "ingest",
    "sample_scored": "ingest",
    "sample_failed": "ingest",
    "run_finished": "export",
}


def runs_in(db: Path) -> int:
    """The store's run count; a locked store (peek's None) is asked again."""
    for _ in range(100):
        count = peek(db, "SELECT count(*) FROM runs")
        if count is not None or not db.exists():
            return int(count or 0)
        time.sleep(0.05)
    return 0


WORK = str(tuple(t for t, phase in PHASES.items() if t != "run_resumed"))


def kill_soon(proc: subprocess.Popen, db: Path, delay: float) -> str | None:
    """SIGKILL `delay` s after the process writes its first batch or answer event (so
    each life makes progress); return the phase its last event shows, or None when it
    finished first."""
    before = peek(db, "SELECT max(id) FROM events") or 0
    progress = f"SELECT count(*) FROM events WHERE id > {before} AND type IN {WORK}"
    deadline = time.monotonic() + 120
    while not peek(db, progress):
        if proc.poll() is not None:
            return None
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay)
        return None
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    last = peek(db, "SELECT type FROM events ORDER BY id DESC LIMIT 1")
    return PHASES.get(str(last), str(last))


@pytest.mark.slow
def test_kill_9_loop_never_loses_or_pays_twice(tmp_path):
    samples = batch_samples(400)
    config = experiment(tmp_path / "cfg", samples, max_retries=8)
    reference = kill_loop_fake()
    (tmp_path / "ref").mkdir()
    try:
        args = ("run", "--config", str(config), "--run-id", "r")
        status, err = finish(exprof(*args, cwd=tmp_path / "ref", env=env_for(reference)))
        assert status == 0, err
        ref_created, ref_billed = reference.batches.created, reference.batches.billed
        assert (ref_created, ref_billed) == (6, 400)
    finally:
        reference.__exit__()
    expected = exported(tmp_path / "ref" / "runs" / "r")
    rng = random.Random(13)
    phases: dict[str, int] = {}
    kills = runs_done = 0
    while kills < 22:
        work = tmp_path / f"w{runs_done}"
        work.mkdir()
        server = kill_loop_fake()
        try:
            db = work / "runs" / "exprof.db"
            started = False
            while True:
                started = started or bool(runs_in(db))  # else killed before it began
                args = (
                    ("resume", "r")
                    if started
                    else ("run", "--config", str(config), "--run-id", "r")
                )
                proc = exprof(*args, cwd=work, env=env_for(server))
                phase = kill_soon(proc, db, rng.uniform(0.0, 0.8))
                if phase is None:
                    status, err = finish(proc)
                    assert status == 0, err
                    break
                kills += 1
                phases[phase] = phases.get(phase, 0) + 1
            status, err = finish(exprof("resume", "r", cwd=work, env=env_for(server)))
            assert status == 0, err
            assert exported(work / "runs" / "r") == expected
            # Nothing paid twice: the same batches, requests and bills as the uninterrupted run.
            assert (server.batches.created, server.batches.billed) == (ref_created, ref_billed)
            assert server.batches.submitted == reference.batches.submitted
        finally:
            server.__exit__()
        runs_done += 1
    print(
        f"kill loop: {kills} kills {phases} over {runs_done} run(s); each run {ref_created} "
        f"batches created, {ref_billed} requests billed for {len(samples)} samples"
    )


def test_cancel_help_says_what_resume_does(invoke):
    """The cancelled requests are failures that `resume` sends again (as the test above
    shows): the help says so, as the README does."""
    shown = invoke("cancel", "--help").output
    assert "sends their unfinished requests again" in " ".join(shown.split())
    assert "not sent again" not in shown


SPOILS = ["cut", "404", "refused", "not-objects", "not-json", "no-content", "null-content"]
SPOILS += ["text-not-string", "usage-huge"]


@pytest.mark.parametrize("spoil", SPOILS)
def test_a_spoiled_results_stream_never_hangs_crashes_or_pays_twice(tmp_path, fake, invoke, spoil):
    """A results stream cut mid-line, lines that are not objects or
    not JSON, messages without content or with non-string text, usage beyond 64 bits, a
    results URL that answers 404 or refuses connections. Each ends the run (or that
    request) with a recorded failure or a clean answer, never a traceback or an endless
    wait; what was answered is never bought again."""
    server = fake()
    server.batches.spoil, server.batches.spoil_results = spoil, 1
    samples = batch_samples(12)
    config = experiment(tmp_path, samples)
    first = invoke("run", "--config", str(config), "--format", "json", "--quiet")
    assert "Traceback" not in first.output
    assert first.exit_code in (0, 1, 2), first.output
    if first.exit_code == 2:
        [line] = first.stderr.splitlines()
        assert line.startswith("Error: ")
    finished = first
    for _ in range(3):  # the spoiled fetch was the first only: resume finishes the run
        if json.loads(finished.stdout or "{}").get("status") == "complete":
            break
        finished = invoke("resume", "exp", "--format", "json", "--quiet")
        assert "Traceback" not in finished.output and finished.exit_code in (0, 1), finished.output
    assert json.loads(finished.stdout)["samples_completed"] == 12
    if spoil in ("cut", "404", "refused", "usage-huge"):
        # the stream (or a count) was at fault, not the answers: the same batch is read
        # again, and nothing is sent twice
        assert (server.batches.created, server.batches.billed) == (1, 12)
    else:
        # a line that is no answer leaves its request unanswered: sent again, once
        assert server.batches.billed == 24
