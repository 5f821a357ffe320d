"""The store against hostile or unlucky users (issue 9, items 3, 5, 6, 8 and 13's --db):
foreign databases, concurrent starts, reused pids, tampering, bad URLs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_input import _assert_clean_failure

from conftest import REPO, make_samples, write_experiment
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


@pytest.fixture
def one_run(tmp_path, invoke):
    samples, mocks = make_samples(20, missing_every=5)  # 4 samples fail: resumable
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 1
    return config, tmp_path / "runs" / "exprof.db"


def test_reading_commands_never_migrate_an_older_store(one_run, invoke):
    _, db = one_run
    _sql(db, "UPDATE alembic_version SET version_num = '0002'")
    for args in (["runs"], ["summarize", "exp"], ["export", "exp"], ["doctor"]):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "older than this exprof's" in result.stderr
        assert "run `exprof db upgrade` first" in result.stderr
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchone() == ("0002",)
    raw.close()


def test_reading_commands_open_the_store_read_only(one_run, invoke):
    """`runs` on a store whose file we may not write still works, and writes nothing."""
    _, db = one_run
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


def test_a_live_holder_blocks_resume(one_run, invoke, sleeper):
    _hold(one_run[1], sleeper.pid, process_started(sleeper.pid))
    result = invoke("resume", "exp")
    assert result.exit_code == 2
    assert f"is being worked on by pid {sleeper.pid}" in result.stderr


@pytest.mark.parametrize(
    "case",
    ["reused pid: another process", "reused pid: the resuming process", "stale heartbeat"],
)
def test_a_lease_that_names_no_live_holder_does_not_block(one_run, invoke, sleeper, case):
    db = one_run[1]
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


def _doctor(invoke, *args) -> tuple[int, dict]:
    result = invoke("doctor", "--format", "json", *args)
    assert "Traceback" not in result.output
    return result.exit_code, {r["check"]: r for r in json.loads(result.stdout)}


def _sql(db: Path, *statements: str) -> None:
    raw = sqlite3.connect(db)
    for statement in statements:
        raw.execute(statement)
    raw.commit()
    raw.close()


DROP_TRIGGERS = ("DROP TRIGGER events_no_update", "DROP TRIGGER events_no_delete")


def test_doctor_passes_a_sound_store(one_run, invoke):
    code, rows = _doctor(invoke)
    assert code == 0
    assert rows["immutability triggers"]["status"] == "ok"
    assert rows["event hash chain"] == {
        "check": "event hash chain",
        "status": "ok",
        "detail": "1 run(s): intact",
    }


def test_doctor_sees_dropped_triggers(one_run, invoke):
    _sql(one_run[1], DROP_TRIGGERS[0])
    code, rows = _doctor(invoke)
    assert code == 1
    assert rows["immutability triggers"] == {
        "check": "immutability triggers",
        "status": "FAILED",
        "detail": "missing: events_no_update",
    }


def test_doctor_sees_an_edited_event(one_run, invoke):
    """Triggers dropped, a completion edited (valid JSON, projections untouched): the
    hash chain breaks at that event."""
    db = one_run[1]
    raw = sqlite3.connect(db)
    (event_id,) = raw.execute(
        "SELECT id FROM events WHERE type = 'response_received' ORDER BY id LIMIT 1"
    ).fetchone()
    raw.close()
    _sql(
        db,
        *DROP_TRIGGERS,
        f"UPDATE events SET payload = replace(payload, 'answer', 'ANSWER') WHERE id = {event_id}",
    )
    code, rows = _doctor(invoke)
    assert code == 1
    assert rows["event hash chain"]["status"] == "FAILED"
    assert (
        rows["event hash chain"]["detail"] == f"exp: event {event_id}: edited (hash chain broken)"
    )


def test_doctor_reports_a_payload_that_is_not_json(one_run, invoke):
    _sql(one_run[1], *DROP_TRIGGERS, "UPDATE events SET payload = '{not json' WHERE seq = 5")
    code, rows = _doctor(invoke)
    assert code == 1
    assert "unreadable payload (JSONDecodeError)" in rows["event hash chain"]["detail"]
    assert rows["projections"]["status"] == "FAILED"


def test_doctor_reports_an_overwritten_page(one_run, invoke):
    db = one_run[1]
    _sql(db, "PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")  # the file header's page size
    pages = len(data) // page
    victim = pages - 2  # a page of the last table or index written, not the schema page
    data[victim * page : (victim + 1) * page] = b"\xa5" * page
    db.write_bytes(bytes(data))
    code, rows = _doctor(invoke)
    assert code == 1
    failed = [r for r in rows.values() if r["status"] == "FAILED"]
    assert failed and rows["integrity_check"]["status"] == "FAILED"


def test_doctor_run_checks_one_run(one_run, invoke, tmp_path):
    config = one_run[0]
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 1  # exp-2
    _sql(
        one_run[1],
        *DROP_TRIGGERS,
        "UPDATE events SET payload = '[]' WHERE run_id = 'exp-2' AND seq = 5",
    )
    code, rows = _doctor(invoke, "--run", "exp")
    assert code == 1  # the triggers are store-wide
    assert rows["event hash chain"]["detail"] == "run exp: intact"
    code, rows = _doctor(invoke, "--run", "exp-2")
    assert rows["event hash chain"]["detail"].startswith("exp-2: event ")
    result = invoke("doctor", "--run", "nope")
    assert result.exit_code == 2 and "no run 'nope'" in result.stderr


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
