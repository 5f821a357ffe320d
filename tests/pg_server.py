"""A real PostgreSQL server for the tests: initdb in a temp dir, on a free port on
127.0.0.1, run as the `postgres` user when we are root (CI runs as root; PostgreSQL
refuses to). Locally without PostgreSQL its tests skip with the reason; with CI=true
they fail instead, so CI can never pass without them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin_dir() -> Path:
    """EXPROF_PG_BIN, else the newest Debian-packaged server (15 on bookworm)."""
    if os.environ.get("EXPROF_PG_BIN"):
        return Path(os.environ["EXPROF_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _bin_dir()
USER, PASSWORD = "exprof", "pg-test-Pa55word"  # a password, so masking is tested for real
START_TIMEOUT_S = 60


def unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as postgres"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server() -> Iterator[str]:
    """Start a throwaway server; yield the URL of its admin database; drop it all."""
    base = Path(tempfile.mkdtemp(prefix="exprof-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data, pwfile = base / "data", base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_pg:
        shutil.chown(pwfile, "postgres", "postgres")
    port = _free_port()
    quiet = {"check": True, "capture_output": True, "timeout": START_TIMEOUT_S}
    try:
        subprocess.run(
            [*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(pwfile),
             "--auth=scram-sha-256", "--no-locale", "-E", "UTF8"],
            **quiet,
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {base} "
            "-c fsync=off -c synchronous_commit=off -c max_connections=200"
        )
        subprocess.run(
            [*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options,
             "-l", str(base / "log"), "-w", "-t", str(START_TIMEOUT_S), "start"],
            **quiet,
        )  # fmt: skip
        try:
            yield f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=START_TIMEOUT_S,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(admin_url: str) -> tuple[str, str]:
    """A new empty database on the server: (its URL, its name)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")
