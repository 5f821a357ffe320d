"""Several workers on one live run (`resume --join`): real subprocesses against the fake
API server, some SIGKILLed, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_resume import assert_consistent, done_count, exports, exprof, finish, peek, the_store

from conftest import make_samples, write_experiment
from exprof.dataset import Sample
from exprof.errors import EXIT_TERMINATED, ConcurrencyError
from exprof.store.engine import Store
from exprof.store.events import RunInterrupted, RunStarted
from exprof.store.leases import Lease
from exprof.store.record import snapshot
from fake_anthropic import FakeAnthropic

KEY = "sk-ant-workers-test"


def start_reference(tmp_path: Path, config: Path, env: dict) -> None:
    ref = exprof(
        "run",
        "--config",
        str(config),
        "--run-id",
        "w",
        "--output-dir",
        "ref",
        cwd=tmp_path,
        env=env,
    )
    code, err = finish(ref)
    assert code == 0, err


def wait_for_progress(db: Path | str, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while done_count(db) < at_least and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def duplicates(server: FakeAnthropic, repeats: int) -> int:
    """Requests beyond the first for any (dialogue, repeat) pair (the fake answers every
    one it gets), and those cut off mid-body by a SIGKILL (no user text arrived: counted
    under ""). A pair's repeats are identical requests, which the fake counts under the
    dialogue's text: once every pair is answered (checked first), the duplicates of a
    dialogue's pairs are its requests beyond `repeats`."""
    attempts = server.state.attempts
    extra = sum(count - repeats for user, count in attempts.items() if user)
    return extra + attempts.get("", 0)


def live_run(store: Store, n: int, repeats: int) -> Lease:
    """Run "r", a live run of n samples, started and held by this process."""
    samples = [Sample(f"d{i}", "sys", f"question {i}") for i in range(n)]
    config = {"model": "claude-3-opus", "metrics": [], "repeats": repeats}
    lease = store.acquire_new_run("exp", "r")
    started = RunStarted("r", "exp", "live", config, "sha", n, {}, "test")
    store.append("r", [started, *snapshot(samples, None)], after_seq=0)
    return lease


@pytest.mark.slow
@pytest.mark.parametrize("n, repeats", [(1500, 1), (600, 2)], ids=["repeats-1", "repeats-2"])
def test_four_workers_two_killed_answer_each_sample_once(tmp_path, db_url, n, repeats):
    concurrency = 4
    samples, mocks = make_samples(n)
    config = write_experiment(
        tmp_path / "e", samples, mocks, concurrency=concurrency, repeats=repeats
    )
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    with FakeAnthropic(latency=0.02, jitter=0.005) as ref_server:
        start_reference(tmp_path, config, {**env, "ANTHROPIC_BASE_URL": ref_server.url})
    db, flags = the_store(tmp_path, db_url)
    rng = random.Random(7)
    with FakeAnthropic(latency=0.02, jitter=0.005) as server:
        env["ANTHROPIC_BASE_URL"] = server.url
        first = exprof(
            "run", "--config", str(config), "--run-id", "w", *flags, cwd=tmp_path, env=env
        )
        wait_for_progress(db, first, 1)
        joined = [exprof("resume", "w", "--join", *flags, cwd=tmp_path, env=env) for _ in range(3)]
        workers = [first, *joined]
        # A plain resume while they work is refused, naming a holder.
        code, err = finish(exprof("resume", "w", *flags, cwd=tmp_path, env=env))
        assert code == 2, err
        assert "is being worked on by pid " in err and "--join" in err
        for victim in rng.sample(workers, 2):
            wait_for_progress(db, victim, done_count(db) + rng.randint(1, 150))
            time.sleep(rng.uniform(0, 0.05))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        for proc in workers:
            code, err = finish(proc)
            assert code in (0, -signal.SIGKILL), err
        code, err = finish(exprof("resume", "w", *flags, cwd=tmp_path, env=env))
        assert code == 0, err
        assert set(server.state.attempts) - {""} == {s["user"] for s in samples}
        assert_consistent(db, "w", n * repeats)  # every pair answered exactly once
        dups = duplicates(server, repeats)
        print(f"multi-worker duplicates ({db_url.split(':')[0]}, repeats {repeats}): {dups}")
        assert dups <= 2 * concurrency  # the two killed workers' requests in flight at most
        assert server.state.peak_in_flight > concurrency  # the workers really ran side by side
    assert exports(tmp_path / "runs" / "w", strip=True) == exports(
        tmp_path / "ref" / "w", strip=True
    )


