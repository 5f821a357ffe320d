"""The event store: ordering, optimistic concurrency, immutability, projections, schema."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from conftest import REPO, make_samples, write_experiment
from exprof.errors import ConcurrencyError, ExprofError
from exprof.store import checks, dialects, projections
from exprof.store.engine import SCHEMA_HEAD, Store, store_url
from exprof.store.events import (
    EVENT_TYPES,
    BatchCancelled,
    BatchEnded,
    BatchIntent,
    BatchPolled,
    BatchSubmitted,
    BatchVoided,
    DatasetChunk,
    ExperimentStarted,
    JudgeRequestSent,
    JudgeScored,
    MockChunk,
    RequestSent,
    RescoreStarted,
    ResponseReceived,
    ResponseReused,
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    SampleFailed,
    SampleScored,
    SequentialStarted,
    SequentialStopped,
    TurnRecorded,
)


@pytest.fixture
def backend_store(db_url) -> Store:
    """The store contract holds on both backends: SQLite and a real PostgreSQL."""
    return Store.open(db_url, create=True)


EXAMPLES = [
    RunStarted("r", "e", "mock", {"model": "m"}, "abc", 2, {}, "0.1.0"),
    DatasetChunk(0, [{"dialogue_id": "a", "system": "", "user": "u", "required_facts": []}]),
    MockChunk(0, {"a": {"completion": "x", "metadata": {"type": "refusal"}}}),
    RunResumed(123, "host", False),
    RequestSent("a", 2),
    ResponseReceived("a", "héllo ✓", {"type": "refusal", "nested": {"k": [1, 2]}}),
    SampleFailed("a", "RateLimitError", "slow down", 429, 3),
    SampleScored("a", 0.5, True, ["missing fact"]),
    SampleScored("a", 1.0, False, [], {"cites": True, "n": 3}, {"polite": "ValueError: x"}),
    JudgeRequestSent("a", "helpful", "claude-haiku-4-5", "rubric", "prompt"),
    JudgeScored("a", "helpful", "Score: 4", {"output_tokens": 3}, 4.0),
    JudgeScored("a", "helpful", None, {}, None, "RateLimitError: slow down"),
    RescoreStarted("source", {"metrics": {"a": ["fact_coverage"], "b": ["fact_coverage"]}}),
    RunInterrupted("Ctrl-C"),
    RunFinished(1, 1, 2.5),
    BatchIntent(1, [[0, 10], [12, 20]], 18, 4096, 1700000000.5),
    BatchSubmitted(1, "msgbatch_01", "2026-01-01T00:00:00Z", 18, True),
    BatchVoided(1, "never created"),
    BatchPolled("msgbatch_01", "in_progress", {"processing": 18}),
    BatchEnded("msgbatch_01", {"succeeded": 17, "errored": 1}),
    BatchCancelled(["msgbatch_01"]),
    ExperimentStarted("e", "mock", {"model": "m"}, [{"name": "c", "params": {}, "run_id": "e.c"}]),
    RunStarted("e.c", "e", "mock", {}, "abc", 2, {}, "0.1.0", cell={"name": "c", "params": {}}),
    RequestSent("a", 1, 3),
    ResponseReceived("a", "x", {}, 2),
    SampleFailed("a", "RateLimitError", "slow down", 429, 3, 1),
    SampleScored("a", 0.5, True, [], repeat=4),
    ResponseReused("a", "x", {"output_tokens": 2}, 1, source_event_id=7),
    SequentialStarted("fact_coverage", -1.0, 1.0, 0.05, 0.1, 3, [1, 0], {"A": {}, "B": {}}),
    SequentialStopped("decided", "B", 12, [0.05, 0.9], 3, [1, 0], "decided after 12 pairs"),
    TurnRecorded(
        "a",
        1,
        [{"role": "user", "content": "hi"}],
        [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}],
        [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x", "is_error": True}],
        {"input_tokens": 3, "output_tokens": 10},
        "tool_use",
        2,
    ),
]


def test_every_event_type_has_an_example():
    assert {type(e) for e in EXAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_payload_round_trip(event):
    assert type(event).from_payload(event.to_payload()) == event


def _started(run_id="r", n=2):
    chunk = [
        {"dialogue_id": f"d{i}", "system": "", "user": "u", "required_facts": []} for i in range(n)
    ]
    return [
        RunStarted(run_id, "e", "mock", {"model": "m"}, "abc", n, {}, "0.1.0"),
        DatasetChunk(0, chunk),
    ]


def test_append_assigns_global_ids_and_per_run_seqs(backend_store):
    backend_store.append("r1", _started("r1"), after_seq=0)
    backend_store.append("r2", _started("r2"), after_seq=0)
    backend_store.append("r1", [RequestSent("d0")], after_seq=2)
    events = list(backend_store.events())
    assert [(e.id, e.run_id, e.seq) for e in events] == [
        (1, "r1", 1),
        (2, "r1", 2),
        (3, "r2", 1),
        (4, "r2", 2),
        (5, "r1", 3),
    ]
    assert [e.seq for e in backend_store.events("r1")] == [1, 2, 3]


def test_duplicate_seq_is_refused_and_leaves_nothing(backend_store):
    backend_store.append("r", _started(), after_seq=0)
    before = list(backend_store.events())
    with backend_store.engine.connect() as conn:
        pos_before = projections.position(conn)
    with pytest.raises(ConcurrencyError):
        # A stale writer thinks the run ends at seq 1: its batch's second event clashes.
        backend_store.append(
            "r", [RequestSent("d0"), RequestSent("d1"), RequestSent("d0")], after_seq=1
        )
    assert list(backend_store.events()) == before
    with backend_store.engine.connect() as conn:
        assert projections.position(conn) == pos_before
        assert conn.exec_driver_sql("SELECT sum(requests) FROM samples").scalar() == 0


@pytest.mark.parametrize("count", [141, 142, 1000])  # below, at, above a multi-row INSERT
def test_a_large_append_stores_every_event_in_order_or_none(backend_store, count):
    """SQLite inserts many rows per statement (dialects.insert_rows): every event lands,
    in order, and a clash anywhere among them leaves nothing."""
    backend_store.append("r", _started(), after_seq=0)
    sent = [RequestSent(f"d{i}") for i in range(count)]
    with pytest.raises(ConcurrencyError):
        backend_store.append("r", sent, after_seq=1)  # seq 2 is the dataset chunk's
    assert [e.seq for e in backend_store.events("r")] == [1, 2]
    backend_store.append("r", sent, after_seq=2)
    back = list(backend_store.events("r"))
    assert [e.seq for e in back] == list(range(1, count + 3))
    assert [e.event for e in back[2:]] == sent


def test_database_refuses_update_and_delete(backend_store):
    """The database itself (a trigger, on SQLite and on PostgreSQL) refuses to change an
    event, whoever asks."""
    backend_store.append("r", _started(), after_seq=0)
    for statement, action in (
        ("UPDATE events SET type = 'x'", "UPDATE"),
        ("DELETE FROM events WHERE id = 1", "DELETE"),
    ):
        with backend_store.engine.connect() as conn, pytest.raises(DBAPIError) as refused:
            conn.exec_driver_sql(statement)
        assert f"events are immutable: {action} refused" in str(refused.value)
    if backend_store.engine.dialect.name == "sqlite":  # also from outside exprof
        raw = sqlite3.connect(backend_store.location)
        with pytest.raises(sqlite3.IntegrityError, match="events are immutable: UPDATE refused"):
            raw.execute("UPDATE events SET type = 'x'")
        raw.close()
    assert backend_store.event_count() == 2


def _projection_rows(store: Store):
    with store.engine.connect() as conn:
        return {
            table: conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2").all()
            for table in (*projections.TABLES, "projection_positions")
        }


def test_rebuild_equals_incremental(tmp_path, invoke, backend_store, db_url):
    samples, mocks = make_samples(300, refuse_every=7, missing_every=11)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet", "--db", db_url).exit_code == 1
    assert invoke("run", "--config", str(config), "--quiet", "--db", db_url).exit_code == 1
    incremental = _projection_rows(backend_store)
    assert len(incremental["samples"]) == 600
    with backend_store.write() as conn:
        projections.rebuild(conn)
    assert _projection_rows(backend_store) == incremental


def test_schema_head_constant_matches_alembic():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(REPO / "migrations"))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD


def test_migrates_an_empty_database(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    store = Store.open(store_url(str(path), "."), create=True)
    assert store.revision() == SCHEMA_HEAD
    raw = sqlite3.connect(path)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "runs", "samples", "projection_positions", "leases"} <= tables
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA page_size").fetchone()[0] == dialects.PAGE_SIZE == 16384


def _store_at_first_revision(path: Path) -> None:
    """An older exprof's store: only revision 0001, with events already in it."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(REPO / "migrations"))
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    raw = sqlite3.connect(path)
    for seq, ev in enumerate(_started("old"), start=1):
        raw.execute(
            "INSERT INTO events (run_id, seq, type, payload, created_at) VALUES (?, ?, ?, ?, 0)",
            ("old", seq, ev.type, __import__("json").dumps(ev.to_payload())),
        )
    raw.commit()
    raw.close()


