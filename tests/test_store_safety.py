"""The store against hostile or unlucky users: foreign databases, stores from a newer
exprof, locked or uncreatable stores, concurrent starts, reused pids, bad URLs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_input import _assert_clean_failure, store_state

from conftest import REPO, make_samples, run_sql, write_experiment
from exprof.store.leases import process_started

READ_COMMANDS = [
    ["runs"],
    ["summarize", "exp"],
    ["compare", "exp", "exp"],
    ["export", "exp", "--to", "out"],
    ["doctor"],
    ["report", "exp"],
    ["resume", "exp"],
]


def _foreign_db(path: Path) -> bytes:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE contacts (name TEXT)")
    raw.execute("INSERT INTO contacts VALUES ('ada')")
    raw.commit()
    raw.close()
    return path.read_bytes()


@pytest.mark.parametrize("args", [*READ_COMMANDS, ["db", "upgrade"], ["run"]], ids=" ".join)
def test_a_foreign_database_is_refused_and_left_untouched(tmp_path, invoke, sample_config, args):
    db = tmp_path / "other_app.sqlite"
    before = _foreign_db(db)
    if args == ["run"]:
        args = ["run", "--config", str(sample_config)]
    result = invoke(*args, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "not an exprof store" in result.stderr and "Traceback" not in result.output
    assert db.read_bytes() == before  # no tables added, not switched to WAL
    assert not Path(f"{db}-wal").exists()


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_reading_commands_never_create_a_store(tmp_path, invoke, args):
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # an empty database file: 0 bytes
    result = invoke(*args, "--db", str(empty))
    assert result.exit_code == 2, result.output
    assert "no exprof store here" in result.stderr
    assert empty.read_bytes() == b""


def test_reading_commands_never_migrate_an_older_store(run_with_failures, invoke):
    _, db = run_with_failures
    run_sql(db, "UPDATE alembic_version SET version_num = '0002'")
    for args in (["runs"], ["summarize", "exp"], ["export", "exp"], ["doctor"]):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "older than this exprof's" in result.stderr
        assert "run `exprof db upgrade` first" in result.stderr
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchone() == ("0002",)
    raw.close()


def test_reading_commands_open_the_store_read_only(run_with_failures, invoke):
    """`runs` on a store whose file we may not write still works, and writes nothing."""
    _, db = run_with_failures
    subprocess.run(
        [sys.executable, "-c", f"import sqlite3; sqlite3.connect({str(db)!r}).close()"],
        check=True,
    )  # checkpoint and close: the WAL is folded in
    before = db.read_bytes()
    result = invoke("runs", "--format", "json")
    assert result.exit_code == 0
    assert db.read_bytes() == before


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ANTHROPIC_API_KEY", None)
    return env


def test_simultaneous_runs_on_a_fresh_store_all_succeed_with_distinct_ids(tmp_path):
    samples, mocks = make_samples(50)
    config = write_experiment(tmp_path / "e", samples, mocks)
    n = 5
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "exprof", "run", "--config", str(config), "--quiet"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in outputs]
    ids = sorted(
        line.split(": ")[1]
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("run id: ")
    )
    assert ids == sorted(["exp", *(f"exp-{k}" for k in range(2, n + 1))])
    raw = sqlite3.connect(tmp_path / "runs" / "exprof.db")
    statuses = raw.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    assert statuses == [("complete", n)]


# -- leases: who holds a run ---------------------------------------------------


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def _hold(db: Path, pid: int, started: str | None, heartbeat_age: float = 0.0) -> None:
    """Write a lease on run `exp` naming `pid`, as a process holding it would have."""
    import socket

    now = time.time()
    raw = sqlite3.connect(db)
    raw.execute("DELETE FROM leases")
    raw.execute(
        "INSERT INTO leases (run_id, token, pid, host, acquired_at, heartbeat_at, started) "
        "VALUES ('exp', 'tok', ?, ?, ?, ?, ?)",
        (pid, socket.gethostname(), now - heartbeat_age, now - heartbeat_age, started),
    )
    raw.execute("UPDATE runs SET status = 'running'")
    raw.commit()
    raw.close()


def test_a_live_holder_blocks_resume(run_with_failures, invoke, sleeper):
    _hold(run_with_failures[1], sleeper.pid, process_started(sleeper.pid))
    result = invoke("resume", "exp")
    assert result.exit_code == 2
    assert f"is being worked on by pid {sleeper.pid}" in result.stderr


@pytest.mark.parametrize(
    "case",
    ["reused pid: another process", "reused pid: the resuming process", "stale heartbeat"],
)
def test_a_lease_that_names_no_live_holder_does_not_block(run_with_failures, invoke, sleeper, case):
    db = run_with_failures[1]
    if case == "reused pid: another process":  # the pid now names another program
        _hold(db, sleeper.pid, "1")
    elif case == "reused pid: the resuming process":  # e.g. PID 1 in a restarted container
        _hold(db, os.getpid(), process_started(os.getpid()))
    else:  # the holder stopped beating long ago (stopped, or hung)
        _hold(db, sleeper.pid, process_started(sleeper.pid), heartbeat_age=3600)
    result = invoke("resume", "exp", "--quiet")
    assert "being worked on" not in result.stderr
    assert result.exit_code == 1  # it ran: the 4 samples without a mock answer fail again
    assert "4 sample(s) failed" in result.stderr
    assert "running (" not in invoke("runs").stdout


# -- doctor ----------------------------------------------------------------------


def test_store_from_a_newer_exprof_is_a_clean_error(finished_run, invoke):
    config, db = finished_run
    raw = sqlite3.connect(db)
    raw.execute("UPDATE alembic_version SET version_num = 'ffff'")
    raw.commit()
    raw.close()
    before = store_state(db)
    for args in (["runs"], ["run", "--config", str(config)]):
        result = invoke(*args)
        _assert_clean_failure(result, "made by a newer exprof; upgrade exprof", before, db)


def test_store_path_that_cannot_be_created(tmp_path, invoke, finished_run):
    (tmp_path / "afile").write_text("x")
    result = invoke(
        "run", "--config", str(finished_run[0]), "--db", str(tmp_path / "afile" / "s.db")
    )
    _assert_clean_failure(result, "cannot create store", None, tmp_path / "afile" / "s.db")


def test_locked_store_waits_then_fails_clearly(finished_run, invoke):
    config, db = finished_run
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer, holding the write lock
    try:
        before = store_state(db)
        started = time.monotonic()
        result = invoke("run", "--config", str(config), "--quiet")
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _assert_clean_failure(result, "store is busy or unwritable: database is locked", before, db)
    assert str(db) in result.stderr
    assert waited >= 4.5  # it waited for the busy timeout (5 s) rather than failing at once


# -- --db URLs -------------------------------------------------------------------


def test_an_unknown_url_scheme_is_one_line(invoke):
    result = invoke("runs", "--db", "foo://bar")
    _assert_clean_failure(result, "unsupported database URL scheme 'foo'", None, Path("x"))


def _exprof(tmp_path: Path, *args: str, block: str | None = None) -> subprocess.CompletedProcess:
    env = _env()
    if block:  # a Python without that driver installed
        stub = tmp_path / "stub"
        stub.mkdir(exist_ok=True)
        (stub / f"{block}.py").write_text(f"raise ImportError('No module named {block}')\n")
        env["PYTHONPATH"] = f"{stub}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "-m", "exprof", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", [["runs"], ["db", "upgrade"]], ids=" ".join)
def test_postgres_without_its_driver_says_what_to_install_and_hides_the_password(tmp_path, command):
    url = "postgresql://ada:s3cr3t-pw@127.0.0.1:1/exprof"
    result = _exprof(tmp_path, *command, "--db", url, block="psycopg")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "pip install 'exprof[postgres]'" in result.stderr
    assert "s3cr3t-pw" not in result.stderr + result.stdout


def test_an_unreachable_postgres_is_one_line_without_the_password(tmp_path):
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://ada:s3cr3t-pw@127.0.0.1:1/exprof?connect_timeout=2"
    result = _exprof(tmp_path, "runs", "--db", url)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "postgresql+psycopg://ada:***@127.0.0.1:1/exprof" in result.stderr
    assert "s3cr3t-pw" not in result.stderr + result.stdout


def test_a_lease_from_another_host_lives_by_its_heartbeat_alone():
    """A pid means nothing on another host (a shared PostgreSQL store): only the
    heartbeat tells whether that holder is alive."""
    from exprof.store.leases import STALE_LEASE_S, Lease

    now = time.time()
    dead_pid = 2**22 + 1  # above pid_max's default: no such process here
    fresh = Lease("r", "t", dead_pid, "another-host", now, now, "1")
    stale = Lease("r", "t", os.getpid(), "another-host", now, now - STALE_LEASE_S - 1, None)
    assert fresh.is_alive() and not stale.is_alive()
