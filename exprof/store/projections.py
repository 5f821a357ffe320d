"""Projections: per-run and per-sample state derived from the events.

`apply` is the only code that writes projection rows. It is called in the same
transaction as the append it derives from, and records the last event id it applied
in `projection_positions`; `rebuild` drops the rows and replays every event through
the same `apply`, so the incremental and rebuilt states are equal by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from exprof.jsonio import dumps, loads
from exprof.store.dialects import execute, insert_rows
from exprof.store.events import (
    DatasetChunk,
    RequestSent,
    ResponseReceived,
    ResponseReused,
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    SampleFailed,
    SampleScored,
    StoredEvent,
    from_row,
)

NAME = "runs_and_samples"
TABLES = ("runs", "samples")
CATCH_UP_BATCH = 5000
NEW_SAMPLE_COLUMNS = ("run_id", "dialogue_id", "repeat", "idx", "status", "requests")


def position(conn: Connection) -> int:
    pos = execute(
        conn, "SELECT last_event_id FROM projection_positions WHERE name = ?", (NAME,)
    ).scalar()
    return pos or 0


def catch_up(conn: Connection, through: int | None = None) -> int:
    """Apply, in batches, the events after our position; return the new position."""
    pos = position(conn)
    while through is None or pos < through:
        rows = execute(
            conn,
            "SELECT id, run_id, seq, type, payload, created_at FROM events "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (pos, CATCH_UP_BATCH),
        ).fetchall()
        if not rows:
            break
        batch = [StoredEvent(r[0], r[1], r[2], from_row(r[3], loads(r[4])), r[5]) for r in rows]
        apply(conn, batch)
        pos = batch[-1].id
    return pos


def rebuild(conn: Connection, run_id: str | None = None) -> None:
    """Drop the projection rows and replay the events: all of them, or one run's."""
    if run_id is not None:
        for table in TABLES:
            execute(conn, f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        replay(conn, run_id)
        return
    for table in TABLES:
        execute(conn, f"DELETE FROM {table}")
    execute(conn, "DELETE FROM projection_positions WHERE name = ?", (NAME,))
    catch_up(conn)


def replay(conn: Connection, run_id: str) -> None:
    """Apply one run's events again (its rows must be gone), in batches, by seq."""
    seq = 0
    while True:
        rows = execute(
            conn,
            "SELECT id, run_id, seq, type, payload, created_at FROM events "
            "WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, seq, CATCH_UP_BATCH),
        ).fetchall()
        if not rows:
            return
        batch = [StoredEvent(r[0], r[1], r[2], from_row(r[3], loads(r[4])), r[5]) for r in rows]
        apply(conn, batch, move_position=False)
        seq = batch[-1].seq


def apply(conn: Connection, events: Sequence[StoredEvent], move_position: bool = True) -> None:
    """Fold a batch of events (in id order) into the projection rows.

    A sample's events in one batch (request, response, score) become one UPDATE, and
    rows of the same shape one executemany. That is order-safe: sample rows are inserted
    before any update, the merged updates touch disjoint columns, a failure never
    overwrites an 'ok', and run-status changes keep their event order.
    """
    new_samples: list[tuple[Any, ...]] = []
    changes: dict[tuple[str, str, int], dict[str, Any]] = {}
    repeats: dict[str, int] = {}  # per run, read once per batch
    failures: list[tuple[Any, ...]] = []
    statuses: list[tuple[str, str]] = []
    for stored in events:
        ev = stored.event
        # Every answered sample's three events first: they are nearly all of a run.
        if isinstance(ev, RequestSent):
            cols = changes.setdefault((stored.run_id, ev.dialogue_id, ev.repeat), {})
            cols["requests"] = cols.get("requests", 0) + 1
        elif isinstance(ev, ResponseReceived):
            cols = changes.setdefault((stored.run_id, ev.dialogue_id, ev.repeat), {})
            cols.update(_response_columns(stored.id, ev))
        elif isinstance(ev, SampleScored):
            cols = changes.setdefault((stored.run_id, ev.dialogue_id, ev.repeat), {})
            cols.update(_score_columns(ev))
        elif isinstance(ev, RunStarted):
            _insert_run(conn, stored, ev)
        elif isinstance(ev, DatasetChunk):
            # One row per (sample, repeat); its idx is the slot position * k + repeat.
            if stored.run_id not in repeats:
                repeats[stored.run_id] = _repeats(conn, stored.run_id)
            k = repeats[stored.run_id]
            new_samples.extend(
                (stored.run_id, s["dialogue_id"], r, (ev.start + i) * k + r, "pending", 0)
                for i, s in enumerate(ev.samples)
                for r in range(k)
            )
        elif isinstance(ev, SampleFailed):
            failures.append((ev.error_class, ev.attempts, stored.run_id, ev.dialogue_id, ev.repeat))
        elif isinstance(ev, RunResumed):
            statuses.append(("running", stored.run_id))
        elif isinstance(ev, RunInterrupted):
            statuses.append(("interrupted", stored.run_id))
        elif isinstance(ev, RunFinished):
            statuses.append(("complete" if ev.failed == 0 else "failed", stored.run_id))
    if new_samples:
        insert_rows(conn, "samples", NEW_SAMPLE_COLUMNS, new_samples)
    by_shape: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for (run_id, dialogue_id, repeat), cols in changes.items():
        by_shape.setdefault(tuple(cols), []).append((*cols.values(), run_id, dialogue_id, repeat))
    for shape, rows in by_shape.items():
        sets = ", ".join(
            "requests = requests + ?" if col == "requests" else f"{col} = ?" for col in shape
        )
        execute(
            conn,
            f"UPDATE samples SET {sets} WHERE run_id = ? AND dialogue_id = ? AND repeat = ?",
            rows,
        )
    if failures:
        execute(
            conn,
            "UPDATE samples SET status = 'failed', error_class = ?, attempts = ? "
            "WHERE run_id = ? AND dialogue_id = ? AND repeat = ? AND status != 'ok'",
            failures,
        )
    if statuses:
        execute(conn, "UPDATE runs SET status = ? WHERE run_id = ?", statuses)
    if events:
        if move_position:
            execute(
                conn,
                "INSERT INTO projection_positions (name, last_event_id) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET last_event_id = excluded.last_event_id",
                (NAME, events[-1].id),
            )
        _touch_runs(conn, events)


def _touch_runs(conn: Connection, events: Iterable[StoredEvent]) -> None:
    last_by_run: dict[str, StoredEvent] = {}
    for ev in events:
        last_by_run[ev.run_id] = ev
    execute(
        conn,
        "UPDATE runs SET last_event_id = ?, updated_at = ? WHERE run_id = ?",
        [(ev.id, ev.created_at, run) for run, ev in last_by_run.items()],
    )


def _insert_run(conn: Connection, stored: StoredEvent, ev: RunStarted) -> None:
    execute(
        conn,
        "INSERT INTO runs (run_id, experiment_id, model, mode, status, samples_total, "
        "repeats, created_at, updated_at, last_event_id) "
        "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
        (
            stored.run_id,
            ev.experiment_id,
            ev.config["model"],
            ev.mode,
            ev.samples_total,
            ev.config.get("repeats", 1),
            stored.created_at,
            stored.created_at,
            stored.id,
        ),
    )


def _repeats(conn: Connection, run_id: str) -> int:
    found = execute(conn, "SELECT repeats FROM runs WHERE run_id = ?", (run_id,)).scalar()
    return int(found or 1)


def usage_tokens(meta: dict[str, Any]) -> tuple[int | None, int | None]:
    """An answer's (input, output) tokens as its metadata records them: live answers
    carry the API's usage, mock answers their `token_count` as the output."""
    return (
        _int_or_none(meta.get("input_tokens")),
        _int_or_none(meta.get("output_tokens", meta.get("token_count"))),
    )


def _response_columns(event_id: int, ev: ResponseReceived) -> dict[str, Any]:
    meta = ev.metadata
    latency = meta.get("latency_ms")
    input_tokens, output_tokens = usage_tokens(meta)
    return {
        "status": "ok",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "latency_ms": latency if isinstance(latency, int | float) else None,
        "attempts": _int_or_none(meta.get("attempts")),
        "response_event_id": event_id,
        "error_class": None,
        "reused": 1 if isinstance(ev, ResponseReused) else None,
    }


def _score_columns(ev: SampleScored) -> dict[str, Any]:
    # The missed facts are kept as recorded, so exports and compare never score again.
    missing = dumps(list(ev.facts_missing)) if ev.facts_missing else None
    return {
        "fact_coverage": ev.fact_coverage,
        "refused": int(ev.refused),
        "facts_missing": missing,
    }


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