def test_upgrades_an_older_store_keeping_its_events(tmp_path):
    path = tmp_path / "old.db"
    _store_at_first_revision(path)
    store = Store.open(store_url(str(path), "."), create=True)
    assert store.revision() == SCHEMA_HEAD
    assert [e.type for e in store.events("old")] == ["run_started", "dataset_chunk"]
    with sqlite3.connect(path) as raw:  # a store keeps the page size it was made with
        assert raw.execute("PRAGMA page_size").fetchone()[0] == 4096
    # The new projections are built from the old events on the next append.
    store.append("old", [RequestSent("d0")], after_seq=2)
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT dialogue_id, requests FROM samples").all()
    assert rows == [("d0", 1), ("d1", 0)]


def test_store_from_a_newer_exprof_is_refused(tmp_path):
    path = tmp_path / "new.db"
    Store.open(store_url(str(path), "."), create=True)
    raw = sqlite3.connect(path)
    raw.execute("UPDATE alembic_version SET version_num = '9999'")
    raw.commit()
    raw.close()
    with pytest.raises(ExprofError, match="made by a newer exprof; upgrade exprof"):
        Store.open(store_url(str(path), "."))


def test_db_upgrade_command(tmp_path, invoke):
    result = invoke("db", "upgrade", "--db", str(tmp_path / "x.db"))
    assert result.exit_code == 0
    assert f"schema at revision {SCHEMA_HEAD}" in result.stderr


