"""Projections: per-run and per-sample state derived from the events.

`apply` is the only code that writes projection rows. It is called in the same
transaction as the append it derives from, and records the last event id it applied
in `projection_positions`; `rebuild` drops the rows and replays every event through
the same `apply`, so the incremental and rebuilt states are equal by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import Connection

from exprof.jsonio import dumps
from exprof.stops import is_cut_off, refusal_category
from exprof.store.dialects import execute, insert_rows
from exprof.store.events import (
    STORED_COLUMNS,
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
    stored_from_row,
)

NAME = "runs_and_samples"
TABLES = ("runs", "samples")
CATCH_UP_BATCH = 5000
NEW_SAMPLE_COLUMNS = ("run_id", "dialogue_id", "repeat", "idx", "status", "requests")
_SAMPLE_EVENTS = (RequestSent, ResponseReceived, SampleScored)  # merged per sample


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
            f"SELECT {STORED_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (pos, CATCH_UP_BATCH),
        ).fetchall()
        if not rows:
            break
        batch = [stored_from_row(row) for row in rows]
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
            f"SELECT {STORED_COLUMNS} FROM events WHERE run_id = ? AND seq > ? ORDER BY seq "
            "LIMIT ?",
            (run_id, seq, CATCH_UP_BATCH),
        ).fetchall()
        if not rows:
            return
        batch = [stored_from_row(row) for row in rows]
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
    # Per (run, sample, repeat): [requests sent, response values, score values], the
    # values in RESPONSE_COLUMNS and SCORE_COLUMNS order (None: no such event).
    changes: dict[tuple[str, str, int], list[Any]] = {}
    repeats: dict[str, int] = {}  # per run, read once per batch
    failures: list[tuple[Any, ...]] = []
    statuses: list[tuple[str, str]] = []
    for stored in events:
        ev = stored.event
        # Every answered sample's three events first: they are nearly all of a run.
        if isinstance(ev, _SAMPLE_EVENTS):
            key = (stored.run_id, ev.dialogue_id, ev.repeat)
            change = changes.get(key)
            if change is None:
                change = changes[key] = [0, None, None]
            if isinstance(ev, RequestSent):
                change[0] += 1
            elif isinstance(ev, ResponseReceived):
                change[1] = _response_values(stored.id, ev)
            else:
                change[2] = _score_values(ev)
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
    # Grouped by which of the three a sample had and which of its values are None: one
    # UPDATE statement per shape, its None values written as NULL in the statement (a
    # bound None costs SQLite's executemany as much as the rest of the row).
    by_shape: dict[tuple[bool, bool, bool, tuple[bool, ...]], list[tuple[Any, ...]]] = {}
    for key, (sent, response, score) in changes.items():
        values = (response or ()) + (score or ())
        nulls = tuple([value is None for value in values])
        shape = (sent > 0, response is not None, score is not None, nulls)
        bound = tuple([value for value in values if value is not None])
        row = ((sent,) if sent else ()) + bound + key
        by_shape.setdefault(shape, []).append(row)
    for shape, rows in by_shape.items():
        execute(conn, _sample_update(*shape), rows)
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


RESPONSE_COLUMNS = (
    "status",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "attempts",
    "response_event_id",
    "error_class",
    "reused",
    "thinking_tokens",
    "cut_off",
    "refusal_category",
    "ttft_ms",
    "output_tps",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "service_tier",
    "speed",
)
SCORE_COLUMNS = ("fact_coverage", "refused", "facts_missing")


@lru_cache(maxsize=256)
def _sample_update(sent: bool, response: bool, score: bool, nulls: tuple[bool, ...]) -> str:
    """The UPDATE for a sample's merged changes: its requests, response and scores, the
    columns `nulls` marks set to NULL and the rest bound."""
    columns = (RESPONSE_COLUMNS if response else ()) + (SCORE_COLUMNS if score else ())
    sets = (["requests = requests + ?"] if sent else []) + [
        f"{col} = NULL" if null else f"{col} = ?" for col, null in zip(columns, nulls, strict=True)
    ]
    return (
        f"UPDATE samples SET {', '.join(sets)} WHERE run_id = ? AND dialogue_id = ? AND repeat = ?"
    )


# The metadata keys RESPONSE_COLUMNS are read from, besides the token counts: an answer
# without any (every mock answer) has None in each of those columns.
_DETAIL_KEYS = frozenset(
    {
        "latency_ms",
        "attempts",
        "thinking_tokens",
        "stop_reason",
        "ttft_ms",
        "output_tokens_per_s",
        "cache_creation_input_tokens",
        "cache_write_1h_tokens",
        "cache_write_5m_tokens",
        "cache_read_input_tokens",
        "service_tier",
        "speed",
    }
)
_NO_DETAILS = (None,) * 10  # thinking_tokens .. speed


def _response_values(event_id: int, ev: ResponseReceived) -> tuple[Any, ...]:
    """An answer's RESPONSE_COLUMNS."""
    meta = ev.metadata
    input_tokens, output_tokens = usage_tokens(meta)
    reused = 1 if isinstance(ev, ResponseReused) else None
    if _DETAIL_KEYS.isdisjoint(meta):
        return ("ok", input_tokens, output_tokens, None, None, event_id, None, reused, *_NO_DETAILS)
    latency = meta.get("latency_ms")
    return (
        "ok",
        input_tokens,
        output_tokens,
        latency if isinstance(latency, int | float) else None,
        _int_or_none(meta.get("attempts")),
        event_id,
        None,
        reused,
        _int_or_none(meta.get("thinking_tokens")),
        1 if is_cut_off(meta) else None,
        # Kept for any refusal stop reason; a text-rule refusal counts as uncategorized.
        refusal_category(meta) if meta.get("stop_reason") == "refusal" else None,
        _number_or_none(meta.get("ttft_ms")),
        _number_or_none(meta.get("output_tokens_per_s")),
        *cache_tokens(meta),
        _text_or_none(meta.get("service_tier")),
        _text_or_none(meta.get("speed")),
    )


def cache_tokens(meta: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    """An answer's cache writes at the 5-minute and the 1-hour rate, and its cache reads.
    Where the usage gives only the total written (cache_creation_input_tokens), what the
    1-hour split does not claim was written at the 5-minute rate, the API's default."""
    written = _int_or_none(meta.get("cache_creation_input_tokens"))
    hour = _int_or_none(meta.get("cache_write_1h_tokens"))
    five = _int_or_none(meta.get("cache_write_5m_tokens"))
    if five is None and written is not None:
        five = max(written - (hour or 0), 0)
    return five, hour, _int_or_none(meta.get("cache_read_input_tokens"))


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _score_values(ev: SampleScored) -> tuple[Any, ...]:
    """A score's SCORE_COLUMNS. The missed facts are kept as recorded, so exports and
    compare never score again."""
    missing = dumps(list(ev.facts_missing)) if ev.facts_missing else None
    return (ev.fact_coverage, int(ev.refused), missing)


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
