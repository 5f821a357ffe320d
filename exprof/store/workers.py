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
from typing import Any

from sqlalchemy.engine import Connection

from exprof.store import dialects
from exprof.store.dialects import execute
from exprof.store.leases import Lease, add_row, drop_dead, fence, forget, has_row, live_tokens

# Claims inserted per statement: 5 bound values each, well under SQLite's 32,766
# variables (and PostgreSQL's 65,535) whatever --concurrency asks for.
CLAIM_ROWS_PER_INSERT = 1000


def join(conn: Connection, run_id: str) -> Lease:
    """A row in `workers` for this process: one more worker of the run."""
    mine = Lease.mine(run_id)
    add_row(conn, "workers", mine)
    return mine


def register(conn: Connection, lease: Lease) -> None:
    """Give a claimer its row in `workers` (the run's lease holder has none until its
    first claim), so that every token holding claims is found there: the claims of dead
    workers are then found through their few rows, never by scanning the run's claims.
    Only a first registration: a token whose rows were removed (it looked dead) is
    refused, never given a row again."""
    if has_row(conn, "workers", lease):
        return
    fence(conn, lease)  # the lease holder's first claim: its lease row must still be there
    # Beating now: the lease's own heartbeat may be older.
    add_row(conn, "workers", dataclasses.replace(lease, heartbeat_at=time.time()))


def claim(
    conn: Connection, lease: Lease, owed: tuple[str, ...], limit: int, after: int
) -> list[tuple[int, str, int]]:
    """Take up to `limit` owed (sample, repeat) pairs above slot `after` (the samples
    projection's idx: position * repeats + repeat) that no live worker holds,
    recording the claims in the same transaction. Returns (slot, dialogue_id, repeat)
    of each pair taken, in slot order. Raises ConcurrencyError for a worker whose
    rows were removed (see fence)."""
    run_id = lease.run_id
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


def leave_if_done(conn: Connection, lease: Lease) -> tuple[int | None, dict[str, int], bool]:
    """Leave the run, and say whether this worker is the one to finish it: no sample is
    still owed, no other live worker holds a claim and the run is not finished yet.
    Returns (samples still unanswered, or None; the samples' status counts; whether to
    finish it, in this transaction)."""
    run_id = lease.run_id
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
    status = execute(conn, "SELECT status FROM runs WHERE run_id = ?", (run_id,)).scalar_one()
    if status in ("complete", "failed"):  # another worker finished it
        return None, counts, False
    return None, counts, True


def leave_to_others(conn: Connection, lease: Lease) -> int:
    """If other live workers remain on the run, leave it to them: this worker's row
    and claims go (its unanswered samples are theirs to claim). Returns how many
    others remain (0: none, and this worker stays, to record the stop itself)."""
    others = live_tokens(conn, lease.run_id) - {lease.token}
    if others:
        forget(conn, lease.run_id, lease.token)
    return len(others)
