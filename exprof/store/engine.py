"""The event store: an append-only events table (SQLite or PostgreSQL), its schema,
and the store's writes (its lease and worker methods call leases.py and workers.py).

Appends go through one method that assigns ids and per-run sequence numbers inside a
`BEGIN IMMEDIATE` transaction and updates the projections in that same transaction,
so the projections can never disagree with the events they claim to have applied.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from exprof import hints
from exprof.errors import ConcurrencyError, ExprofError, StoreWriteError
from exprof.jsonio import encode
from exprof.store import dialects, identify, leases, projections, workers
from exprof.store.dialects import execute, stream
from exprof.store.events import (
    STORED_COLUMNS,
    Event,
    StoredEvent,
    chain_link,
    stored_from_row,
    type_names,
)
from exprof.store.leases import HELD, Lease
from exprof.store.queries import Queries

# The newest migration this code knows. tests/test_store.py checks it against alembic's
# head, so an open store at head is recognised without importing alembic (~0.4 s).
SCHEMA_HEAD = "0007"
EVENT_COLUMNS = ("id", "run_id", "seq", "type", "payload", "created_at", "hash")
APPEND_SLICE = 6000  # events per executemany inside one append
APPEND_SLICE_BYTES = 4_000_000


def store_url(db: str | None, output_dir: str | Path) -> str:
    """`--db` accepts a SQLAlchemy URL or a plain path; the default lives in the output dir."""
    if db and "://" in db:
        return dialects.normalize_url(db)
    path = Path(db) if db else Path(output_dir) / "exprof.db"
    return f"sqlite:///{path.absolute()}"


# The store files this process has opened (device, inode): see Store.open.
_OPENED_FILES: set[tuple[int, int]] = set()


def _file_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _sqlite_path(url: str) -> Path | None:
    parsed = dialects.parse(url)
    if parsed is None or parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


class Store(Queries):
    """An exprof event store. `Store.open` checks, creates or upgrades the schema."""

    def __init__(self, engine: Engine, location: str, secrets: Sequence[str] = ()) -> None:
        super().__init__(engine, location)
        self.secrets = tuple(secrets)  # the URL's credentials: masked in every message

    @classmethod
    def open(cls, url: str, create: bool = False, readonly: bool = False) -> Store:
        """Open a store. Only `create` (run, db upgrade) may create or migrate one;
        `readonly` (the commands that only read) never writes to the database at all.
        A database that is not exprof's is refused, never touched: a SQLite file is
        read through a read-only handle first (identify.py)."""
        path = _sqlite_path(url)
        location = dialects.masked(url) if path is None or "?" in url else str(path)
        found: identify.Found | None = None
        # A file this process has opened as its store already is not read again by hand:
        # closing any descriptor of a SQLite file drops every POSIX lock this process
        # holds on it, under the feet of the connections still open (SQLite's own
        # warning), and another process may then checkpoint the WAL away from them.
        known = path is not None and path.exists() and _file_key(path) in _OPENED_FILES
        if path is not None:
            if path.is_dir():
                raise ExprofError(f"{path}: store path is a directory, not a database file")
            if known:
                pass  # identified when first opened: its catalogue is read below instead
            elif path.exists():
                found = identify.peek_sqlite(path)
                if found is not None:
                    identify.refuse_foreign(location, found)
            elif not create:
                raise ExprofError(f"{path}: no exprof store here (run `exprof run` first)")
            else:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ExprofError(f"{path}: cannot create store: {exc.strerror}") from None
        engine = dialects.create(url, location, readonly)
        store = cls(engine, location, dialects.secrets(url))
        try:
            store._ensure_schema(create, found, peeked=path is not None and not known)
        except OperationalError as exc:
            raise ExprofError(f"{location}: cannot open store: {store._reason(exc)}") from None
        except DBAPIError as exc:
            raise ExprofError(f"{location}: not an exprof store: {store._reason(exc)}") from None
        if not readonly:
            store._require_writable()
        if path is not None:
            _OPENED_FILES.add(_file_key(path))
        return store

    def _require_writable(self) -> None:
        """A command that writes is refused before it starts when the login may not
        write every table it would: never half a run recorded, and no traceback."""
        with self.engine.connect() as conn:
            denied = dialects.unwritable(conn)
        if denied:
            raise ExprofError(
                f"{self.location}: this login may not write to the store (no write "
                f"privilege on {', '.join(denied)}); reading commands (runs, summarize, "
                "compare, export, report) work with it; run, resume, rescore, cancel, doctor "
                "and db upgrade need a login that may write"
            )

    def _ensure_schema(self, create: bool, found: identify.Found | None, peeked: bool) -> None:
        if not peeked:  # a server database (or a file known already): read, never written
            with self.engine.connect() as conn:
                tables = inspect(conn).get_table_names()
                columns = (
                    [c["name"] for c in inspect(conn).get_columns("events")]
                    if ("events" in tables)
                    else []
                )
            found = identify.Found(tables, self.revision(), columns)
            identify.refuse_foreign(self.location, found)
        revision = found.revision if found is not None else None
        if revision == SCHEMA_HEAD:
            return
        if not create:
            if revision is None:
                raise ExprofError(f"{self.location}: no exprof store here (run `exprof run` first)")
            _refuse_newer(self.location, revision)
            raise ExprofError(
                f"{self.location}: store schema is at revision {revision}, older than this "
                f"exprof's {SCHEMA_HEAD}; run `{hints.command('db', 'upgrade')}` first"
            )
        if revision is not None:
            _refuse_newer(self.location, revision)
        with self.engine.connect() as conn:
            dialects.enable_wal(conn)  # ours (or empty): now it may be switched
        upgrade(self.engine, self.location)
        with self.write() as conn:  # a migration may have emptied the projections
            projections.catch_up(conn)

    def file_path(self) -> Path | None:
        """The store's database file (SQLite), or None for a server database."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(str(url.database))
        return None

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def _reason(self, exc: DBAPIError) -> str:
        return _reason(exc, self.secrets)

    # -- appending -------------------------------------------------------------

    def append(
        self,
        run_id: str,
        events: Iterable[Event],
        after_seq: int | None,
        within: Connection | None = None,
        fenced: Lease | None = None,
    ) -> int:
        """Append `events` as seq after_seq+1.. of the run; return the new last seq.

        A clash with another writer's seq raises ConcurrencyError and leaves nothing
        behind: the events and the projection updates share one transaction. The events
        are consumed in slices, so a 100k-sample dataset snapshot is never held whole.
        With `after_seq` None the events go after the run's last, read under the write
        lock: how several workers of one run append without clashing. `within`: inside
        that write transaction instead of a new one. `fenced`: the worker appending,
        refused (ConcurrencyError) if it lost its place in the run (workers.fence): what
        guards a shared run's appends, as the seq clash guards a single writer's.
        """
        now = time.time()
        with self.write() if within is None else contextlib.nullcontext(within) as conn:
            if fenced is not None:
                leases.fence(conn, fenced)
            if after_seq is None:
                after_seq = _last_seq(conn, run_id)
            seq = after_seq
            last_id, applied = execute(
                conn,
                "SELECT (SELECT coalesce(max(id), 0) FROM events), "
                "(SELECT coalesce(max(last_event_id), 0) FROM projection_positions "
                "WHERE name = ?)",
                (projections.NAME,),
            ).one()
            if applied < last_id:  # events appended by an exprof without this projection
                projections.catch_up(conn, through=last_id)
            chain = _chain_head(conn, run_id, after_seq)
            rows: list[tuple[Any, ...]] = []
            stored: list[StoredEvent] = []
            size = 0
            for ev in events:
                last_id, seq = last_id + 1, seq + 1
                raw = encode(ev.to_payload())  # hashed as bytes, stored as text
                chain = chain_link(chain, ev.type, raw)
                text = raw.decode()
                rows.append((last_id, run_id, seq, ev.type, text, now, chain))
                stored.append(StoredEvent(last_id, run_id, seq, ev, now))
                size += len(text)
                if len(rows) >= APPEND_SLICE or size >= APPEND_SLICE_BYTES:
                    self._insert(conn, run_id, rows, stored)
                    rows, stored, size = [], [], 0
            self._insert(conn, run_id, rows, stored)
        return seq

    @staticmethod
    def _insert(
        conn: Connection, run_id: str, rows: list[tuple[Any, ...]], stored: list[StoredEvent]
    ) -> None:
        if not rows:
            return
        try:
            dialects.insert_rows(conn, "events", EVENT_COLUMNS, rows)
        except IntegrityError:
            raise ConcurrencyError(
                f"run {run_id}: another writer appended events concurrently; nothing was written"
            ) from None
        projections.apply(conn, stored)

    def write(self, serialize: bool = True) -> _WriteTransaction:
        """A write transaction; `serialize` False skips PostgreSQL's store-wide advisory
        lock (for claims, which rely on row locks instead). SQLite always locks."""
        return _WriteTransaction(self.engine, self.location, self.secrets, serialize)

    # -- reading ---------------------------------------------------------------

    def last_seq(self, run_id: str) -> int:
        with self.engine.connect() as conn:
            return _last_seq(conn, run_id)

    def events(
        self, run_id: str | None = None, types: Sequence[type[Event]] = (), batch: int = 1000
    ) -> Iterator[StoredEvent]:
        """Stream typed events in order, a batch at a time, so 100k-sample runs stay small;
        with `types`, only the events of those classes (not their subclasses)."""
        where: list[str] = []
        params: list[Any] = []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if types:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(type_names(types))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "seq" if run_id is not None else "id"
        with self.engine.connect() as conn:
            result = stream(
                conn,
                f"SELECT {STORED_COLUMNS} FROM events {clause} ORDER BY {order}",
                tuple(params),
            )
            while rows := result.fetchmany(batch):
                for row in rows:
                    yield stored_from_row(row)

    def event_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())

    # -- leases and workers --------------------------------------------------

    def acquire_lease(self, run_id: str) -> Lease:
        """Hold the run for this process, taking over a dead holder's lease."""
        with self.write() as conn:
            return leases.acquire(conn, run_id)

    def acquire_new_run(
        self,
        experiment_id: str,
        run_id: str | None = None,
        name: Callable[[int], str] | None = None,
    ) -> Lease:
        """Choose a new run's id and hold it, in one write transaction, so that any number
        of simultaneous starts of one experiment each get their own id: `name(1)`,
        `name(2)`, ... (by default the experiment id, then -2, -3, ...). With `run_id`,
        that id or an error saying why not."""
        with self.write() as conn:
            return leases.acquire_new_run(conn, experiment_id, run_id, name)

    def heartbeat(self, lease: Lease) -> None:
        """Beat; raises ConcurrencyError if the worker lost its place in the run."""
        with self.write() as conn:
            if not leases.beat(conn, lease, time.time()):
                leases.fence(conn, lease)  # no row left to beat: say why

    def release_lease(self, lease: Lease) -> None:
        with self.write() as conn:
            leases.forget(conn, lease.run_id, lease.token)
        HELD.discard(lease.token)

    def lease(self, run_id: str) -> Lease | None:
        """The run's holder (or a joined worker), if it is still alive."""
        with self.engine.connect() as conn:
            return leases.anyone_on(conn, run_id)

    def join_run(self, run_id: str) -> Lease:
        """Register this process as one more worker of the run."""
        with self.write() as conn:
            mine = workers.join(conn, run_id)
        HELD.add(mine.token)
        return mine

    def claim(
        self, lease: Lease, owed: tuple[str, ...], limit: int, after: int = -1
    ) -> list[tuple[int, str, int]]:
        """Take up to `limit` owed (sample, repeat) pairs above slot `after` that no live
        worker holds (workers.claim): (slot, dialogue_id, repeat) of each, in slot order."""
        # On SQLite every write transaction holds the write lock (BEGIN IMMEDIATE); on
        # PostgreSQL claims skip the store-wide lock: SKIP LOCKED and the key suffice.
        with self.write(serialize=False) as conn:
            return workers.claim(conn, lease, owed, limit, after)

    def finish_if_done(
        self, lease: Lease, finished: Callable[[dict[str, int]], Event]
    ) -> tuple[int | None, dict[str, int], bool]:
        """Leave the run; if no sample is still owed, no other live worker holds a claim
        and the run is not finished yet, append `finished(status counts)` in the same
        transaction, so exactly one worker finishes it (and exports it). Returns (samples
        still unanswered, or None once finished; the samples' status counts; whether this
        call finished it)."""
        with self.write() as conn:
            owed, counts, last = workers.leave_if_done(conn, lease)
            if last:
                self.append(lease.run_id, [finished(counts)], None, within=conn)
        return owed, counts, last

    def leave_to_others(self, lease: Lease) -> int:
        """If other live workers remain on the run, leave it to them (workers.py);
        returns how many others remain (0: none, and this worker stays)."""
        with self.write() as conn:
            others = workers.leave_to_others(conn, lease)
        if others:
            HELD.discard(lease.token)
        return others


