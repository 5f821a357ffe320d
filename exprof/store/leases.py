"""Who works on a run: its holder's row in `leases` and each joined worker's in
`workers` (one shape), each naming a process on a host, and the SQL that reads and
writes them.

A pid alone does not name a process: pids are reused (PID 1 in every restarted
container). So a lease also records its process's start time, and a holder is alive
only while a process with that pid *and* that start time runs, and only while it
keeps its heartbeat fresh. Across hosts only the heartbeat can tell.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from exprof import hints
from exprof.errors import ConcurrencyError, ExprofError, LeaseHeldError
from exprof.store.dialects import execute

STALE_LEASE_S = 120.0
# The columns of `leases` and of `workers` (one shape: a worker row is a lease), in
# Lease's field order.
LEASE_COLUMNS = "run_id, token, pid, host, acquired_at, heartbeat_at, started"
# Tokens of the leases this process holds: a lease naming our own pid is ours only if
# its token is here; otherwise an earlier process with our pid left it behind.
HELD: set[str] = set()


@dataclass(frozen=True)
class Lease:
    run_id: str
    token: str
    pid: int
    host: str
    acquired_at: float
    heartbeat_at: float
    started: str | None = None  # the holder's start time, from /proc (None: unknown)

    @classmethod
    def mine(cls, run_id: str) -> Lease:
        """A new lease on the run naming this process, with a fresh token."""
        now = time.time()
        pid = os.getpid()
        return cls(
            run_id, uuid.uuid4().hex, pid, socket.gethostname(), now, now, process_started(pid)
        )

    def row(self) -> tuple[object, ...]:
        """The values of LEASE_COLUMNS."""
        return (
            self.run_id,
            self.token,
            self.pid,
            self.host,
            self.acquired_at,
            self.heartbeat_at,
            self.started,
        )

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        return f"pid {self.pid} on {self.host} since {since}"

    def is_alive(self) -> bool:
        if time.time() - self.heartbeat_at >= STALE_LEASE_S:
            return False  # a holder that stopped beating holds nothing, on any host
        if self.host != socket.gethostname():
            return True
        if self.pid == os.getpid():
            return self.token in HELD
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = process_started(self.pid)
        if self.started is not None and started is not None and started != self.started:
            return False  # the pid now names another process
        return _pid_is_running(self.pid)


def process_started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat),
    which together with the pid names one process; None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _pid_is_running(pid: int) -> bool:
    """A zombie (killed but not yet reaped) still answers kill(0); it holds nothing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def rows_of(conn: Connection, table: str, run_id: str) -> list[Lease]:
    """The run's rows in `leases` (its holder: one at most) or `workers`, alive or not."""
    rows = execute(conn, f"SELECT {LEASE_COLUMNS} FROM {table} WHERE run_id = ?", (run_id,))
    return [Lease(*row) for row in rows.all()]


def add_row(conn: Connection, table: str, lease: Lease) -> None:
    """A lease holder's row in `leases`, or a worker's in `workers` (one shape)."""
    execute(
        conn, f"INSERT INTO {table} ({LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", lease.row()
    )


def live_holder(conn: Connection, run_id: str) -> Lease | None:
    """The run's lease holder, if it is still alive."""
    return next((lease for lease in rows_of(conn, "leases", run_id) if lease.is_alive()), None)


def live_workers(conn: Connection, run_id: str) -> list[Lease]:
    """The joined workers of the run that are still alive."""
    return [lease for lease in rows_of(conn, "workers", run_id) if lease.is_alive()]


def anyone_on(conn: Connection, run_id: str) -> Lease | None:
    """A live process working on the run: its lease holder, else a joined worker."""
    return live_holder(conn, run_id) or next(iter(live_workers(conn, run_id)), None)


def live_tokens(conn: Connection, run_id: str) -> set[str]:
    """Tokens of every live worker of the run: its lease holder and the joined ones."""
    holder = live_holder(conn, run_id)
    return {lease.token for lease in ([holder] if holder else []) + live_workers(conn, run_id)}


def has_row(conn: Connection, table: str, lease: Lease) -> bool:
    """Whether the worker still has its row in `leases` or `workers` (`table`)."""
    found = execute(
        conn,
        f"SELECT 1 FROM {table} WHERE run_id = ? AND token = ?",
        (lease.run_id, lease.token),
    ).first()
    return found is not None


def fence(conn: Connection, lease: Lease) -> None:
    """Refuse a write by a worker that lost its place in the run: its lease or worker
    row was removed because it looked dead (stale heartbeat) and another worker took
    its samples over. Called inside the write's transaction, so a late answer of such
    a worker is refused, never recorded beside the new owner's."""
    if not (has_row(conn, "leases", lease) or has_row(conn, "workers", lease)):
        raise ConcurrencyError(
            f"run {lease.run_id}: this worker lost its place in the run (its heartbeat "
            "went stale and another worker took its samples over); it stopped, and "
            "nothing more of it was recorded"
        )


