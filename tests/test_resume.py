"""Resume: real subprocesses killed with SIGKILL (and SIGINT), then resumed until done."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_samples, write_experiment
from exprof.errors import Terminated
from exprof.store import projections
from exprof.store.engine import Store, store_url
from exprof.store.events import ResponseReceived
from fake_anthropic import FakeAnthropic

TIMING = {"latency_ms", "request_id", "requests_per_second"}


def exprof(*args: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "exprof", *args, "--quiet"],
        cwd=cwd,
        env=env or os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def peek(db: Path | str, sql: str) -> object:
    """One value read from a store another process may be writing (None before it
    exists): a SQLite file, or a PostgreSQL URL."""
    if isinstance(db, str):
        import psycopg

        try:
            with psycopg.connect(db.replace("+psycopg", ""), connect_timeout=5) as conn:
                row = conn.execute(sql).fetchone()
                return row[0] if row else None
        except psycopg.Error:
            return None  # no tables yet
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None


def done_count(db: Path | str) -> int:
    return peek(db, "SELECT count(*) FROM samples WHERE status = 'ok'") or 0  # type: ignore[return-value]


def listed_runs(cwd: Path) -> list[dict]:
    listing = subprocess.run(
        [sys.executable, "-m", "exprof", "runs", "--format", "json"],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    return json.loads(listing.stdout)


def exports(folder: Path, strip: bool) -> dict:
    """The three files, whole; with strip, parsed and without the timing fields."""
    out = {}
    for name in ("requests.jsonl", "responses.jsonl", "summary.json"):
        text = (folder / name).read_text(encoding="utf-8")
        if not strip:
            out[name] = text
        elif name == "summary.json":
            out[name] = {k: v for k, v in json.loads(text).items() if k not in TIMING}
        else:
            out[name] = [
                {k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in text.splitlines()
            ]
    return out


def assert_consistent(db: Path | str, run_id: str, n: int) -> None:
    if isinstance(db, Path):
        raw = sqlite3.connect(db)
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        raw.close()
    store = Store.open(db if isinstance(db, str) else store_url(str(db), "."))
    responses: dict[tuple[str, int], int] = {}  # by (dialogue, repeat); n counts pairs
    for ev in store.events(run_id, types=(ResponseReceived,)):
        pair = (ev.payload["dialogue_id"], ev.payload.get("repeat", 0))
        responses[pair] = responses.get(pair, 0) + 1
    assert len(responses) == n and set(responses.values()) == {1}
    with store.write() as conn:
        incremental = conn.exec_driver_sql("SELECT * FROM samples ORDER BY run_id, idx").all()
        projections.rebuild(conn)
        rebuilt = conn.exec_driver_sql("SELECT * FROM samples ORDER BY run_id, idx").all()
    assert rebuilt == incremental
    assert sum(1 for row in incremental if row.status == "ok") == n


def the_store(tmp_path: Path, db_url: str) -> tuple[Path | str, tuple[str, ...]]:
    """Where the crash loop's store is (for peeking) and the flags that point at it."""
    if db_url.startswith("sqlite"):
        return tmp_path / "runs" / "exprof.db", ()
    return db_url, ("--db", db_url)


def crash_loop(
    tmp_path: Path,
    config: Path,
    n: int,
    kills: int,
    seed: int,
    env: dict,
    max_wait: float,
    db_url: str,
) -> int:
    """Run `crash`, SIGKILL it at random moments, resume, repeat; return the kills made."""
    rng = random.Random(seed)
    db, flags = the_store(tmp_path, db_url)
    made = 0
    while True:
        exists = peek(db, "SELECT 1 FROM runs WHERE run_id = 'crash'") is not None
        args = (
            ("resume", "crash") if exists else ("run", "--config", str(config), "--run-id", "crash")
        )
        proc = exprof(*args, *flags, cwd=tmp_path, env=env)
        if made < kills:
            before = done_count(db)
            if rng.random() < 0.4:
                time.sleep(rng.uniform(0.0, 0.8))  # anywhere, start-up included
            else:  # mid-work: after fresh progress, a random slice of a batch later
                deadline = time.monotonic() + max_wait
                while done_count(db) == before and proc.poll() is None:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.1))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                made += 1
                raw = sqlite3.connect(db) if isinstance(db, Path) and db.exists() else None
                if raw is not None:
                    assert raw.execute("PRAGMA quick_check").fetchone() == ("ok",)
                    raw.close()
                continue
        code, err = finish(proc)
        assert code == 0, err
        return made


