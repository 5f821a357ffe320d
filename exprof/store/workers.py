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

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.engine import Connection

from exprof.errors import ConcurrencyError
from exprof.store import dialects
from exprof.store.dialects import execute
from exprof.store.events import Event
from exprof.store.leases import HELD, LEASE_COLUMNS, Lease

if TYPE_CHECKING:  # the methods below are Store's (this mixes into it)
    from exprof.store.engine import Store

# Claims inserted per statement: 5 bound values each, well under SQLite's 32,766
# variables (and PostgreSQL's 65,535) whatever --concurrency asks for.
CLAIM_ROWS_PER_INSERT = 1000


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


def _has_row(conn: Connection, table: str, lease: Lease) -> bool:
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
    if not (_has_row(conn, "leases", lease) or _has_row(conn, "workers", lease)):
        raise ConcurrencyError(
            f"run {lease.run_id}: this worker lost its place in the run (its heartbeat "
            "went stale and another worker took its samples over); it stopped, and "
            "nothing more of it was recorded"
        )


def register(conn: Connection, lease: Lease) -> None:
    """Give a claimer its row in `workers` (the run's lease holder has none until its
    first claim), so that every token holding claims is found there: the claims of dead
    workers are then found through their few rows, never by scanning the run's claims.
    Only a first registration: a token whose rows were removed (it looked dead) is
    refused, never given a row again."""
    if _has_row(conn, "workers", lease):
        return
    fence(conn, lease)  # the lease holder's first claim: its lease row must still be there
    # Beating now: the lease's own heartbeat may be older.
    add_row(conn, "workers", dataclasses.replace(lease, heartbeat_at=time.time()))


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


class Workers:
    """Store methods for shared runs (mixed into Store, whose write lock they use).
    Each casts itself to Store, so that its calls are checked against Store's own
    signatures (no copy of them here to go stale)."""

    def join_run(self, run_id: str) -> Lease:
        """Register this process as one more worker of the run."""
        mine = Lease.mine(run_id)
        with cast("Store", self).write() as conn:
            add_row(conn, "workers", mine)
        HELD.add(mine.token)
        return mine

    def claim(
        self, lease: Lease, owed: tuple[str, ...], limit: int, after: int = -1
    ) -> list[tuple[int, str, int]]:
        """Take up to `limit` owed (sample, repeat) pairs above slot `after` (the samples
        projection's idx: position * repeats + repeat) that no live worker holds,
        recording the claims in the same transaction. Returns (slot, dialogue_id, repeat)
        of each pair taken, in slot order. Raises ConcurrencyError for a worker whose
        rows were removed (see fence)."""
        run_id = lease.run_id
        # On SQLite every write transaction holds the write lock (BEGIN IMMEDIATE); on
        # PostgreSQL claims skip the store-wide lock: SKIP LOCKED and the key suffice.
        with cast("Store", self).write(serialize=False) as conn:
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
            taken: list[Any] = []
            for start in range(0, len(rows), CLAIM_ROWS_PER_INSERT):
                part = rows[start : start + CLAIM_ROWS_PER_INSERT]
                values = ", ".join(["(?, ?, ?, ?, ?)"] * len(part))
                params = [
                    p
                    for slot, _, repeat in part
                    for p in (run_id, int(slot) // repeats, int(repeat), lease.token, now)
                ]
                taken += execute(
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
    ) -> tuple[int | None, dict[str, int], bool]:
        """Leave the run; if no sample is still owed, no other live worker holds a claim
        and the run is not finished yet, append `finished(status counts)` in the same
        transaction, so exactly one worker finishes it (and exports it). Returns (samples
        still unanswered, or None once finished; the samples' status counts; whether this
        call finished it)."""
        run_id = lease.run_id
        with cast("Store", self).write() as conn:
            fence(conn, lease)  # a worker that lost its place finishes nothing
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
                return counts.get("pending", 0), counts, False
            status = execute(
                conn, "SELECT status FROM runs WHERE run_id = ?", (run_id,)
            ).scalar_one()
            if status in ("complete", "failed"):  # another worker finished it
                return None, counts, False
            cast("Store", self).append(run_id, [finished(counts)], None, within=conn)
        return None, counts, True

    def leave_to_others(self, lease: Lease) -> int:
        """If other live workers remain on the run, leave it to them: this worker's row
        and claims go (its unanswered samples are theirs to claim). Returns how many
        others remain (0: none, and this worker stays, to record the stop itself)."""
        with cast("Store", self).write() as conn:
            others = live_tokens(conn, lease.run_id) - {lease.token}
            if others:
                forget(conn, lease.run_id, lease.token)
        if others:
            HELD.discard(lease.token)
        return len(others)