def drop_dead(conn: Connection, mine: Lease) -> None:
    """Delete the claims and rows of the run's other workers that are no longer alive
    (and a dead holder's lease row), so that their unanswered samples can be claimed
    again and any late write of theirs is refused (fence)."""
    for table in ("workers", "leases"):
        for lease in rows_of(conn, table, mine.run_id):
            if lease.token != mine.token and not lease.is_alive():
                forget(conn, mine.run_id, lease.token)


def forget(conn: Connection, run_id: str, token: str) -> None:
    """A worker leaves: its rows and its claims go, so its unanswered samples are free."""
    for table in ("workers", "leases", "claims"):
        execute(conn, f"DELETE FROM {table} WHERE run_id = ? AND token = ?", (run_id, token))


def beat(conn: Connection, lease: Lease, now: float) -> int:
    """Refresh the worker's heartbeat in whichever rows it has; the number updated."""
    updated = 0
    for table in ("leases", "workers"):
        result = execute(
            conn,
            f"UPDATE {table} SET heartbeat_at = ? WHERE run_id = ? AND token = ?",
            (now, lease.run_id, lease.token),
        )
        updated += result.rowcount
    return updated


def acquire(conn: Connection, run_id: str) -> Lease:
    """Hold the run for this process, taking over a dead holder's lease."""
    held = anyone_on(conn, run_id)
    if held is not None:
        raise LeaseHeldError(
            f"run {run_id} is being worked on by {held.describe()}; "
            "wait for it to finish or stop that process "
            f"(or add a worker: {hints.command('resume', run_id, '--join')})"
        )
    mine = _insert_lease(conn, run_id)
    drop_dead(conn, mine)  # dead workers' rows: their late writes are refused
    return mine


def acquire_new_run(
    conn: Connection, experiment_id: str, run_id: str | None, name: Callable[[int], str] | None
) -> Lease:
    """A new run's id, held: `run_id` or an error saying why not; else the first free
    `name(n)` (by default the experiment id, then -2, -3, ...)."""
    if run_id is not None:
        if execute(conn, "SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).scalar():
            holder = live_holder(conn, run_id)
            if holder is not None:
                raise ExprofError(f"run {run_id!r} is being worked on by {holder.describe()}")
            raise ExprofError(
                f"run {run_id!r} already exists; continue it with "
                f"`{hints.command('resume', run_id)}` or choose another --run-id"
            )
        held = live_holder(conn, run_id)
        if held is not None:
            raise LeaseHeldError(f"run {run_id!r} is being worked on by {held.describe()}")
        return _insert_lease(conn, run_id)
    name = name or (lambda n: experiment_id if n == 1 else f"{experiment_id}-{n}")
    return _insert_lease(conn, _next_run_id(conn, experiment_id, name))


def _insert_lease(conn: Connection, run_id: str) -> Lease:
    mine = Lease.mine(run_id)
    execute(conn, "DELETE FROM leases WHERE run_id = ?", (run_id,))  # a dead holder's
    add_row(conn, "leases", mine)
    HELD.add(mine.token)
    return mine


def _next_run_id(conn: Connection, experiment_id: str, name: Callable[[int], str]) -> str:
    """The first name(n) not taken by a run or by a live start in progress."""
    pattern = (experiment_id, like_prefix(experiment_id) + "-%")
    where = "WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\'"
    taken = {r[0] for r in execute(conn, f"SELECT run_id FROM runs {where}", pattern)}
    for row in execute(conn, f"SELECT {LEASE_COLUMNS} FROM leases {where}", pattern).all():
        if Lease(*row).is_alive():
            taken.add(row[0])
    n = 1
    while True:  # ends: each step past the first skips one of the `taken` ids
        candidate = name(n)
        if (
            candidate not in taken
            and (candidate.startswith(experiment_id) or not _id_taken(conn, candidate))
            and not _has_events(conn, candidate)  # e.g. a matrix experiment's record
        ):
            return candidate
        n += 1


def _has_events(conn: Connection, stream: str) -> bool:
    return bool(
        execute(conn, "SELECT 1 FROM events WHERE run_id = ? AND seq = 1", (stream,)).scalar()
    )


def _id_taken(conn: Connection, run_id: str) -> bool:
    """For a name cut short (a long experiment id), which the prefix query cannot see."""
    if execute(conn, "SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).scalar():
        return True
    return live_holder(conn, run_id) is not None


def like_prefix(text: str) -> str:
    """`text` for a LIKE pattern with ESCAPE '\\': its own % and _ match only themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
