"""What differs between SQLite and PostgreSQL, in one place.

Every statement in the store is written once, with `?` placeholders; `sql` turns them
into the driver's style. The rest is connection settings, how a write transaction
serializes writers, and the few catalogue queries doctor needs.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from exprof.errors import ExprofError

BUSY_TIMEOUT_MS = 5000
# Any constant will do: every exprof writer takes this transaction-scoped advisory lock,
# so PostgreSQL appends are serialized as SQLite's BEGIN IMMEDIATE serializes them.
PG_WRITE_LOCK = 0x657870726F66  # "exprof"
IMMUTABILITY_TRIGGERS = ("events_no_update", "events_no_delete")
# The tables an exprof store holds; a database with any other table is not ours.
STORE_TABLES = (
    "alembic_version",
    "events",
    "projection_positions",
    "runs",
    "samples",
    "leases",
    "workers",
    "claims",
)
POSTGRES_HINT = "install the PostgreSQL driver: pip install 'exprof[postgres]' (psycopg 3)"
WAL_TRIES = 100  # x 50 ms: concurrent first opens wait for each other's journal switch
# SQLite pages of a new store: 16 KiB rather than the default 4 KiB cut a 100k-sample mock
# run's SQLite time by a fifth (fewer pages per event, and per dataset snapshot chunk).
PAGE_SIZE = 16384
# Bound values per multi-row INSERT (insert_rows): ~140 event rows a statement. Far
# below SQLite's limit (32,766 since 3.32); 50 to 200 rows a statement measured alike.
SQLITE_VALUES_PER_INSERT = 999


def normalize_url(url: str) -> str:
    """Plain `postgresql://` means psycopg 3, the driver the `postgres` extra installs
    (SQLAlchemy's default would be psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


# Query parameters whose values are credentials (libpq's password, passfile, sslpassword,
# sslkey, and a driver's or proxy's token, secret, key, ...): matched in their names.
SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|cred|auth|sig", re.IGNORECASE)
MASK = "***"


def parse(url: str) -> URL | None:
    """The URL parsed, or None for one SQLAlchemy cannot read."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        return None


def secrets(url: str) -> tuple[str, ...]:
    """The URL's credential values (its password and secret-looking parameters), for
    `scrub` to remove from a driver's messages."""
    parsed = parse(url)
    if parsed is None:
        return ()
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if SECRET_PARAM.search(key):
            found += [value] if isinstance(value, str) else list(value)
    return tuple(str(v) for v in found if v)


def masked(url: str) -> str:
    """The URL as exprof prints it, anywhere: without its password or the values of
    secret-looking query parameters."""
    parsed = parse(url)
    if parsed is None:
        return url.split("://", 1)[0] + "://..."
    query = {k: MASK if SECRET_PARAM.search(k) else v for k, v in parsed.query.items()}
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", MASK)


def scrub(message: str, secrets: Sequence[str]) -> str:
    """The message without any of `secrets` (as a driver may quote its DSN)."""
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, MASK)
    return message


def create(url: str, location: str, readonly: bool) -> Engine:
    """The engine for a store URL; an unknown scheme or a missing driver is a one-line
    error that says what to do."""
    scheme = url.split("://", 1)[0]
    try:
        parsed = make_url(url)
        args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and readonly:
            args["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        engine = create_engine(parsed, **args)
    except NoSuchModuleError:
        raise ExprofError(
            f"--db {location}: unsupported database URL scheme {scheme!r} "
            "(give a file path, sqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB)"
        ) from None
    except ArgumentError as exc:
        raise ExprofError(f"--db {location}: not a database URL ({exc})") from None
    except ImportError as exc:
        hint = POSTGRES_HINT if scheme.startswith("postgres") else f"install {exc.name}"
        raise ExprofError(f"--db {location}: no driver for {scheme!r}: {hint}") from None
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raise ExprofError(
            f"--db {location}: unsupported database {engine.dialect.name!r} "
            "(exprof stores live in SQLite or PostgreSQL)"
        )
    configure(engine, readonly)
    return engine


def enable_wal(conn: Connection) -> None:
    """Switch a SQLite store (ours, or empty) to WAL; the mode is kept in the file. A new
    (empty) file first gets PAGE_SIZE pages. A concurrent first open may hold the lock
    for a moment: wait for it, boundedly."""
    if conn.dialect.name != "sqlite":
        return
    raw = conn.connection.dbapi_connection  # outside any transaction, as the pragma needs
    assert raw is not None
    for _ in range(WAL_TRIES):
        try:
            if raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            # Only an empty file takes it (and only before WAL): an old store keeps its own.
            raw.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            raw.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)


