"""Projections: per-run and per-sample state derived from the events.

`apply` is the only code that writes projection rows. It is called in the same
transaction as the append it derives from, and records the last event id it applied
in `projection_positions`; `rebuild` drops the rows and replays every event through
the same `apply`, so the incremental and rebuilt states are equal by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from exprof.jsonio import loads
from exprof.store.events import StoredEvent

NAME = "runs_and_samples"
TABLES = ("runs", "samples")
CATCH_UP_BATCH = 5000


def position(conn: Connection) -> int:
    pos = conn.exec_driver_sql(
        "SELECT last_event_id FROM projection_positions WHERE name = ?", (NAME,)
    ).scalar()
    return pos or 0


def catch_up(conn: Connection, through: int | None = None) -> int:
    """Apply, in batches, the events after our position; return the new position."""
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
    """Fold a batch of events (in id order) into the projection rows.

    A sample's events in one batch (request, response, score) become one UPDATE, and
    rows of the same shape one executemany. That is order-safe: sample rows are inserted
    before any update, the merged updates touch disjoint columns, a failure never
    overwrites an 'ok', and run-status changes keep their event order.
    """
    new_samples: list[tuple[Any, ...]] = []
    changes: dict[tuple[str, str], dict[str, Any]] = {}
    failures: list[tuple[Any, ...]] = []
    statuses: list[tuple[str, str]] = []
    for ev in events:
        p = ev.payload
        if ev.type == "run_started":
            _insert_run(conn, ev)
        elif ev.type == "dataset_chunk":
            new_samples.extend(
                (ev.run_id, s["dialogue_id"], p["start"] + i) for i, s in enumerate(p["samples"])
            )
        elif ev.type in _SAMPLE_COLUMNS:
            cols = changes.setdefault((ev.run_id, p["dialogue_id"]), {})
            if ev.type == "request_sent":
                cols["requests"] = cols.get("requests", 0) + 1
            else:
                cols.update(_SAMPLE_COLUMNS[ev.type](ev))
        elif ev.type == "sample_failed":
            failures.append((p["error_class"], p["attempts"], ev.run_id, p["dialogue_id"]))
        elif ev.type in _RUN_STATUS:
            statuses.append((_RUN_STATUS[ev.type](p), ev.run_id))
    if new_samples:
        conn.exec_driver_sql(
            "INSERT INTO samples (run_id, dialogue_id, idx, status, requests) "
            "VALUES (?, ?, ?, 'pending', 0)",
            new_samples,
        )
    by_shape: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for (run_id, dialogue_id), cols in changes.items():
        by_shape.setdefault(tuple(cols), []).append((*cols.values(), run_id, dialogue_id))
    for shape, rows in by_shape.items():
        sets = ", ".join(
            "requests = requests + ?" if col == "requests" else f"{col} = ?" for col in shape
        )
        conn.exec_driver_sql(
            f"UPDATE samples SET {sets} WHERE run_id = ? AND dialogue_id = ?", rows
        )
    if failures:
        conn.exec_driver_sql(
            "UPDATE samples SET status = 'failed', error_class = ?, attempts = ? "
            "WHERE run_id = ? AND dialogue_id = ? AND status != 'ok'",
            failures,
        )
    if statuses:
        conn.exec_driver_sql("UPDATE runs SET status = ? WHERE run_id = ?", statuses)
    if events:
        conn.exec_driver_sql(
            "INSERT INTO projection_positions (name, last_event_id) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET last_event_id = excluded.last_event_id",
            (NAME, events[-1].id),
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


def _insert_run(conn: Connection, ev: StoredEvent) -> None:
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


def _response_columns(ev: StoredEvent) -> dict[str, Any]:
    meta = ev.payload["metadata"]
    latency = meta.get("latency_ms")
    return {
        "status": "ok",
        "input_tokens": _int_or_none(meta.get("input_tokens")),
        "output_tokens": _int_or_none(meta.get("output_tokens", meta.get("token_count"))),
        "latency_ms": latency if isinstance(latency, int | float) else None,
        "attempts": _int_or_none(meta.get("attempts")),
        "response_event_id": ev.id,
        "error_class": None,
    }


def _score_columns(ev: StoredEvent) -> dict[str, Any]:
    return {"fact_coverage": ev.payload["fact_coverage"], "refused": int(ev.payload["refused"])}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# Per-sample events whose effects merge into one UPDATE (request_sent counts requests).
_SAMPLE_COLUMNS: dict[str, Callable[[StoredEvent], dict[str, Any]]] = {
    "request_sent": lambda ev: {},
    "response_received": _response_columns,
    "sample_scored": _score_columns,
}
_RUN_STATUS: dict[str, Callable[[dict[str, Any]], str]] = {
    "run_resumed": lambda p: "running",
    "run_interrupted": lambda p: "interrupted",
    "run_finished": lambda p: "complete" if p["failed"] == 0 else "failed",
}