def _last_seq(conn: Connection, run_id: str) -> int:
    return int(
        execute(
            conn, "SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ?", (run_id,)
        ).scalar_one()
    )


def _chain_head(conn: Connection, run_id: str, seq: int) -> str:
    """The hash of the run's event `seq` (empty before the first, or an unchained one)."""
    if seq == 0:
        return ""
    found = execute(
        conn, "SELECT hash FROM events WHERE run_id = ? AND seq = ?", (run_id, seq)
    ).scalar()
    return found or ""


class _WriteTransaction:
    """`with store.write() as conn:` runs one BEGIN IMMEDIATE transaction."""

    def __init__(
        self, engine: Engine, location: str, secrets: Sequence[str] = (), serialize: bool = True
    ) -> None:
        self.engine = engine
        self.location = location
        self.secrets = secrets
        self.serialize = serialize

    def __enter__(self) -> Connection:
        self.conn = self.engine.connect().execution_options(immediate=True)
        try:
            self.tx = self.conn.begin()
            if self.serialize:
                dialects.lock_writers(self.conn)
        except OperationalError as exc:
            self.conn.close()
            raise ExprofError(
                f"{self.location}: store is busy or unwritable: {_reason(exc, self.secrets)}"
            ) from None
        except BaseException:  # never leave a connection holding the write lock
            self.conn.close()
            raise
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.tx.commit()
            else:
                self.tx.rollback()
        except OperationalError as failed:  # e.g. a full disk at commit
            raise StoreWriteError(
                f"{self.location}: cannot write to the store: {_reason(failed, self.secrets)}"
            ) from None
        finally:
            self.conn.close()
        if isinstance(exc, OperationalError):  # read-only file, disk I/O error, ...
            raise StoreWriteError(
                f"{self.location}: cannot write to the store: {_reason(exc, self.secrets)}"
            ) from None


