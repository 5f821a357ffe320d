"""A database that is not exprof's is refused and left exactly as it was; a store URL is
printed only with its credentials masked."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

COMMANDS = [
    ["runs"],
    ["summarize", "exp"],
    ["compare", "exp", "exp"],
    ["report", "exp"],
    ["doctor"],
    ["db", "upgrade"],
    ["run"],
]


def _sqlite(path: Path, *statements: str, wal: bool = False) -> None:
    raw = sqlite3.connect(path)
    if wal:
        raw.execute("PRAGMA journal_mode = WAL")
    for statement in statements:
        raw.execute(statement)
    raw.commit()
    raw.close()


def _runs_table(path: Path) -> None:
    _sqlite(
        path, "CREATE TABLE runs (run_id TEXT, status TEXT)", "INSERT INTO runs VALUES ('a', 'x')"
    )


def _foreign_alembic(path: Path) -> None:
    _sqlite(
        path,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('0005')",
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)",
    )


def _foreign_alembic_runs(path: Path) -> None:
    _sqlite(
        path,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('0005')",
        "CREATE TABLE runs (run_id TEXT)",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT)",
    )


def _foreign_wal(path: Path) -> None:
    _sqlite(path, "CREATE TABLE contacts (name TEXT)", wal=True)


def _empty_sqlite(path: Path) -> None:
    _sqlite(path, "PRAGMA user_version = 7")  # a header and no tables: another program's


def _zeros(path: Path) -> None:
    path.write_bytes(b"\x00" * 4096)


def _text(path: Path) -> None:
    path.write_text("name,email\nada,ada@example.org\n")


FOREIGN = {
    "runs-table": _runs_table,
    "alembic-0005": _foreign_alembic,
    "alembic-0005-runs-events": _foreign_alembic_runs,
    "wal-contacts": _foreign_wal,
    "empty-sqlite": _empty_sqlite,
    "zeros": _zeros,
    "csv": _text,
}


def _state(path: Path) -> tuple:
    """The file's bytes (hashed), its mtime, and which companion files exist."""
    stat = path.stat()
    companions = sorted(p.name for p in path.parent.iterdir() if p.name != path.name)
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, companions


def _exprof(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("EXPROF_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "exprof", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("kind", list(FOREIGN))
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_foreign_file_is_refused_and_not_changed_at_all(
    tmp_path, invoke, sample_config, kind, args
):
    folder = tmp_path / "theirs"
    folder.mkdir()
    db = folder / "app.db"
    FOREIGN[kind](db)
    before = _state(db)
    if args == ["run"]:
        args = ["run", "--config", str(sample_config)]
    result = invoke(*args, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "not an exprof store" in result.stderr
    assert _state(db) == before  # same bytes, same mtime, no -wal, -shm or -journal


@pytest.mark.parametrize("kind", ["alembic-0005", "runs-table", "zeros"])
def test_a_foreign_file_is_refused_through_the_installed_command(tmp_path, kind):
    db = tmp_path / "app.db"
    FOREIGN[kind](db)
    before = _state(db)
    _one_error_line(_exprof(tmp_path, "summarize", "exp", "--db", str(db)), str(db))
    assert _state(db) == before


def test_a_store_being_created_by_another_exprof_is_not_foreign(tmp_path, invoke, sample_config):
    """An empty WAL file with exprof's page size: the state a concurrent first open
    leaves for a moment, before its migration commits."""
    db = tmp_path / "exprof.db"
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA page_size = 16384")
    raw.execute("PRAGMA journal_mode = WAL")
    raw.close()
    result = invoke("run", "--config", str(sample_config), "--db", str(db))
    assert result.exit_code == 0, result.output
    assert invoke("runs", "--db", str(db)).exit_code == 0


# -- masking ---------------------------------------------------------------------

SECRET = "s3cr3t-Pw"
URLS = [
    f"postgresql://ada:{SECRET}@127.0.0.1:1/exprof",
    f"postgresql+psycopg://ada@127.0.0.1:1/exprof?password={SECRET}",
    f"postgresql://127.0.0.1:1/exprof?user=ada&PASSWORD={SECRET}",
    f"postgresql://ada@127.0.0.1:1/exprof?sslpassword={SECRET}&sslmode=disable",
    f"postgresql://ada@127.0.0.1:1/exprof?passfile=/home/ada/{SECRET}",
    f"postgresql://ada@127.0.0.1:1/exprof?application_name=x&auth_token={SECRET}",
    f"postgresql://ada@127.0.0.1:1/exprof?api_key={SECRET}&password={SECRET}x",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("args", [["runs"], ["db", "upgrade"], ["doctor"]], ids=" ".join)
def test_no_spelling_of_a_store_credential_is_printed(tmp_path, url, args):
    pytest.importorskip("psycopg")
    result = _exprof(
        tmp_path, *args, "--db", url + ("&" if "?" in url else "?") + "connect_timeout=2"
    )
    _one_error_line(result, "127.0.0.1:1/exprof", "***")
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("url", URLS)
def test_the_masking_function_hides_every_credential(url):
    from exprof.store.dialects import masked, scrub, secrets

    shown = masked(url)
    assert SECRET not in shown and "***" in shown and "127.0.0.1:1/exprof" in shown
    assert SECRET not in scrub(f"could not connect: {url}", secrets(url))


def test_db_upgrade_and_doctor_print_the_store_masked(tmp_path, postgres_admin):
    """A live server: the lines that name the store on success mask it too."""
    import pg_server

    url, name = pg_server.fresh_database(postgres_admin)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        password = parsed.password
        assert password
        spelled = parsed.set(password=None).render_as_string(hide_password=False)
        spelled += ("&" if "?" in spelled else "?") + f"password={password}"
        upgrade = _exprof(tmp_path, "db", "upgrade", "--db", spelled)
        assert upgrade.returncode == 0, upgrade.stderr
        doctor = _exprof(tmp_path, "doctor", "--db", spelled)
        assert "password=***" in upgrade.stderr and "password=***" in doctor.stdout
        assert password not in upgrade.stdout + upgrade.stderr + doctor.stdout + doctor.stderr
    finally:
        pg_server.drop_database(postgres_admin, name)