def clean_env() -> dict:
    """The environment for a module-scoped run: the autouse isolation is not in force yet."""
    drop = {"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "EXPROF_DB"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def reference(home: Path, n: int, env: dict | None = None, **make) -> Path:
    """An experiment of n samples in home/e and its uninterrupted run `crash` exported to
    home/ref/crash; returns the config."""
    config_settings = make.pop("config", {})
    samples, mocks = make_samples(n, **make)
    config = write_experiment(home / "e", samples, mocks, **config_settings)
    run = ("run", "--config", str(config), "--run-id", "crash", "--output-dir", "ref")
    assert finish(exprof(*run, cwd=home, env=env or clean_env()))[0] == 0
    return config


def beside(tmp_path: Path, home: Path) -> Path:
    """A module's reference experiment, copied into this test's folder (ref/ linked, as it
    is only read); returns the config."""
    shutil.copytree(home / "e", tmp_path / "e")
    (tmp_path / "ref").symlink_to(home / "ref", target_is_directory=True)
    return tmp_path / "e" / "config.yaml"


@pytest.fixture(scope="module")
def mock_crash_reference(tmp_path_factory) -> Path:
    """80,000 samples (40 commits of 2,000: enough for 25 kills to land mid-run), run
    once for both backends."""
    home = tmp_path_factory.mktemp("mock_crash")
    reference(home, 80_000, facts=3, refuse_every=9)
    return home


@pytest.mark.slow
def test_mock_crash_loop_gives_the_uninterrupted_exports(tmp_path, db_url, mock_crash_reference):
    """On SQLite and on PostgreSQL; the reference run is always on SQLite, so the
    exports are also byte-identical across the two backends."""
    n = 80_000
    config = beside(tmp_path, mock_crash_reference)
    made = crash_loop(
        tmp_path, config, n, kills=25, seed=11, env=os.environ.copy(), max_wait=20, db_url=db_url
    )
    assert made >= 25
    assert exports(tmp_path / "runs" / "crash", strip=False) == exports(
        tmp_path / "ref" / "crash", strip=False
    )
    assert_consistent(the_store(tmp_path, db_url)[0], "crash", n)


LIVE_CRASH_N, LIVE_CRASH_CONCURRENCY = 2000, 8


def fake_env(server: FakeAnthropic) -> dict:
    return {**clean_env(), "ANTHROPIC_API_KEY": "sk-ant-crash", "ANTHROPIC_BASE_URL": server.url}


@pytest.fixture(scope="module")
def live_crash_reference(tmp_path_factory) -> Path:
    """2,000 samples at 20 ms and concurrency 8, run once for both backends: the server
    sees each sample once."""
    home = tmp_path_factory.mktemp("live_crash")
    with FakeAnthropic(latency=0.02, jitter=0.005) as server:
        config = {"concurrency": LIVE_CRASH_CONCURRENCY}
        reference(home, LIVE_CRASH_N, env=fake_env(server), config=config)
        assert server.state.requests == LIVE_CRASH_N
    return home


@pytest.mark.slow
def test_live_crash_loop_wastes_at_most_the_in_flight_requests(
    tmp_path, db_url, live_crash_reference
):
    n, concurrency = LIVE_CRASH_N, LIVE_CRASH_CONCURRENCY
    config = beside(tmp_path, live_crash_reference)
    with FakeAnthropic(latency=0.02, jitter=0.005) as server:
        env = {**os.environ, **fake_env(server)}
        made = crash_loop(
            tmp_path, config, n, kills=25, seed=5, env=env, max_wait=20, db_url=db_url
        )
        wasted = server.state.requests - n
    assert made >= 25
    assert 0 <= wasted <= made * concurrency, (wasted, made)
    assert exports(tmp_path / "runs" / "crash", strip=True) == exports(
        tmp_path / "ref" / "crash", strip=True
    )
    assert_consistent(the_store(tmp_path, db_url)[0], "crash", n)


@pytest.fixture(scope="module")
def catchable_reference(tmp_path_factory) -> Path:
    """A mock experiment of 60,000 samples, big enough to be caught mid-run, and its
    uninterrupted exports: made once for the module's tests."""
    home = tmp_path_factory.mktemp("catchable")
    samples, mocks = make_samples(60_000, facts=2, refuse_every=5)
    config = write_experiment(home / "e", samples, mocks)
    run = ("run", "--config", str(config), "--run-id", "r", "--output-dir", "ref")
    assert finish(exprof(*run, cwd=home, env=clean_env()))[0] == 0
    return home


@pytest.fixture
def catchable_run(tmp_path, catchable_reference) -> Path:
    """The 60,000-sample experiment in this test's folder, its reference in ref/r: the config."""
    return beside(tmp_path, catchable_reference)


def assert_resume_gives_the_reference(tmp_path: Path) -> None:
    code, err = finish(exprof("resume", "r", cwd=tmp_path))
    assert code == 0, err
    assert exports(tmp_path / "runs" / "r", False) == exports(tmp_path / "ref" / "r", False)


def start_and_catch(tmp_path: Path, config: Path, sig: int) -> subprocess.Popen:
    proc = exprof("run", "--config", str(config), "--run-id", "r", cwd=tmp_path)
    db = tmp_path / "runs" / "exprof.db"
    deadline = time.monotonic() + 30
    while done_count(db) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    return proc


STOPS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "interrupted")]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "what"), STOPS)
def test_ctrl_c_or_sigterm_then_resume_in_mock_mode(tmp_path, catchable_run, sig, code, what):
    proc = start_and_catch(tmp_path, catchable_run, sig)
    returned, err = finish(proc)
    assert returned == code, err
    assert err.strip().splitlines()[-1] == f"{what}; continue with: exprof resume r"
    [row] = listed_runs(tmp_path)  # the lease is released: not "running"
    assert (row["status"], row["next step"]) == ("interrupted", "exprof resume r")
    # The resume is stopped the same way, and resumed again.
    db = tmp_path / "runs" / "exprof.db"
    before = done_count(db)
    resuming = exprof("resume", "r", cwd=tmp_path)
    deadline = time.monotonic() + 30
    while done_count(db) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    resuming.send_signal(sig)
    returned, err = finish(resuming)
    assert returned == code, err
    assert err.strip().splitlines()[-1] == f"{what}; continue with: exprof resume r"
    reasons = peek(
        db, "SELECT group_concat(payload, '|') FROM events WHERE type = 'run_interrupted'"
    )
    assert str(reasons).count("Ctrl-C" if sig == signal.SIGINT else "SIGTERM") == 2
    assert_resume_gives_the_reference(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "what"), STOPS)