@pytest.mark.slow
def test_worker_leaves_when_only_a_live_remote_workers_claims_are_left(tmp_path, fake):
    """A worker on another host holds claims (fresh heartbeat): a joined worker answers
    the rest and exits by itself; a plain resume is refused naming that worker until its
    heartbeat goes stale, then takes its claims over."""
    n = 40
    samples, mocks = make_samples(n)
    config = write_experiment(tmp_path / "e", samples, mocks, concurrency=2)
    with FakeAnthropic() as ref_server:
        start_reference(
            tmp_path,
            config,
            {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": ref_server.url},
        )
    server = fake(latency=0.005)
    proc = exprof("run", "--config", str(config), "--run-id", "w", cwd=tmp_path)
    db = tmp_path / "runs" / "exprof.db"
    wait_for_progress(db, proc, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store.open(f"sqlite:///{db}")
    pending = sorted(store.pending_positions("w", retry_failed=True))
    assert len(pending) > 5
    held = pending[-5:]  # a remote worker's, so no pid check can tell it is gone
    now = time.time()
    with store.write() as conn:
        conn.exec_driver_sql(
            "INSERT INTO workers (run_id, token, pid, host, acquired_at, heartbeat_at, started) "
            "VALUES ('w', 'remote', 1, 'elsewhere.example', ?, ?, NULL)",
            (now, now),
        )
        for idx in held:
            conn.exec_driver_sql(
                "INSERT INTO claims (run_id, position, repeat, token, claimed_at) "
                "VALUES ('w', ?, 0, 'remote', ?)",
                (idx, now),
            )
    code, err = finish(exprof("resume", "w", "--join", cwd=tmp_path))
    assert code == 0, err
    assert "5 sample(s) of run w are still with other workers" in err
    users = {i: s["user"] for i, s in enumerate(samples)}
    assert not any(users[i] in server.state.attempts for i in held)
    code, err = finish(exprof("resume", "w", cwd=tmp_path))
    assert code == 2
    assert "being worked on by pid 1 on elsewhere.example" in err
    with store.write() as conn:  # the remote worker stopped beating long ago
        conn.exec_driver_sql("UPDATE workers SET heartbeat_at = 0 WHERE token = 'remote'")
    code, err = finish(exprof("resume", "w", cwd=tmp_path))
    assert code == 0, err
    assert all(server.state.attempts[users[i]] == 1 for i in held)
    assert exports(tmp_path / "runs" / "w", strip=True) == exports(
        tmp_path / "ref" / "w", strip=True
    )


def test_join_is_refused_for_a_mock_run(tmp_path):
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert finish(exprof("run", "--config", str(config), "--run-id", "m", cwd=tmp_path))[0] == 0
    code, err = finish(exprof("resume", "m", "--join", cwd=tmp_path))
    assert code == 2
    assert err.strip() == "Error: run m is a mock run: --join adds workers to live runs"


def test_join_is_refused_for_an_experiment_id(tmp_path):
    samples, mocks = make_samples(3)
    matrix = {"temperature": [0.0, 1.0]}
    config = write_experiment(tmp_path / "e", samples, mocks, matrix=matrix)
    assert finish(exprof("run", "--config", str(config), cwd=tmp_path))[0] == 0
    code, err = finish(exprof("resume", "exp", "--join", cwd=tmp_path))
    assert code == 2
    assert err.strip() == (
        "Error: exp is an experiment: --join adds a worker to one run; "
        "join a cell's run by its run id"
    )


def test_join_is_refused_for_a_batch_run(tmp_path, fake):
    server = fake()
    samples, _ = make_samples(3)
    config = write_experiment(tmp_path / "e", samples, {}, batch=True, batch_poll_s=0.02)
    code, err = finish(exprof("run", "--config", str(config), "--run-id", "b", cwd=tmp_path))
    assert code == 0, err
    assert server.batches.created == 1
    code, err = finish(exprof("resume", "b", "--join", cwd=tmp_path))
    assert code == 2
    assert err.strip() == "Error: run b is a batch run: --join adds workers to live runs"
    assert server.state.requests == 0 and server.batches.created == 1


def test_claims_are_keyed_by_position_and_repeat(db_url):
    """With `repeats: 2` each (sample, repeat) pair is claimed on its own, once; a dead
    worker's claims (stale heartbeat) go back to the pool, and the live ones stay."""
    store = Store.open(db_url, create=True)
    first = live_run(store, 3, repeats=2)
    second = store.join_run("r")
    owed = ("pending",)
    assert store.claim(first, owed, 3) == [(0, "d0", 0), (1, "d0", 1), (2, "d1", 0)]
    assert store.claim(second, owed, 10) == [(3, "d1", 1), (4, "d2", 0), (5, "d2", 1)]
    assert store.claim(first, owed, 10) == []
    with store.write() as conn:  # the second worker stopped beating long ago
        conn.exec_driver_sql(f"UPDATE workers SET heartbeat_at = 0 WHERE token = '{second.token}'")
    assert store.claim(first, owed, 10) == [(3, "d1", 1), (4, "d2", 0), (5, "d2", 1)]
    store.release_lease(second)
    store.release_lease(first)


def test_join_is_refused_for_a_run_that_reuses_answers(tmp_path, fake):
    """cache: true reuses answers before claiming: a joiner could send one of them."""
    server = fake()
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path / "e", samples, mocks, cache=True)
    code, err = finish(exprof("run", "--config", str(config), "--run-id", "c", cwd=tmp_path))
    assert code == 0, err
    sent = server.state.requests
    code, err = finish(exprof("resume", "c", "--join", cwd=tmp_path))
    assert code == 2
    assert err.strip() == "Error: run c reuses answers (cache): --join is for runs without it"
    assert server.state.requests == sent


def test_a_taken_over_worker_can_neither_append_nor_claim(db_url):
    """Holder A's heartbeat goes stale and B takes the run over with a plain resume:
    A's late answer is refused (not recorded beside B's), and A's next claim is refused
    instead of re-creating its worker row and taking every pending pair."""
    store = Store.open(db_url, create=True)
    a = live_run(store, 4, repeats=1)
    owed = ("pending",)
    assert store.claim(a, owed, 2) == [(0, "d0", 0), (1, "d1", 0)]
    with store.write() as conn:  # A stopped beating long ago
        for table in ("leases", "workers"):
            conn.exec_driver_sql(f"UPDATE {table} SET heartbeat_at = 0 WHERE token = '{a.token}'")
    b = store.acquire_lease("r")
    before = store.last_seq("r")
    with pytest.raises(ConcurrencyError, match="lost its place in the run"):
        store.append("r", [RunInterrupted("late")], after_seq=None, fenced=a)
    assert store.last_seq("r") == before
    with pytest.raises(ConcurrencyError):
        store.claim(a, owed, 10)
    with pytest.raises(ConcurrencyError):
        store.heartbeat(a)
    assert store.claim(b, owed, 10) == [(0, "d0", 0), (1, "d1", 0), (2, "d2", 0), (3, "d3", 0)]
    store.append("r", [RunInterrupted("b's")], after_seq=None, fenced=b)
    store.release_lease(b)


def test_a_joined_worker_dropped_by_a_peer_is_refused(db_url):
    """A joined worker whose heartbeat went stale is dropped by a peer's claim: its
    claims go to the peer, and its own appends and claims are refused."""
    store = Store.open(db_url, create=True)
    first = live_run(store, 3, repeats=1)
    joined = store.join_run("r")
    owed = ("pending",)
    assert store.claim(joined, owed, 2) == [(0, "d0", 0), (1, "d1", 0)]
    with store.write() as conn:
        conn.exec_driver_sql(f"UPDATE workers SET heartbeat_at = 0 WHERE token = '{joined.token}'")
    assert store.claim(first, owed, 10) == [(0, "d0", 0), (1, "d1", 0), (2, "d2", 0)]
    with pytest.raises(ConcurrencyError):
        store.append("r", [RunInterrupted("late")], after_seq=None, fenced=joined)
    with pytest.raises(ConcurrencyError):
        store.claim(joined, owed, 10)
    store.release_lease(first)


def test_claims_above_the_variable_limit_are_inserted_in_parts(db_url):
    """--concurrency has no upper bound: a claim of 51,000 pairs (255,000 values) must
    not pass the bound-variable limit in one statement (SQLite: 32,766 by default,
    250,000 in Debian's build; PostgreSQL: 65,535)."""
    n = 51_000
    store = Store.open(db_url, create=True)
    lease = live_run(store, n, repeats=1)
    taken = store.claim(lease, ("pending",), n)
    assert [slot for slot, _, _ in taken] == list(range(n))
    store.release_lease(lease)


def test_heartbeat_is_kept_fresh_while_every_slot_waits_on_retries(
    tmp_path, invoke, fake, monkeypatch
):
    """A 429 storm holds the only slot in retries and no answer is committed: the
    heartbeat must still advance, or a peer would take the worker for dead and send its
    in-flight samples again."""
    import exprof.run.live as live

    monkeypatch.setattr(live, "HEARTBEAT_S", 0.05)
    samples, mocks = make_samples(2)
    config = write_experiment(tmp_path / "e", samples, mocks, concurrency=1, max_retries=40)
    server = fake(script={samples[0]["user"]: ["429"] * 30}, retry_after=0.05)
    db = tmp_path / "runs" / "exprof.db"
    seen: list[tuple[float, int]] = []  # (the lease's heartbeat, answers the server gave)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and len(seen) < 100_000:
            try:
                with sqlite3.connect(db) as conn:
                    row = conn.execute("SELECT heartbeat_at FROM leases").fetchone()
            except sqlite3.Error:
                row = None  # not created yet
            if row:
                seen.append((row[0], server.state.successes))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = invoke("run", "--config", str(config), "--output-dir", str(tmp_path / "runs"))
    finally:
        stop.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    assert server.state.successes == 2
    during_storm = {beat for beat, answered in seen if answered == 0}
    assert len(during_storm) > 1  # beaten again before any answer arrived


def event_types(db_url: str, run_id: str) -> list[str]:
    return [ev.event.type for ev in Store.open(db_url).events(run_id)]


@pytest.mark.slow
def test_a_worker_stopped_early_leaves_the_run_to_the_others(tmp_path, db_url):
    """SIGTERM to one of two workers: it records no interruption on the shared run (the
    other is still on it), exports nothing, and says it left; the other finishes it."""
    n = 600  # the first worker alone takes seconds: the joined one is still needed
    samples, mocks = make_samples(n)
    config = write_experiment(tmp_path / "e", samples, mocks, concurrency=2)
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    with FakeAnthropic() as ref_server:
        start_reference(tmp_path, config, {**env, "ANTHROPIC_BASE_URL": ref_server.url})
    db, flags = the_store(tmp_path, db_url)
    with FakeAnthropic(latency=0.03) as server:
        env["ANTHROPIC_BASE_URL"] = server.url
        first = exprof(
            "run", "--config", str(config), "--run-id", "w", *flags, cwd=tmp_path, env=env
        )
        wait_for_progress(db, first, 1)
        joined = exprof("resume", "w", "--join", *flags, cwd=tmp_path, env=env)
        deadline = time.monotonic() + 60
        while (  # until the joined worker holds claims: it is sending
            (peek(db, "SELECT count(DISTINCT token) FROM claims") or 0) < 2
            and joined.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert joined.poll() is None and done_count(db) < n  # still sending, both of them
        joined.send_signal(signal.SIGTERM)
        code, err = finish(joined)
        assert code == EXIT_TERMINATED, err
        assert "this worker left run w to the other workers still on it" in err
        assert "continue with" not in err
        code, err = finish(first)
        assert code == 0, err
    types = event_types(db_url, "w")
    assert "run_interrupted" not in types and types.count("run_finished") == 1
    assert exports(tmp_path / "runs" / "w", strip=True) == exports(
        tmp_path / "ref" / "w", strip=True
    )


KILL_BEFORE_FINISHING = (
    "import os, signal, sys\n"
    "from exprof.store.engine import Store\n"
    "def die(*args, **kwargs):\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "Store.finish_if_done = die\n"
    "sys.argv[0] = 'exprof'\n"
    "from exprof.cli import main\n"
    "main()\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("intruded", [False, True])
def test_join_finishes_a_run_whose_last_worker_died_before_finishing(tmp_path, db_url, intruded):
    """The only worker is SIGKILLed after its final answer, before RunFinished and the
    export: a `resume --join` that finds nothing to claim finishes and exports the run.
    If someone else's file sits in the export folder, the run is still finished, and the
    refusal says the run is recorded (exit 1, not 2), as any finished run's does."""
    samples, mocks = make_samples(20)
    config = write_experiment(tmp_path / "e", samples, mocks, concurrency=2)
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    with FakeAnthropic() as ref_server:
        start_reference(tmp_path, config, {**env, "ANTHROPIC_BASE_URL": ref_server.url})
    _, flags = the_store(tmp_path, db_url)
    with FakeAnthropic() as server:
        env["ANTHROPIC_BASE_URL"] = server.url
        args = ["run", "--config", str(config), "--run-id", "w", *flags, "--quiet"]
        killed = subprocess.run(
            [sys.executable, "-c", KILL_BEFORE_FINISHING, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert "run_finished" not in event_types(db_url, "w")
        sent = server.state.requests
        if intruded:
            (tmp_path / "runs" / "w").mkdir(parents=True, exist_ok=True)
            (tmp_path / "runs" / "w" / "notes.txt").write_text("mine", encoding="utf-8")
        code, err = finish(exprof("resume", "w", "--join", *flags, cwd=tmp_path, env=env))
        if intruded:
            assert code == 1, err
            assert "not empty and not an export of run 'w'" in err
            assert "the run is recorded" in err
            assert event_types(db_url, "w").count("run_finished") == 1
            assert sorted(p.name for p in (tmp_path / "runs" / "w").iterdir()) == ["notes.txt"]
            return
        assert code == 0, err
        assert server.state.requests == sent  # nothing sent again
    assert event_types(db_url, "w").count("run_finished") == 1
    assert exports(tmp_path / "runs" / "w", strip=True) == exports(
        tmp_path / "ref" / "w", strip=True
    )


@pytest.mark.slow
def test_a_worker_whose_place_was_taken_stops_and_records_nothing_more(tmp_path, db_url):
    """The rows of a running worker are removed (as a peer's takeover of a worker it
    took for dead does): its answers still in flight are refused, not recorded beside
    the new owner's, and it stops with one Error: line."""
    samples, mocks = make_samples(300)
    config = write_experiment(tmp_path / "e", samples, mocks, concurrency=4)
    db, flags = the_store(tmp_path, db_url)
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    with FakeAnthropic(latency=0.05) as server:
        env["ANTHROPIC_BASE_URL"] = server.url
        proc = exprof(
            "run", "--config", str(config), "--run-id", "w", *flags, cwd=tmp_path, env=env
        )
        wait_for_progress(db, proc, 5)
        with Store.open(db_url).write() as conn:
            for table in ("leases", "workers", "claims"):
                conn.exec_driver_sql(f"DELETE FROM {table} WHERE run_id = 'w'")
            recorded = conn.exec_driver_sql(
                "SELECT count(*) FROM events WHERE run_id = 'w'"
            ).scalar_one()
        code, err = finish(proc)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("Error: run w: this worker lost its place")
    assert len(event_types(db_url, "w")) == recorded
