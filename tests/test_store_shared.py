"""One PostgreSQL store shared by two "machines" (two processes, each with its own
--output-dir), as CI runners and colleagues' laptops would share it.
Everything must equal the same work done on SQLite, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pg_server
from conftest import REPO, make_samples, write_experiment
from exprof.export import FILES


@pytest.fixture
def pg_url(postgres_admin):
    url, name = pg_server.fresh_database(postgres_admin)
    yield url
    pg_server.drop_database(postgres_admin, name)


def _exprof(cwd: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "exprof", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _two_machines(tmp_path: Path, db: str, tag: str) -> dict:
    """main's run and a pull request's run, started at once from two output dirs; then
    `runs` and `compare` from a third place. Returns what a user would see."""
    samples, mocks = make_samples(300, refuse_every=7)
    main_cfg = write_experiment(tmp_path / "main_cfg", samples, mocks, experiment_id="qa")
    worse = {d: {**m, "completion": "answer"} for d, m in list(mocks.items())[1::3]}
    pr_cfg = write_experiment(tmp_path / "pr_cfg", samples, {**mocks, **worse}, experiment_id="qa")
    machines = [
        _exprof(tmp_path, "run", "--config", str(cfg), "--run-id", run_id, "--db", db,
                "--output-dir", str(tmp_path / f"{tag}-{run_id}-machine"), "--quiet")
        for cfg, run_id in ((main_cfg, "main-1"), (pr_cfg, "pr-7"))
    ]  # fmt: skip
    for proc in machines:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    listing = _exprof(tmp_path, "runs", "--db", db, "--format", "json").communicate(timeout=120)
    compare = _exprof(tmp_path, "compare", "main-1", "pr-7", "--db", db, "--format", "json")
    compared, err = compare.communicate(timeout=120)
    assert compare.returncode == 0, err
    exports = {
        run_id: {
            name: (tmp_path / f"{tag}-{run_id}-machine" / run_id / name).read_bytes()
            for name in FILES
        }
        for run_id in ("main-1", "pr-7")
    }
    return {
        "runs": sorted(row["run_id"] for row in json.loads(listing[0])),
        "compare": json.loads(compared),
        "exports": exports,
    }


@pytest.mark.slow
def test_two_machines_share_one_postgres_store_as_if_it_were_sqlite(tmp_path, pg_url):
    shared = _two_machines(tmp_path, pg_url, "pg")
    local = _two_machines(tmp_path, str(tmp_path / "local.db"), "sqlite")
    assert shared["runs"] == ["main-1", "pr-7"]
    assert shared["compare"]["metrics"]["fact_coverage"]["verdict"] == "regressed"
    assert shared["compare"] == local["compare"]
    assert shared["exports"] == local["exports"]  # byte-identical


def test_postgres_store_commands_and_password_masking(tmp_path, pg_url, invoke):
    """Every command works on a PostgreSQL URL, and none prints its password."""
    samples, mocks = make_samples(30, missing_every=10)
    config = write_experiment(tmp_path / "e", samples, mocks)
    password = pg_server.PASSWORD
    results = [
        invoke("run", "--config", str(config), "--db", pg_url, "--quiet"),
        invoke("resume", "exp", "--db", pg_url, "--quiet"),
        invoke("runs", "--db", pg_url),
        invoke("summarize", "exp", "--db", pg_url),
        invoke("export", "exp", "--to", str(tmp_path / "x"), "--db", pg_url),
        invoke("compare", "exp", "exp", "--db", pg_url),
        invoke("report", "exp", "--db", pg_url),
        invoke("doctor", "--db", pg_url),
        invoke("db", "upgrade", "--db", pg_url),
        invoke("summarize", "nope", "--db", pg_url),
    ]
    assert [r.exit_code for r in results] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    for result in results:
        assert password not in result.output
    assert "postgresql+psycopg://exprof:***@127.0.0.1" in results[-1].stderr


def test_a_login_that_may_only_read_is_refused_by_writers_and_served_by_readers(
    tmp_path, pg_url, invoke
):
    """A read-only role gave a traceback on `run`. Every command that writes is
    now refused before it starts, with one line that names what it may not write and
    masks the role's password; the reading commands serve it; the store is unchanged."""
    import psycopg

    config = write_experiment(tmp_path / "e", *make_samples(5))
    assert invoke("run", "--config", str(config), "--db", pg_url, "--quiet").exit_code == 0
    name = pg_url.rsplit("/", 1)[1]
    secret = "reader-Pa55word"
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE reader LOGIN PASSWORD '{secret}'")
        conn.execute(f'GRANT CONNECT ON DATABASE "{name}" TO reader')
        conn.execute("GRANT USAGE ON SCHEMA public TO reader")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
        # one table writable is not enough: every table the writers write is named
        conn.execute("GRANT INSERT ON events TO reader")
        count = conn.execute("SELECT count(*) FROM events").fetchone()
    reader = pg_url.replace(f"{pg_server.USER}:{pg_server.PASSWORD}", f"reader:{secret}")
    try:
        for args in (
            ["run", "--config", str(config), "--run-id", "two", "--quiet"],
            ["resume", "exp", "--quiet"],
            ["rescore", "exp", "--config", str(config), "--quiet"],
            ["cancel", "exp"],
        ):
            result = invoke(*args, "--db", reader)
            assert result.exit_code == 2, (args, result.output)
            [line] = result.stderr.splitlines()
            assert line.startswith("Error: postgresql+psycopg://reader:***@"), line
            assert "may not write to the store" in line and "leases" in line, line
            assert "events," not in line and secret not in result.output
        for args in (["runs"], ["summarize", "exp"], ["compare", "exp", "exp"]):
            result = invoke(*args, "--db", reader)
            assert result.exit_code == 0, (args, result.output)
        exported = invoke("export", "exp", "--to", str(tmp_path / "x"), "--db", reader)
        assert exported.exit_code == 0, exported.output
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == count
    finally:
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("REASSIGN OWNED BY reader TO CURRENT_USER")
            conn.execute("DROP OWNED BY reader")
            conn.execute("DROP ROLE reader")
