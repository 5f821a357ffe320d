"""`exprof doctor`: is the store sound, and do its projections agree with its events?"""

from __future__ import annotations

from typing import Any

from exprof.store import projections
from exprof.store.engine import Store


def check(store: Store) -> tuple[list[dict[str, Any]], bool]:
    """Rows of (check, status, detail), and whether every check passed."""
    rows: list[dict[str, Any]] = [
        {"check": "store", "status": "ok", "detail": store.location},
        {"check": "schema revision", "status": "ok", "detail": store.revision()},
        {"check": "events", "status": "ok", "detail": store.event_count()},
    ]
    with store.engine.connect() as conn:
        integrity = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
    rows.append(
        {
            "check": "integrity_check",
            "status": "ok" if integrity == ["ok"] else "FAILED",
            "detail": "; ".join(integrity[:5]),
        }
    )
    for table, agrees in _projections_agree(store).items():
        rows.append(
            {
                "check": f"projection {table}",
                "status": "ok" if agrees else "FAILED",
                "detail": "equal to a rebuild from the events"
                if agrees
                else "differs from a rebuild",
            }
        )
    return rows, all(row["status"] == "ok" for row in rows)


def _projections_agree(store: Store) -> dict[str, bool]:
    """Rebuild inside a transaction that is rolled back: the check changes nothing."""
    tables = (*projections.TABLES, "projection_positions")
    with store.engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        with conn.begin() as tx:
            projections.catch_up(conn)
            before = {t: _rows(conn, t) for t in tables}
            projections.rebuild(conn)
            after = {t: _rows(conn, t) for t in tables}
            tx.rollback()
    return {t: before[t] == after[t] for t in tables}


def _rows(conn: Any, table: str) -> list[tuple[Any, ...]]:
    """Rows in key order; `updated_at` follows the last event's timestamp, also rebuilt."""
    return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2").all()]
