"""What `exprof doctor` asks the store: engine integrity, the immutability triggers,
each run's hash chain and payloads, and each run's projection rows against a replay.

Every check reads one run at a time, so its memory is bounded by the largest run,
not by the store.
"""

from __future__ import annotations

from typing import Any

from exprof.store import dialects, projections
from exprof.store.dialects import IMMUTABILITY_TRIGGERS, execute, stream
from exprof.store.engine import Store
from exprof.store.events import event_hash, from_row

CHAIN_BATCH = 2000
MAX_PROBLEMS = 3  # per run: enough to locate the damage without flooding the table


def integrity_check(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return dialects.integrity_check(conn)


def missing_triggers(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        present = dialects.triggers(conn)
    return [t for t in IMMUTABILITY_TRIGGERS if t not in present]


def chain_problems(store: Store, run_id: str) -> list[str]:
    """Recompute the run's hash chain over the stored bytes; check seqs and payloads."""
    problems: list[str] = []
    previous, expected_seq, chained = "", 1, False
    with store.engine.connect() as conn:
        result = stream(
            conn,
            "SELECT id, seq, type, payload, hash FROM events WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        while rows := result.fetchmany(CHAIN_BATCH):
            for id_, seq, type_, payload, stored in rows:
                if seq != expected_seq:
                    problems.append(f"event {id_}: seq {seq}, expected {expected_seq}")
                expected_seq = seq + 1
                try:
                    from_row(type_, payload)
                except Exception as exc:  # any damage at all is a finding, not a crash
                    problems.append(f"event {id_}: unreadable payload ({type(exc).__name__})")
                if stored is None:
                    if chained:
                        problems.append(f"event {id_}: hash removed")
                    previous = ""
                    continue
                chained = True
                text = payload if isinstance(payload, str) else str(payload)
                if event_hash(previous, str(type_), text) != stored:
                    problems.append(f"event {id_}: edited (hash chain broken)")
                previous = stored
            if len(problems) >= MAX_PROBLEMS:
                break
    return problems[:MAX_PROBLEMS]


def projection_differences(store: Store, run_id: str) -> list[str]:
    """How the run's projection rows differ from a replay of its events. The replay
    runs in a transaction that is rolled back: the check changes nothing."""
    with store.engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        with conn.begin() as tx:
            dialects.lock_writers(conn)
            try:
                projections.catch_up(conn)
                before = {t: _rows(conn, t, run_id) for t in projections.TABLES}
                projections.rebuild(conn, run_id)
                after = {t: _rows(conn, t, run_id) for t in projections.TABLES}
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                return [f"cannot be replayed ({type(exc).__name__})"]  # a damaged event
            finally:
                tx.rollback()
    return [f"{t} differs" for t in projections.TABLES if before[t] != after[t]]


def _rows(conn: Any, table: str, run_id: str) -> list[tuple[Any, ...]]:
    """The run's rows in key order (`updated_at` follows its last event, also replayed)."""
    rows = execute(conn, f"SELECT * FROM {table} WHERE run_id = ? ORDER BY 1, 2, 3", (run_id,))
    return [tuple(r) for r in rows]