def test_a_signal_during_the_export_leaves_a_run_resume_finishes(
    tmp_path, catchable_run, sig, code, what
):
    db = tmp_path / "runs" / "exprof.db"
    finished = "SELECT count(*) FROM events WHERE type = 'run_finished'"
    for _attempt in range(3):  # on a loaded machine the signal may land after the export
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
        proc = exprof("run", "--config", str(catchable_run), "--run-id", "r", cwd=tmp_path)
        deadline = time.monotonic() + 60
        while not peek(db, finished) and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(sig)  # 60,000 samples take about a second to export
        returned, err = finish(proc)
        if returned != 0:
            break
    assert returned == code, err
    assert err.strip().splitlines()[-1] == (
        f"{what} during the export; finish it with: exprof resume r"
    )
    assert not (tmp_path / "runs" / "r" / "summary.json").exists()
    code, err = finish(exprof("resume", "r", cwd=tmp_path))
    assert code == 0, err
    assert exports(tmp_path / "runs" / "r", False) == exports(tmp_path / "ref" / "r", False)


@pytest.mark.slow
def test_killed_run_is_taken_over_and_listed_as_interrupted(tmp_path, catchable_run):
    proc = start_and_catch(tmp_path, catchable_run, signal.SIGKILL)
    proc.wait()
    [row] = listed_runs(tmp_path)
    assert row["status"] == "interrupted"  # the lease's holder is dead
    done, total = map(int, row["done"].split("/"))
    assert 0 < done < total == 60_000
    assert_resume_gives_the_reference(tmp_path)