def name(conn: Connection | Engine) -> str:
    return conn.dialect.name


def sql(conn: Connection, statement: str) -> str:
    """The statement in the driver's placeholder style (psycopg wants %s)."""
    if conn.dialect.paramstyle == "qmark":
        return statement
    return _pyformat(statement)


@lru_cache(maxsize=256)
def _pyformat(statement: str) -> str:
    return statement.replace("%", "%%").replace("?", "%s")


def execute(conn: Connection, statement: str, params: Any = ()) -> Any:
    """Run one statement (or an executemany, for a list of tuples) on either dialect."""
    return conn.exec_driver_sql(sql(conn, statement), params)


def insert_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT many rows. On PostgreSQL through COPY: psycopg's executemany costs ~30 us
    of client CPU a row, and a 100k-sample mock run inserts 400k of them. A duplicate
    key is raised as the IntegrityError the INSERT would have raised, and every other
    driver error as the SQLAlchemy error the INSERT would have raised."""
    names = ", ".join(columns)
    if conn.dialect.name != "postgresql":
        # Many rows per INSERT: a third less time than one row per statement.
        per = max(1, SQLITE_VALUES_PER_INSERT // len(columns))
        row = f"({', '.join('?' * len(columns))})"
        whole = len(rows) - len(rows) % per
        if whole:
            many = f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * per)}"
            flat = [tuple(chain.from_iterable(rows[i : i + per])) for i in range(0, whole, per)]
            execute(conn, many, flat)
        if whole < len(rows):
            execute(conn, f"INSERT INTO {table} ({names}) VALUES {row}", list(rows[whole:]))
        return
    import psycopg

    raw = conn.connection.dbapi_connection  # inside the transaction the caller holds
    assert isinstance(raw, psycopg.Connection)
    statement = f"COPY {table} ({names}) FROM STDIN"
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        # Raised as SQLAlchemy's class for it, as an INSERT's would be (IntegrityError for
        # a clash, OperationalError for a full disk or a timeout), so the store's error
        # handling and its password masking see every failure of a COPY too.
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from None


def stream(conn: Connection, statement: str, params: Any = ()) -> Any:
    """A read whose rows arrive as they are fetched: on PostgreSQL through a server-side
    cursor (psycopg's default cursor holds the whole result in memory, ~60 MB for the
    responses of a 100k-sample export); SQLite's cursor steps through the rows already."""
    if conn.dialect.name == "postgresql":
        conn = conn.execution_options(stream_results=True)
    return execute(conn, statement, params)


def configure(engine: Engine, readonly: bool = False) -> None:
    """One place for the connection settings. On SQLite: NORMAL sync, FKs and a busy
    timeout (WAL is switched on once, by `enable_wal`, only on a store exprof owns);
    read-only opens are query_only; writers BEGIN IMMEDIATE."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if readonly:
            cur.execute("PRAGMA query_only = ON")
        else:
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def lock_writers(conn: Connection) -> None:
    """Called first in every write transaction: one writer at a time, store-wide."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def skip_locked(conn: Connection) -> str:
    """The clause that makes concurrent claimers pass over each other's rows; SQLite has
    no row locks (its claim transaction holds the write lock instead)."""
    return " FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else ""


def unwritable(conn: Connection) -> list[str]:
    """The store's tables (and sequences) this login may not write as exprof does:
    insert everywhere, and update and delete outside the append-only events. SQLite has
    no roles (a read-only file is refused when it is written)."""
    if conn.dialect.name == "sqlite":
        return []
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname <> 'alembic_version' AND ("
        "(c.relkind = 'r' AND NOT (has_table_privilege(c.oid, 'INSERT') AND "
        "(c.relname = 'events' OR (has_table_privilege(c.oid, 'UPDATE') "
        "AND has_table_privilege(c.oid, 'DELETE'))))) "
        "OR (c.relkind = 'S' AND NOT has_sequence_privilege(c.oid, 'USAGE'))) "
        "ORDER BY c.relname"
    )
    return [str(r[0]) for r in rows]


def integrity_check(conn: Connection) -> list[str]:
    """The engine's own check of its files; PostgreSQL checks its pages as it reads them."""
    if conn.dialect.name == "sqlite":
        return [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
    return ["ok"]


def triggers(conn: Connection) -> set[str]:
    """Names of the triggers defined on the events table."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
        )
    else:
        rows = conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal"
        )
    return {str(r[0]) for r in rows}
