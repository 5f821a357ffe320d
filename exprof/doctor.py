"""`exprof doctor`: is the store sound, untampered, and do its projections agree with
its events? Each finding is a row; damage is a FAILED row, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from exprof.errors import ExprofError
from exprof.store import checks
from exprof.store.engine import Store


def check(store: Store, run_id: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Rows of (check, status, detail), and whether every check passed."""
    rows: list[dict[str, Any]] = [_row("store", True, store.location)]
    rows.append(_guarded("schema revision", lambda: (True, store.revision())))
    rows.append(_guarded("events", lambda: (True, store.event_count())))
    rows.append(_guarded("integrity_check", lambda: _integrity(store)))
    rows.append(_guarded("immutability triggers", lambda: _triggers(store)))
    if run_id is not None:
        store.require_run(run_id)
        runs = [run_id]
    else:
        listed = _guarded("runs", lambda: (True, store.run_ids()))
        if listed["status"] != "ok":
            rows.append(listed)
        runs = listed["detail"] if listed["status"] == "ok" else []
    chain: list[str] = []
    projection: list[str] = []
    for run in runs:  # one run at a time: memory follows the largest run, not the store
        chain.extend(f"{run}: {p}" for p in _attempt(checks.chain_problems, store, run))
        projection.extend(
            f"{run}: {t}" for t in _attempt(checks.projection_differences, store, run)
        )
    scope = f"run {run_id}" if run_id is not None else f"{len(runs)} run(s)"
    rows.append(_row("event hash chain", not chain, "; ".join(chain) or f"{scope}: intact"))
    rows.append(
        _row(
            "projections",
            not projection,
            "; ".join(projection) or f"{scope}: equal to a replay of the events",
        )
    )
    return rows, all(row["status"] == "ok" for row in rows)


def _integrity(store: Store) -> tuple[bool, str]:
    found = checks.integrity_check(store)
    return found == ["ok"], "; ".join(found[:5])


def _triggers(store: Store) -> tuple[bool, str]:
    missing = checks.missing_triggers(store)
    return not missing, f"missing: {', '.join(missing)}" if missing else "UPDATE/DELETE refused"


def _row(name: str, ok: bool, detail: Any) -> dict[str, Any]:
    return {"check": name, "status": "ok" if ok else "FAILED", "detail": detail}


def _guarded(name: str, probe: Callable[[], tuple[bool, Any]]) -> dict[str, Any]:
    try:
        ok, detail = probe()
    except (DBAPIError, ExprofError) as exc:  # a damaged file: report it, do not crash
        return _row(name, False, _reason(exc))
    return _row(name, ok, detail)


def _attempt(probe: Callable[[Store, str], list[str]], store: Store, run_id: str) -> list[str]:
    try:
        return probe(store, run_id)
    except (DBAPIError, ExprofError) as exc:
        return [_reason(exc)]


def _reason(exc: Exception) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    return str(exc)