def test_stored_events_come_back_typed(backend_store):
    backend_store.append("r", [*_started(), SampleScored("d0", 0.5, False, ["f"])], after_seq=0)
    assert [type(e.event) for e in backend_store.events("r")] == [
        RunStarted,
        DatasetChunk,
        SampleScored,
    ]
    with pytest.raises(ValueError, match="unknown event type 'nope'"):
        __import__("exprof.store.events", fromlist=["from_row"]).from_row("nope", {})


def test_exports_read_the_recorded_missing_facts_never_score_again(backend_store, tmp_path):
    """The projection keeps facts_missing as recorded; export copies it (a later change of
    the scoring rule, or of the answer's text, cannot change an old run's export)."""
    from exprof.export import export_run

    started = RunStarted("r", "e", "mock", _CONFIG, "abc", 1, {}, "0.1.0")
    chunk = DatasetChunk(
        0, [{"dialogue_id": "d0", "system": "", "user": "u", "required_facts": ["alpha"]}]
    )
    recorded = [
        RequestSent("d0"),
        ResponseReceived("d0", "alpha is here", {}),
        SampleScored("d0", 0.0, False, ["as recorded"]),
    ]
    backend_store.append("r", [started, chunk, *recorded], after_seq=0)
    export_run(backend_store, "r", tmp_path / "out")
    line = (tmp_path / "out" / "scores.jsonl").read_text()
    assert line == (
        '{"dialogue_id":"d0","fact_coverage":0.0,"refused":false,"facts_missing":["as recorded"]}\n'
    )
    assert backend_store.facts_missing("r", ["d0"]) == {"d0": ["as recorded"]}


