"""What differs between SQLite and PostgreSQL, in one place.

Every statement in the store is written once, with `?` placeholders; `sql` turns them
into the driver's style. The rest is connection settings, how a write transaction
serializes writers, and the few catalogue queries doctor needs.
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

BUSY_TIMEOUT_MS = 5000
# Any constant will do: every exprof writer takes this transaction-scoped advisory lock,
# so PostgreSQL appends are serialized as SQLite's BEGIN IMMEDIATE serializes them.
PG_WRITE_LOCK = 0x657870726F66  # "exprof"
IMMUTABILITY_TRIGGERS = ("events_no_update", "events_no_delete")


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


def configure(engine: Engine, readonly: bool = False) -> None:
    """One place for the connection settings. On SQLite: WAL (only on a store we may
    write), NORMAL sync, FKs and a busy timeout; writers BEGIN IMMEDIATE."""
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
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
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
