"""exprof doctor: a sound store passes; each kind of damage (edited projections, dropped
triggers, an edited event, a payload that is not JSON, an overwritten page) fails its check."""

from __future__ import annotations

import json
import sqlite3

from conftest import run_sql
from exprof.store.engine import SCHEMA_HEAD


def test_doctor_passes_a_sound_store_and_fails_a_tampered_one(finished_run, invoke):
    healthy = invoke("doctor", "--format", "json")
    assert healthy.exit_code == 0
    rows = {r["check"]: r for r in json.loads(healthy.stdout)}
    assert rows["schema revision"]["detail"] == SCHEMA_HEAD
    assert rows["events"]["detail"] == 3 + 20 * 3 + 1  # start, dataset, answers; 3 per sample; end
    assert rows["integrity_check"]["status"] == "ok"
    raw = sqlite3.connect(finished_run[1])
    raw.execute("UPDATE samples SET fact_coverage = 0.5 WHERE idx = 3")  # projections aren't events
    raw.commit()
    raw.close()
    broken = invoke("doctor", "--format", "json")
    assert broken.exit_code == 1
    rows = {r["check"]: r for r in json.loads(broken.stdout)}
    assert rows["projections"] == {
        "check": "projections",
        "status": "FAILED",
        "detail": "exp: samples differs",
    }
    raw = sqlite3.connect(finished_run[1])
    assert raw.execute("SELECT fact_coverage FROM samples WHERE idx = 3").fetchone() == (0.5,)


def _doctor(invoke, *args) -> tuple[int, dict]:
    result = invoke("doctor", "--format", "json", *args)
    assert "Traceback" not in result.output
    return result.exit_code, {r["check"]: r for r in json.loads(result.stdout)}


DROP_TRIGGERS = ("DROP TRIGGER events_no_update", "DROP TRIGGER events_no_delete")


def test_doctor_passes_a_sound_store(run_with_failures, invoke):
    code, rows = _doctor(invoke)
    assert code == 0
    assert rows["immutability triggers"]["status"] == "ok"
    assert rows["event hash chain"] == {
        "check": "event hash chain",
        "status": "ok",
        "detail": "1 run(s): intact",
    }


def test_doctor_sees_dropped_triggers(run_with_failures, invoke):
    run_sql(run_with_failures[1], DROP_TRIGGERS[0])
    code, rows = _doctor(invoke)
    assert code == 1
    assert rows["immutability triggers"] == {
        "check": "immutability triggers",
        "status": "FAILED",
        "detail": "missing: events_no_update",
    }


def test_doctor_sees_an_edited_event(run_with_failures, invoke):
    """Triggers dropped, a completion edited (valid JSON, projections untouched): the
    hash chain breaks at that event."""
    db = run_with_failures[1]
    raw = sqlite3.connect(db)
    (event_id,) = raw.execute(
        "SELECT id FROM events WHERE type = 'response_received' ORDER BY id LIMIT 1"
    ).fetchone()
    raw.close()
    run_sql(
        db,
        *DROP_TRIGGERS,
        f"UPDATE events SET payload = replace(payload, 'answer', 'ANSWER') WHERE id = {event_id}",
    )
    code, rows = _doctor(invoke)
    assert code == 1
    assert rows["event hash chain"]["status"] == "FAILED"
    assert (
        rows["event hash chain"]["detail"] == f"exp: event {event_id}: edited (hash chain broken)"
    )


def test_doctor_reports_a_payload_that_is_not_json(run_with_failures, invoke):
    run_sql(
        run_with_failures[1],
        *DROP_TRIGGERS,
        "UPDATE events SET payload = '{not json' WHERE seq = 5",
    )
    code, rows = _doctor(invoke)
    assert code == 1
    assert "unreadable payload (JSONDecodeError)" in rows["event hash chain"]["detail"]
    assert rows["projections"]["status"] == "FAILED"


def test_doctor_reports_an_overwritten_page(run_with_failures, invoke):
    db = run_with_failures[1]
    run_sql(db, "PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")  # the file header's page size
    pages = len(data) // page
    victim = pages - 2  # a page of the last table or index written, not the schema page
    data[victim * page : (victim + 1) * page] = b"\xa5" * page
    db.write_bytes(bytes(data))
    code, rows = _doctor(invoke)
    assert code == 1
    failed = [r for r in rows.values() if r["status"] == "FAILED"]
    assert failed and rows["integrity_check"]["status"] == "FAILED"


def test_doctor_run_checks_run_with_failures(run_with_failures, invoke, tmp_path):
    config = run_with_failures[0]
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 1  # exp-2
    run_sql(
        run_with_failures[1],
        *DROP_TRIGGERS,
        "UPDATE events SET payload = '[]' WHERE run_id = 'exp-2' AND seq = 5",
    )
    code, rows = _doctor(invoke, "--run", "exp")
    assert code == 1  # the triggers are store-wide
    assert rows["event hash chain"]["detail"] == "run exp: intact"
    code, rows = _doctor(invoke, "--run", "exp-2")
    assert rows["event hash chain"]["detail"].startswith("exp-2: event ")
    result = invoke("doctor", "--run", "nope")
    assert result.exit_code == 2 and "no run 'nope'" in result.stderr