_CONFIG = {
    "experiment_id": "e",
    "model": "m",
    "max_tokens": 10,
    "temperature": 0.0,
    "dataset_path": "x.json",
    "mock_responses_path": "m.json",
}


def test_upgrade_to_0003_rebuilds_the_projections_with_facts_missing(tmp_path):
    """A 0002 store's samples lack facts_missing: the upgrade replays the events."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    path = tmp_path / "old.db"
    cfg = Config()
    cfg.set_main_option("script_location", str(REPO / "migrations"))
    with create_engine(f"sqlite:///{path}").begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    raw = sqlite3.connect(path)
    events = [*_started("old"), RequestSent("d0"), SampleScored("d0", 0.0, False, ["x"])]
    for seq, ev in enumerate(events, start=1):
        raw.execute(
            "INSERT INTO events (run_id, seq, type, payload, created_at) VALUES (?, ?, ?, ?, 0)",
            ("old", seq, ev.type, __import__("json").dumps(ev.to_payload())),
        )
    raw.commit()
    raw.close()
    Store.open(store_url(str(path), "."), create=True)
    raw = sqlite3.connect(path)
    row = raw.execute("SELECT requests, facts_missing FROM samples WHERE dialogue_id = 'd0'")
    assert row.fetchone() == (1, '["x"]')
    raw.close()


def test_a_mock_run_spares_the_collector_and_hands_it_back(tmp_path, invoke):
    """The speed work: the heap alive at a run's start (the dataset, the mocks) is frozen
    for the run, and cyclic collection is paused while a mock batch is built and
    appended. A metric sees both while it runs; afterwards nothing is left changed."""
    import gc

    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "gc_probe_speed.py").write_text(
        "import gc\n\n"
        "def frozen(sample, completion, metadata):\n    return gc.get_freeze_count()\n\n"
        "def collecting(sample, completion, metadata):\n    return gc.isenabled()\n"
    )
    samples, mocks = make_samples(4)
    metrics = [
        {"name": "frozen", "type": "python", "function": "gc_probe_speed:frozen"},
        {"name": "collecting", "type": "python", "function": "gc_probe_speed:collecting"},
    ]
    config = write_experiment(folder, samples, mocks, metrics=metrics)
    before = gc.get_freeze_count()
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 0, result.output
    scores = (tmp_path / "runs" / "exp" / "scores.jsonl").read_text().splitlines()
    assert len(scores) == 4
    for line in scores:
        score = json.loads(line)
        assert score["frozen"] > 0 and score["collecting"] is False
    assert gc.get_freeze_count() == before and gc.isenabled()


def test_settled_heap_undoes_only_its_own_freeze():
    """A live session's freeze nests inside the run's, and a library caller may have
    frozen its own heap: only the outermost freeze is undone, by whoever made it."""
    import gc

    from exprof.heap import settled_heap

    gc.unfreeze()
    with settled_heap():
        outer = gc.get_freeze_count()
        with settled_heap():
            pass
        assert gc.get_freeze_count() >= outer > 0  # the inner block left the run frozen
    assert gc.get_freeze_count() == 0
    gc.freeze()  # the caller's own
    try:
        with settled_heap():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_long_reads_stream_their_rows_on_postgresql(tmp_path, invoke, backend_store, db_url):
    """The reads that walk a whole run (events, an export's responses, doctor's chain)
    fetch rows as they go: on PostgreSQL through a server-side cursor, since psycopg's
    default cursor would hold the whole result (60 MB at 100k samples) in memory."""
    from sqlalchemy import event

    samples, mocks = make_samples(5)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet", "--db", db_url).exit_code == 0
    cursors: dict[str, str] = {}

    @event.listens_for(backend_store.engine, "before_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany):
        cursors[" ".join(statement.split())] = type(cursor).__name__

    assert len(list(backend_store.events("exp"))) > 5
    assert len(list(backend_store.scored_responses("exp"))) == 5
    assert checks.chain_problems(backend_store, "exp") == []
    walks = [v for k, v in cursors.items() if k.startswith("SELECT") and "payload" in k]
    assert len(walks) == 3, cursors
    expected = "ServerCursor" if backend_store.engine.dialect.name == "postgresql" else "Cursor"
    assert set(walks) == {expected}


def test_any_driver_error_in_a_bulk_insert_is_sqlalchemys(backend_store):
    """Not only a clash: a COPY that fails for any reason (a full disk, a timeout, a bad
    row) raises SQLAlchemy's error, as an INSERT would, so the store turns it into one
    `Error:` line with the password masked instead of a psycopg traceback."""
    from sqlalchemy.exc import DBAPIError

    from exprof.store.dialects import insert_rows

    with pytest.raises(DBAPIError) as caught, backend_store.engine.begin() as conn:
        insert_rows(conn, "events", ("run_id", "seq"), [("r", 1, "one value too many")])
    assert not type(caught.value).__module__.startswith("psycopg")


def test_appends_copy_their_rows_on_postgresql_and_still_refuse_a_clash(
    tmp_path, backend_store, db_url
):
    """On PostgreSQL an append's events and its new sample rows go in through COPY (no
    INSERT executed row by row: psycopg's executemany cost ~30 us of CPU a row); a seq
    clash inside the COPY is still a ConcurrencyError that leaves nothing behind."""
    from sqlalchemy import event

    inserts: list[str] = []

    @event.listens_for(backend_store.engine, "before_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO EVENTS") or (
            statement.lstrip().upper().startswith("INSERT INTO SAMPLES")
        ):
            inserts.append(statement)

    started = RunStarted("r", "e", "mock", {"model": "m"}, "x", 3, {}, "0")
    chunk = DatasetChunk(0, [{"dialogue_id": f"d{i}"} for i in range(3)])
    seq = backend_store.append("r", [started, chunk], after_seq=0)
    seq = backend_store.append("r", [RequestSent(f"d{i}") for i in range(3)], after_seq=seq)
    assert seq == 5 and backend_store.sample_status_counts("r") == {"pending": 3}
    postgres = backend_store.engine.dialect.name == "postgresql"
    assert (inserts == []) if postgres else len(inserts) == 3
    with pytest.raises(ConcurrencyError):
        backend_store.append("r", [RequestSent("d0"), RequestSent("d1")], after_seq=4)
    assert backend_store.last_seq("r") == 5


def test_a_summary_scans_a_runs_samples_once_when_nothing_else_is_there(tmp_path, invoke):
    """Issue 10 part 6: summarize must not grow with the run. A mock run with neither
    latencies nor failures is summarised from one scan of its sample rows (the counts,
    the tokens and the reused answers together), not four."""
    from sqlalchemy import event

    from exprof.summary import run_summary

    samples, mocks = make_samples(20)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    store = Store.open(store_url(None, tmp_path / "runs"))
    scans: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany):
        if "FROM samples" in statement:
            scans.append(statement)

    summary = run_summary(store, "exp")
    assert summary["samples_completed"] == 20 and "latency_ms" not in summary
    assert len(scans) == 1, scans
