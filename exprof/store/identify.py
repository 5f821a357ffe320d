"""Whether a database is exprof's store, decided before anything is written to it.

A SQLite file is read through a read-only handle (`mode=ro`, or `immutable=1` for a WAL
file nobody has open, which would otherwise get -wal and -shm files), before any engine,
pragma or journal touches it. A database that is not exprof's is refused, never changed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from pathlib import Path
from urllib.parse import quote

from exprof.errors import ExprofError
from exprof.store.dialects import PAGE_SIZE, STORE_TABLES

SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_VERSION = 2  # header bytes 18 and 19 in a WAL-mode file
# Columns every exprof events table has had, at every revision.
EVENT_COLUMNS = {"id", "run_id", "seq", "type", "payload", "created_at"}


class Found:
    """What a database holds: its tables, its alembic revision, its events' columns."""

    def __init__(
        self, tables: Collection[str], revision: str | None, event_columns: Collection[str]
    ) -> None:
        self.tables = set(tables)
        self.revision = revision
        self.event_columns = set(event_columns)


def peek_sqlite(path: Path) -> Found | None:
    """What the SQLite file holds, read without changing it; None for a file exprof may
    make its store: an empty file, or a WAL file with exprof's page size and no tables
    yet (a store another exprof is creating right now)."""
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise ExprofError(f"{path}: cannot read the store: {exc.strerror}") from None
    if not header:
        return None
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise ExprofError(f"{path}: not an exprof store (not a SQLite database); refusing it")
    wal = header[18] == WAL_VERSION
    unused = wal and not Path(f"{path}-wal").exists()
    uri = f"file:{quote(str(path.absolute()))}?mode=ro" + ("&immutable=1" if unused else "")
    try:
        raw = sqlite3.connect(uri, uri=True)
        try:
            found = _read(raw)
        finally:
            raw.close()
    except sqlite3.DatabaseError as exc:
        raise ExprofError(f"{path}: not an exprof store ({exc}); refusing it") from None
    page_size = int.from_bytes(header[16:18], "big")
    if not found.tables:
        if wal and page_size == PAGE_SIZE:
            return None
        raise ExprofError(
            f"{path}: not an exprof store (an empty database of another program); refusing it"
        )
    return found


def _read(raw: sqlite3.Connection) -> Found:
    tables = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    revision = None
    if "alembic_version" in tables:
        row = raw.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = str(row[0]) if row else None
    columns = []
    if "events" in tables:
        columns = [r[1] for r in raw.execute("PRAGMA table_info(events)")]
    return Found(tables, revision, columns)


def refuse_foreign(location: str, found: Found) -> None:
    """Raise unless the database holds exprof's store (at any revision) or nothing."""
    if not found.tables:
        return
    ours = (
        found.tables <= set(STORE_TABLES)
        and found.revision is not None
        and "events" in found.tables
        and EVENT_COLUMNS <= found.event_columns
    )
    if not ours:
        shown = ", ".join(sorted(found.tables)[:5])
        raise ExprofError(
            f"{location}: not an exprof store (its tables: {shown}); refusing to touch it"
        )
