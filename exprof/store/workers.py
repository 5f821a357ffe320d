"""Several workers on one run: joining it, claiming its samples in chunks, finishing it once.

The run's first worker holds the row in `leases`; every `resume --join` adds a row to
`workers`, and so does the first worker at its first claim. A worker takes pending
(sample, repeat) pairs by writing `claims` rows in the transaction that chooses them, so
a claim survives the worker's crash. Claims of a worker that is no longer alive
(leases.py: a dead pid on this host, or a stale heartbeat on any host) are deleted by
the next claim, found through that worker's row, and their samples taken over.

The claims table's primary key is the guard on both dialects: a claim insert that loses
a race inserts nothing. On PostgreSQL the candidates are also locked with `FOR UPDATE
SKIP LOCKED`, so concurrent claimers pass over each other's rows instead of queueing for
the store's write lock; on SQLite the claim holds the write lock (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from exprof.store import dialects
from exprof.store.dialects import execute
from exprof.store.events import Event
from exprof.store.leases import HELD, Lease, process_started

if TYPE_CHECKING:
    from exprof.store.engine import _WriteTransaction

LEASE_COLUMNS = "run_id, token, pid, host, acquired_at, heartbeat_at, started"


def live_workers(conn: Connection, run_id: str) -> list[Lease]:
    """The joined workers of the run that are still alive."""
    rows = execute(conn, f"SELECT {LEASE_COLUMNS} FROM workers WHERE run_id = ?", (run_id,))
    return [lease for lease in (Lease(*row) for row in rows.all()) if lease.is_alive()]


def live_tokens(conn: Connection, run_id: str) -> set[str]:
    """Tokens of every live worker of the run: its lease holder and the joined ones."""
    rows = execute(conn, f"SELECT {LEASE_COLUMNS} FROM leases WHERE run_id = ?", (run_id,))
    holders = [lease for lease in (Lease(*row) for row in rows.all()) if lease.is_alive()]
    return {lease.token for lease in holders + live_workers(conn, run_id)}


def register(conn: Connection, lease: Lease) -> None:
    """Give a claimer its row in `workers` (the run's lease holder has none until its
    first claim), so that every token holding claims is found there: the claims of dead
    workers are then found through their few rows, never by scanning the run's claims."""
    execute(
        conn,
        f"INSERT INTO workers ({LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (
            lease.run_id,
            lease.token,
            lease.pid,
            lease.host,
            lease.acquired_at,
            time.time(),  # beating now; the lease's own beat may be older than a claim
            lease.started,
        ),
    )


def drop_dead(conn: Connection, mine: Lease) -> None:
    """Delete the claims and rows of the run's other workers that are no longer alive,
    so that their unanswered samples can be claimed again."""
    rows = execute(conn, f"SELECT {LEASE_COLUMNS} FROM workers WHERE run_id = ?", (mine.run_id,))
    for lease in (Lease(*row) for row in rows.all()):
        if lease.token != mine.token and not lease.is_alive():
            forget(conn, mine.run_id, lease.token)


def forget(conn: Connection, run_id: str, token: str) -> None:
    """A worker leaves: its row and its claims go, so its unanswered samples are free."""
    execute(conn, "DELETE FROM workers WHERE run_id = ? AND token = ?", (run_id, token))
    execute(conn, "DELETE FROM claims WHERE run_id = ? AND token = ?", (run_id, token))


def beat(conn: Connection, lease: Lease, now: float) -> None:
    execute(
        conn,
        "UPDATE workers SET heartbeat_at = ? WHERE run_id = ? AND token = ?",
        (now, lease.run_id, lease.token),
    )


class Workers:
    """Store methods for shared runs (mixed into Store, whose write lock they use)."""

    if TYPE_CHECKING:  # Store's, which this mixes into

        def write(self, serialize: bool = True) -> _WriteTransaction: ...

        def append(
            self,
            run_id: str,
            events: Iterable[Event],
            after_seq: int | None,
            within: Connection | None = None,
        ) -> int: ...

    def join_run(self, run_id: str) -> Lease:
        """Register this process as one more worker of the run."""
        now = time.time()
        pid = os.getpid()
        mine = Lease(
            run_id, uuid.uuid4().hex, pid, socket.gethostname(), now, now, process_started(pid)
        )
        with self.write() as conn:
            register(conn, mine)
        HELD.add(mine.token)
        return mine

    def claim(
        self, lease: Lease, owed: tuple[str, ...], limit: int, after: int = -1
    ) -> list[tuple[int, str, int]]:
        """Take up to `limit` owed (sample, repeat) pairs above slot `after` (the samples
        projection's idx: position * repeats + repeat) that no live worker holds,
        recording the claims in the same transaction. Returns (slot, dialogue_id, repeat)
        of each pair taken, in slot order."""
        run_id = lease.run_id
        # On SQLite every write transaction holds the write lock (BEGIN IMMEDIATE); on
        # PostgreSQL claims skip the store-wide lock: SKIP LOCKED and the key suffice.
        with self.write(serialize=False) as conn:
            register(conn, lease)
            drop_dead(conn, lease)
            repeats = int(
                execute(conn, "SELECT repeats FROM runs WHERE run_id = ?", (run_id,)).scalar_one()
            )
            statuses = ", ".join("?" * len(owed))
            rows = execute(
                conn,
                "SELECT idx, dialogue_id, repeat FROM samples s WHERE run_id = ? AND idx > ? "
                f"AND status IN ({statuses}) AND NOT EXISTS (SELECT 1 FROM claims c "
                "WHERE c.run_id = s.run_id AND c.position = (s.idx - s.repeat) / ? "
                "AND c.repeat = s.repeat) ORDER BY idx LIMIT ?" + dialects.skip_locked(conn),
                (run_id, after, *owed, repeats, limit),
            ).all()
            if not rows:
                return []
            now = time.time()
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(rows))
            params = [
                p
                for slot, _, repeat in rows
                for p in (run_id, int(slot) // repeats, int(repeat), lease.token, now)
            ]
            taken = execute(
                conn,
                f"INSERT INTO claims (run_id, position, repeat, token, claimed_at) "
                f"VALUES {values} ON CONFLICT DO NOTHING RETURNING position, repeat",
                tuple(params),
            ).all()
        won = {(int(position), int(repeat)) for position, repeat in taken}
        return [
            (int(slot), str(dialogue_id), int(repeat))
            for slot, dialogue_id, repeat in rows
            if (int(slot) // repeats, int(repeat)) in won
        ]

    def finish_if_done(
        self, lease: Lease, finished: Callable[[dict[str, int]], Event]
    ) -> tuple[int | None, dict[str, int]]:
        """Leave the run; if no sample is still owed and no other live worker holds a
        claim, append `finished(status counts)` in the same transaction, so exactly one
        worker finishes it. Returns (samples still unanswered, or None once finished;
        the samples' status counts)."""
        run_id = lease.run_id
        with self.write() as conn:
            forget(conn, run_id, lease.token)
            others = live_tokens(conn, run_id) - {lease.token}
            held = {
                token
                for token in others
                if execute(
                    conn,
                    "SELECT 1 FROM claims WHERE run_id = ? AND token = ? LIMIT 1",
                    (run_id, token),
                ).first()
            }
            counts = {
                str(status): int(n)
                for status, n in execute(
                    conn,
                    "SELECT status, count(*) FROM samples WHERE run_id = ? GROUP BY status",
                    (run_id,),
                ).all()
            }
            if counts.get("pending", 0) or held:
                return counts.get("pending", 0), counts
            self.append(run_id, [finished(counts)], None, within=conn)
        return None, counts