@pytest.mark.slow
def test_second_resume_is_refused_naming_the_holder(tmp_path, catchable_run):
    proc = start_and_catch(tmp_path, catchable_run, signal.SIGKILL)
    proc.wait()
    first, second = exprof("resume", "r", cwd=tmp_path), exprof("resume", "r", cwd=tmp_path)
    results = sorted([finish(first), finish(second)])
    assert results[0][0] == 0, results
    assert results[1][0] == 2
    [line] = results[1][1].strip().splitlines()
    assert line.startswith("Error: run r is being worked on by pid ")
    assert " since " in line
    assert_consistent(tmp_path / "runs" / "exprof.db", "r", 60_000)
    assert exports(tmp_path / "runs" / "r", False) == exports(tmp_path / "ref" / "r", False)


@pytest.mark.slow
def test_resume_needs_neither_config_nor_dataset(tmp_path, catchable_run):
    proc = start_and_catch(tmp_path, catchable_run, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(tmp_path / "e")
    assert_resume_gives_the_reference(tmp_path)


def test_resume_retries_failures_unless_told_not_to(tmp_path, invoke):
    samples, mocks = make_samples(10, missing_every=3)  # 4 samples have no mock answer
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 1
    before = Store.open(store_url(None, "runs")).event_count()
    kept = invoke("resume", "exp", "--no-retry-failed", "--quiet")
    assert kept.exit_code == 1
    assert kept.stderr == "nothing sent: 4 failed sample(s) left alone (--no-retry-failed)\n"
    assert Store.open(store_url(None, "runs")).event_count() == before  # nothing sent
    retried = invoke("resume", "exp", "--quiet", "--format", "json")
    assert retried.exit_code == 1  # the mock still has no answer for them
    assert json.loads(retried.stdout)["samples_failed"] == 4
    store = Store.open(store_url(None, "runs"))
    types = [e.type for e in store.events("exp")]
    assert types.count("run_resumed") == 1
    assert types.count("sample_failed") == 8


def test_resuming_a_complete_run_sends_nothing_and_re_exports(tmp_path, invoke, monkeypatch):
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path / "e", samples, mocks, api_version="2023-06-01")
    with FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
        (tmp_path / "runs" / "exp" / "summary.json").unlink()
        result = invoke("resume", "exp", "--quiet")
        assert server.state.requests == 3
    assert result.exit_code == 0
    assert result.stderr == "run exp is already complete\n"
    assert json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())["mode"] == "live"


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
)
def test_ctrl_c_and_sigterm_wait_for_a_safe_point(signum, raised):
    from exprof.signals import deferred_signals

    before = signal.getsignal(signum)
    with pytest.raises(raised) as caught, deferred_signals() as check:
        check()
        os.kill(os.getpid(), signum)  # no KeyboardInterrupt here: only a flag
        time.sleep(0.05)
        check()  # the safe point: raised here
    assert caught.type is raised
    assert caught.traceback[-1].name == "check"
    assert signal.getsignal(signum) is before