def upgrade(engine: Engine, location: str) -> None:
    """Run the alembic migrations up to head, holding the store's write lock, so that
    several processes creating one fresh store at once migrate it exactly once; refuse
    a store from a newer exprof."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        with conn.begin():
            dialects.lock_writers(conn)
            current = None
            if inspect(conn).has_table("alembic_version"):
                current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            if current == SCHEMA_HEAD:
                return  # another process migrated it while we waited for the lock
            if current is not None:
                _refuse_newer(location, current)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def _refuse_newer(location: str, revision: str) -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    try:
        ScriptDirectory.from_config(cfg).get_revision(revision)
    except Exception:
        raise ExprofError(
            f"{location}: store has schema revision {revision!r}, made by a newer exprof; "
            "upgrade exprof"
        ) from None


def migrations_dir() -> Path:
    """The alembic scripts: the checkout's own migrations/ next to this package when run
    from source (an editable install may map exprof.migrations to another checkout),
    else the copy packaged in the wheel as exprof.migrations (pyproject.toml)."""
    source = Path(__file__).resolve().parents[2] / "migrations"
    if (source / "env.py").is_file():
        return source
    import exprof.migrations

    return Path(exprof.migrations.__file__).parent


def _reason(exc: DBAPIError, secrets: Sequence[str] = ()) -> str:
    """The driver's own message, without the URL's credentials should it quote them."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return dialects.scrub(" ".join(text.split()), secrets)  # one line, as errors are
