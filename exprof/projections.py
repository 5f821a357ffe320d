"""Projections: per-run and per-sample state derived from the events.

`apply` is the only code that writes projection rows. It is called in the same
transaction as the append it derives from, and records the last event id it applied
in `projection_positions`; `rebuild` drops the rows and replays every event through
the same `apply`, so the incremental and rebuilt states are equal by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from exprof.jsonio import loads

if TYPE_CHECKING:
    from exprof.store import StoredEvent

NAME = "runs_and_samples"
TABLES = ("runs", "samples")
CATCH_UP_BATCH = 5000

_RUN_STATUS = {
    "run_started": "running",
    "run_resumed": "running",
    "run_interrupted": "interrupted",
}


def position(conn: Connection) -> int:
    pos = conn.exec_driver_sql(
        "SELECT last_event_id FROM projection_positions WHERE name = ?", (NAME,)
    ).scalar()
    return pos or 0


def catch_up(conn: Connection, through: int | None = None) -> int:
    """Apply, in batches, the events after our position; return the new position."""
    from exprof.store import StoredEvent

    pos = position(conn)
    while through is None or pos < through:
        rows = conn.exec_driver_sql(
            "SELECT id, run_id, seq, type, payload, created_at FROM events "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (pos, CATCH_UP_BATCH),
        ).fetchall()
        if not rows:
            break
        batch = [StoredEvent(r[0], r[1], r[2], r[3], loads(r[4]), r[5]) for r in rows]
        apply(conn, batch)
        pos = batch[-1].id
    return pos


def rebuild(conn: Connection) -> None:
    for table in TABLES:
        conn.exec_driver_sql(f"DELETE FROM {table}")
    conn.exec_driver_sql("DELETE FROM projection_positions WHERE name = ?", (NAME,))
    catch_up(conn)


def apply(conn: Connection, events: Sequence[StoredEvent]) -> None:
    """Fold a batch of events (in id order) into the projection rows."""
    # Each statement's rows are gathered into one executemany. That is order-safe:
    # sample rows are inserted before any update runs, the per-sample updates touch
    # disjoint columns (a failure never overwrites an 'ok'), and the run-status rows
    # keep their event order within their own list.
    updates: dict[str, list[tuple[Any, ...]]] = {}
    for ev in events:
        handler = _HANDLERS.get(ev.type)
        if handler is None:
            continue
        sql, rows = handler(conn, ev)
        if sql is not None:
            updates.setdefault(sql, []).extend(rows)
    for sql in sorted(updates, key=lambda sql: not sql.startswith("INSERT")):
        conn.exec_driver_sql(sql, updates[sql])
    if events:
        last = events[-1]
        conn.exec_driver_sql(
            "INSERT INTO projection_positions (name, last_event_id) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET last_event_id = excluded.last_event_id",
            (NAME, last.id),
        )
        _touch_runs(conn, events)


def _touch_runs(conn: Connection, events: Iterable[StoredEvent]) -> None:
    last_by_run: dict[str, StoredEvent] = {}
    for ev in events:
        last_by_run[ev.run_id] = ev
    conn.exec_driver_sql(
        "UPDATE runs SET last_event_id = ?, updated_at = ? WHERE run_id = ?",
        [(ev.id, ev.created_at, run) for run, ev in last_by_run.items()],
    )


Handler = Any


def _run_started(conn: Connection, ev: StoredEvent) -> tuple[str | None, list[tuple[Any, ...]]]:
    p = ev.payload
    conn.exec_driver_sql(
        "INSERT INTO runs (run_id, experiment_id, model, mode, status, samples_total, "
        "created_at, updated_at, last_event_id) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
        (
            ev.run_id,
            p["experiment_id"],
            p["config"]["model"],
            p["mode"],
            p["samples_total"],
            ev.created_at,
            ev.created_at,
            ev.id,
        ),
    )
    return None, []


def _run_status(conn: Connection, ev: StoredEvent) -> tuple[str | None, list[tuple[Any, ...]]]:
    if ev.type == "run_finished":
        status = "complete" if ev.payload["failed"] == 0 else "failed"
    else:
        status = _RUN_STATUS[ev.type]
    return "UPDATE runs SET status = ? WHERE run_id = ?", [(status, ev.run_id)]


def _dataset_chunk(_conn: Connection, ev: StoredEvent) -> tuple[str, list[tuple[Any, ...]]]:
    start = ev.payload["start"]
    return (
        "INSERT INTO samples (run_id, dialogue_id, idx, status, requests) "
        "VALUES (?, ?, ?, 'pending', 0)",
        [(ev.run_id, s["dialogue_id"], start + i) for i, s in enumerate(ev.payload["samples"])],
    )


def _request_sent(_conn: Connection, ev: StoredEvent) -> tuple[str, list[tuple[Any, ...]]]:
    return (
        "UPDATE samples SET requests = requests + 1 WHERE run_id = ? AND dialogue_id = ?",
        [(ev.run_id, ev.payload["dialogue_id"])],
    )


def _response_received(_conn: Connection, ev: StoredEvent) -> tuple[str, list[tuple[Any, ...]]]:
    meta = ev.payload["metadata"]
    output_tokens = meta.get("output_tokens", meta.get("token_count"))
    return (
        "UPDATE samples SET status = 'ok', input_tokens = ?, output_tokens = ?, "
        "latency_ms = ?, attempts = ?, response_event_id = ?, error_class = NULL "
        "WHERE run_id = ? AND dialogue_id = ?",
        [
            (
                _int_or_none(meta.get("input_tokens")),
                _int_or_none(output_tokens),
                meta.get("latency_ms") if isinstance(meta.get("latency_ms"), int | float) else None,
                _int_or_none(meta.get("attempts")),
                ev.id,
                ev.run_id,
                ev.payload["dialogue_id"],
            )
        ],
    )


def _sample_failed(_conn: Connection, ev: StoredEvent) -> tuple[str, list[tuple[Any, ...]]]:
    return (
        "UPDATE samples SET status = 'failed', error_class = ?, attempts = ? "
        "WHERE run_id = ? AND dialogue_id = ? AND status != 'ok'",
        [
            (
                ev.payload["error_class"],
                ev.payload["attempts"],
                ev.run_id,
                ev.payload["dialogue_id"],
            )
        ],
    )


def _sample_scored(_conn: Connection, ev: StoredEvent) -> tuple[str, list[tuple[Any, ...]]]:
    return (
        "UPDATE samples SET fact_coverage = ?, refused = ? WHERE run_id = ? AND dialogue_id = ?",
        [
            (
                ev.payload["fact_coverage"],
                int(ev.payload["refused"]),
                ev.run_id,
                ev.payload["dialogue_id"],
            )
        ],
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_HANDLERS: dict[str, Handler] = {
    "run_started": _run_started,
    "run_resumed": _run_status,
    "run_interrupted": _run_status,
    "run_finished": _run_status,
    "dataset_chunk": _dataset_chunk,
    "request_sent": _request_sent,
    "response_received": _response_received,
    "sample_failed": _sample_failed,
    "sample_scored": _sample_scored,
}
