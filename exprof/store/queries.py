"""Every read a command needs, by name: `Queries` reads a store's engine, and `Store`
(engine.py) adds the writes to it; nothing outside the store package writes SQL or
opens a connection.

Reads go to the projections (`runs`, `samples`), which are kept in step with the events
inside each append; only the dataset snapshot and the answers are read from events.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine

from exprof import hints
from exprof.errors import ExprofError
from exprof.jsonio import loads
from exprof.stops import UNCATEGORIZED
from exprof.store.dialects import execute, stream
from exprof.store.events import (
    EVENT_TYPES,
    DatasetChunk,
    Event,
    ExperimentStarted,
    MockChunk,
    ResponseReceived,
    RunFinished,
    RunStarted,
    from_row,
    type_names,
)

FETCH = 5000  # rows per fetch when streaming a run's samples


@dataclass(frozen=True)
class RunRow:
    run_id: str
    experiment_id: str
    model: str
    mode: str
    status: str
    samples_total: int
    created_at: float
    repeats: int = 1


@dataclass(frozen=True)
class StatusStats:
    """Per-status aggregates of a run's samples."""

    count: int
    coverage_sum: float
    refused: int
    input_tokens: int
    output_tokens: int
    attempts_sum: int
    attempts_count: int
    reused: int = 0  # answers taken from the store, and their tokens
    reused_input_tokens: int = 0
    reused_output_tokens: int = 0
    latencies: int = 0  # samples with a recorded latency
    thinking_tokens: int | None = None  # None: no answer reported any
    cut_off: int = 0  # answers cut off (exprof.stops), and their fact coverage
    cut_off_coverage_sum: float = 0.0
    streamed: int = 0  # answers with a time to first token


class SampleTotals(NamedTuple):
    """One sample's answers summed over its repeats (Queries.sample_totals)."""

    dialogue_id: str
    answers: int
    fact_coverage: float
    refused: int
    input: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output: int


@dataclass(frozen=True)
class UsageTotals:
    """A run's answered samples' tokens by class, summed over the answers that were
    taken from the store alike (`reused`) and ran at the same service tier and speed."""

    reused: bool
    service_tier: str | None
    speed: str | None
    input: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output: int


@dataclass(frozen=True)
class ScoredResponse:
    """A recorded answer with the scores recorded for it."""

    response: ResponseReceived
    fact_coverage: float
    refused: bool
    facts_missing: list[str]


class Queries:
    """The reads of the store whose database `engine` opens (`location` names it in
    messages)."""

    def __init__(self, engine: Engine, location: str) -> None:
        self.engine = engine
        self.location = location

    def _all(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """One statement's rows, on a connection held only for this read."""
        with self.engine.connect() as conn:
            return list(execute(conn, statement, tuple(params)).all())

    def _scalar(self, statement: str, params: Sequence[Any] = ()) -> Any:
        with self.engine.connect() as conn:
            return execute(conn, statement, tuple(params)).scalar()

    # -- runs ------------------------------------------------------------------

    def _no_run(self, run_id: str) -> str:
        return f"{self.location}: no run {run_id!r} (see `{hints.command('runs')}`)"

    def run_exists(self, run_id: str) -> bool:
        return self._scalar("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)) is not None

    def require_run(self, run_id: str) -> None:
        if not self.run_exists(run_id):
            raise ExprofError(self._no_run(run_id))

    def latest_run_of(self, experiment_id: str) -> str | None:
        found = self._scalar(
            "SELECT run_id FROM runs WHERE experiment_id = ? "
            "ORDER BY created_at DESC, run_id DESC LIMIT 1",
            (experiment_id,),
        )
        return str(found) if found is not None else None

    def run_row(self, run_id: str) -> RunRow:
        rows = self._all(_RUN_COLUMNS + " WHERE run_id = ?", (run_id,))
        if not rows:
            raise ExprofError(self._no_run(run_id))
        return RunRow(*rows[0])

    def runs(self) -> list[RunRow]:
        """Every run, newest first."""
        return [
            RunRow(*row) for row in self._all(_RUN_COLUMNS + " ORDER BY created_at DESC, run_id")
        ]

    def run_ids(self) -> list[str]:
        return [str(r[0]) for r in self._all("SELECT run_id FROM runs ORDER BY run_id")]

    def ok_stats_by_run(self) -> dict[str, tuple[int, float, int]]:
        """Per run: answered samples, their coverage sum and their refusals."""
        rows = self._all(
            "SELECT run_id, count(*), sum(fact_coverage), sum(refused) "
            "FROM samples WHERE status = 'ok' GROUP BY run_id",
        )
        return {r[0]: (int(r[1]), float(r[2] or 0.0), int(r[3] or 0)) for r in rows}

    # -- one run's samples -----------------------------------------------------

    def sample_status_counts(self, run_id: str) -> dict[str, int]:
        return {status: s.count for status, s in self.sample_stats(run_id).items()}

    def sample_stats(self, run_id: str) -> dict[str, StatusStats]:
        rows = self._all(
            # A reused answer's tokens were not paid for again: not counted.
            "SELECT status, count(*), sum(fact_coverage), sum(refused), "
            "sum(CASE WHEN reused = 1 THEN 0 ELSE input_tokens END), "
            "sum(CASE WHEN reused = 1 THEN 0 ELSE output_tokens END), "
            "sum(attempts), count(attempts), sum(reused), "
            "sum(CASE WHEN reused = 1 THEN input_tokens ELSE 0 END), "
            "sum(CASE WHEN reused = 1 THEN output_tokens ELSE 0 END), count(latency_ms), "
            "sum(CASE WHEN reused = 1 THEN 0 ELSE thinking_tokens END), sum(cut_off), "
            "sum(CASE WHEN cut_off = 1 THEN fact_coverage ELSE 0 END), count(ttft_ms) "
            "FROM samples WHERE run_id = ? GROUP BY status",
            (run_id,),
        )
        return {
            r[0]: StatusStats(
                int(r[1]),
                float(r[2] or 0.0),
                int(r[3] or 0),
                int(r[4] or 0),
                int(r[5] or 0),
                int(r[6] or 0),
                int(r[7]),
                int(r[8] or 0),
                int(r[9] or 0),
                int(r[10] or 0),
                int(r[11]),
                None if r[12] is None else int(r[12]),
                int(r[13] or 0),
                float(r[14] or 0.0),
                int(r[15]),
            )
            for r in rows
        }

    def usage_totals(self, run_id: str) -> list[UsageTotals]:
        """The answered samples' tokens by class, per (reused, service tier, speed)."""
        rows = self._all(
            "SELECT COALESCE(reused, 0), service_tier, speed, sum(input_tokens), "
            "sum(cache_write_5m_tokens), sum(cache_write_1h_tokens), sum(cache_read_tokens), "
            "sum(output_tokens) FROM samples WHERE run_id = ? AND status = 'ok' "
            "GROUP BY COALESCE(reused, 0), service_tier, speed",
            (run_id,),
        )
        return [UsageTotals(bool(r[0]), r[1], r[2], *(int(v or 0) for v in r[3:])) for r in rows]

    def output_token_counts(self, run_ids: Sequence[str]) -> list[int]:
        """The answered samples' output tokens over these runs, ascending."""
        if not run_ids:
            return []
        marks = ", ".join("?" for _ in run_ids)
        rows = self._all(
            f"SELECT output_tokens FROM samples WHERE run_id IN ({marks}) "  # noqa: S608
            "AND status = 'ok' AND output_tokens IS NOT NULL ORDER BY output_tokens",
            tuple(run_ids),
        )
        return [int(r[0]) for r in rows]

    def correct_answers(self, run_id: str) -> int:
        """Answers with full fact coverage and no refusal."""
        found = self._scalar(
            "SELECT count(*) FROM samples WHERE run_id = ? AND status = 'ok' "
            "AND fact_coverage >= 1 AND refused = 0",
            (run_id,),
        )
        return int(found or 0)

    def refusals_by_category(self, run_id: str) -> dict[str, int] | None:
        """Refused answers per policy category; a refusal found by the text rule, or
        with no category, is `uncategorized` (exprof.stops). None when no answer of
        the run had a refusal stop reason: the API (or the mock) gave no categories."""
        rows = self._all(
            "SELECT COALESCE(refusal_category, ?), count(*), count(refusal_category) "
            "FROM samples WHERE run_id = ? AND status = 'ok' AND refused = 1 "
            "GROUP BY 1 ORDER BY 1",
            (UNCATEGORIZED, run_id),
        )
        if not any(r[2] for r in rows):
            return None
        return {str(r[0]): int(r[1]) for r in rows}

    def stream_profile(self, run_id: str) -> tuple[list[float], list[float]]:
        """The streamed answers' times to first token (ms) and output tokens per second,
        each ascending."""
        out = []
        for column in ("ttft_ms", "output_tps"):
            rows = self._all(
                f"SELECT {column} FROM samples WHERE run_id = ? AND status = 'ok' "  # noqa: S608
                f"AND {column} IS NOT NULL ORDER BY {column}",
                (run_id,),
            )
            out.append([float(r[0]) for r in rows])
        return out[0], out[1]

    def ok_latencies(self, run_id: str) -> list[float]:
        """Latencies of the answered samples, ascending."""
        rows = self._all(
            "SELECT latency_ms FROM samples WHERE run_id = ? AND status = 'ok' "
            "AND latency_ms IS NOT NULL ORDER BY latency_ms",
            (run_id,),
        )
        return [row[0] for row in rows]

    def failures_by_class(self, run_id: str) -> dict[str, int]:
        rows = self._all(
            "SELECT error_class, count(*) FROM samples WHERE run_id = ? "
            "AND status = 'failed' GROUP BY error_class ORDER BY error_class",
            (run_id,),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def pending_positions(self, run_id: str, retry_failed: bool) -> set[int]:
        """Slots (dataset index * repeats + repeat) of the samples still owed a response."""
        owed = ("pending", "failed") if retry_failed else ("pending",)
        marks = ", ".join("?" * len(owed))
        rows = self._all(
            f"SELECT idx FROM samples WHERE run_id = ? AND status IN ({marks})", (run_id, *owed)
        )
        return {int(row[0]) for row in rows}

    def requested_slots(self, run_id: str) -> Iterator[tuple[str, int]]:
        """(dialogue_id, repeat) of the pairs that were sent at least once, or answered
        from the store (a reused answer stands for its identical request), streamed in
        dataset order: an export of a million samples never holds them."""
        with self.engine.connect() as conn:
            result = stream(
                conn,
                "SELECT dialogue_id, repeat FROM samples WHERE run_id = ? "
                "AND (requests > 0 OR reused = 1) ORDER BY idx",
                (run_id,),
            )
            while rows := result.fetchmany(FETCH):
                for dialogue_id, repeat in rows:
                    yield dialogue_id, int(repeat)

    def sample_scores(self, run_id: str) -> list[tuple[str, float, bool]]:
        """(dialogue_id, fact_coverage, refused) of each answered sample, in dataset order;
        with repeats, one row per answered (sample, repeat), a sample's repeats together."""
        rows = self._all(
            "SELECT dialogue_id, fact_coverage, refused FROM samples "
            "WHERE run_id = ? AND status = 'ok' ORDER BY idx",
            (run_id,),
        )
        return [(r[0], float(r[1]), bool(r[2])) for r in rows]

    def cut_off_ids(self, run_id: str) -> set[str]:
        """The dialogue ids with an answer cut off (exprof.stops), any repeat."""
        rows = self._all(
            "SELECT DISTINCT dialogue_id FROM samples "
            "WHERE run_id = ? AND status = 'ok' AND cut_off = 1",
            (run_id,),
        )
        return {str(r[0]) for r in rows}

    def server_tool_uses(self, run_id: str) -> dict[str, int]:
        """The server tools' uses (web searches, ...) the run's answers report, summed:
        a tool run's final answer carries those of all its turns."""
        totals: dict[str, int] = {}
        rows = self._all(
            "SELECT payload FROM events WHERE run_id = ? AND type = ?",
            (run_id, ResponseReceived.type),
        )
        for (payload,) in rows:
            uses = (loads(payload).get("metadata") or {}).get("server_tool_use")
            for name, count in (uses or {}).items() if isinstance(uses, dict) else ():
                if isinstance(count, int):
                    totals[name] = totals.get(name, 0) + count
        return totals

    def sample_totals(self, run_id: str) -> list[SampleTotals]:
        """Per answered sample, its repeats summed: its answers, fact coverage, refusals
        and the tokens those paid for by class (a reused answer paid nothing, as in
        sample_stats)."""
        paid = " ".join(
            f"sum(CASE WHEN reused = 1 THEN 0 ELSE {column} END),"
            for column in (
                "input_tokens",
                "cache_write_5m_tokens",
                "cache_write_1h_tokens",
                "cache_read_tokens",
                "output_tokens",
            )
        )
        rows = self._all(
            f"SELECT dialogue_id, count(*), sum(fact_coverage), sum(refused), {paid[:-1]} "  # noqa: S608
            "FROM samples WHERE run_id = ? AND status = 'ok' GROUP BY dialogue_id",
            (run_id,),
        )
        return [
            SampleTotals(
                r[0], int(r[1]), float(r[2] or 0.0), int(r[3] or 0), *(int(v or 0) for v in r[4:])
            )
            for r in rows
        ]

    def scored_responses(self, run_id: str) -> Iterator[ScoredResponse]:
        """Each answered sample's response with its recorded scores, in dataset order."""
        with self.engine.connect() as conn:
            result = stream(
                conn,
                "SELECT e.type, e.payload, s.fact_coverage, s.refused, s.facts_missing "
                "FROM samples s JOIN events e ON e.id = s.response_event_id "
                "WHERE s.run_id = ? AND s.status = 'ok' ORDER BY s.idx",
                (run_id,),
            )
            while rows := result.fetchmany(FETCH):
                for type_, payload, coverage, refused, missing in rows:
                    response = from_row(type_, payload)
                    assert isinstance(response, ResponseReceived)
                    yield ScoredResponse(
                        response, coverage, bool(refused), loads(missing) if missing else []
                    )

    def facts_missing(self, run_id: str, dialogue_ids: list[str]) -> dict[str, list[str]]:
        """The facts each of these answered samples missed, as recorded."""
        if not dialogue_ids:
            return {}
        marks = ", ".join("?" * len(dialogue_ids))
        rows = self._all(
            f"SELECT dialogue_id, facts_missing FROM samples "
            f"WHERE run_id = ? AND status = 'ok' AND dialogue_id IN ({marks})",
            (run_id, *dialogue_ids),
        )
        return {r[0]: loads(r[1]) if r[1] else [] for r in rows}

    # -- a run's recorded inputs -----------------------------------------------

    def run_started(self, run_id: str) -> RunStarted | None:
        rows = self._all(
            "SELECT type, payload FROM events WHERE run_id = ? AND type = ? "
            "ORDER BY seq LIMIT 1",  # the run's first event: the scan stops there
            (run_id, RunStarted.type),
        )
        if not rows:
            return None
        started = from_row(rows[0][0], rows[0][1])
        assert isinstance(started, RunStarted)
        return started

    def snapshot_event_ids(self, run_id: str) -> dict[type[Event], list[int]]:
        """Ids of the run's DatasetChunk and MockChunk events, in order, by class."""
        ids: dict[type[Event], list[int]] = {DatasetChunk: [], MockChunk: []}
        for id_, type_ in self._all(
            "SELECT id, type FROM events WHERE run_id = ? AND type IN (?, ?) ORDER BY seq",
            (run_id, *type_names(ids)),
        ):
            ids[EVENT_TYPES[type_]].append(int(id_))
        return ids

    def event_at(self, event_id: int) -> Event:
        [(type_, payload)] = self._all("SELECT type, payload FROM events WHERE id = ?", (event_id,))
        return from_row(type_, payload)

    # -- experiments -------------------------------------------------

    def runs_of_model(self, model: str, mode: str) -> list[str]:
        """Runs that asked this model in this mode: where an identical request may be."""
        rows = self._all(
            "SELECT run_id FROM runs WHERE model = ? AND mode = ? ORDER BY created_at, run_id",
            (model, mode),
        )
        return [str(r[0]) for r in rows]

    def answered_slots(self, run_id: str) -> list[tuple[int, int, int]]:
        """(dataset position, repeat, response event id) of each answered pair."""
        rows = self._all(
            "SELECT r.repeats, s.idx, s.repeat, s.response_event_id "
            "FROM samples s JOIN runs r ON r.run_id = s.run_id "
            "WHERE s.run_id = ? AND s.status = 'ok'",
            (run_id,),
        )
        return [(int(idx) // int(k), int(rep), int(ev)) for k, idx, rep, ev in rows]

    def experiment_record(self, experiment_id: str) -> ExperimentStarted | None:
        """The matrix experiment recorded under this id, if there is one."""
        rows = self._all(
            "SELECT type, payload FROM events WHERE run_id = ? AND seq = 1 AND type = ?",
            (experiment_id, ExperimentStarted.type),
        )
        if not rows:
            return None
        record = from_row(rows[0][0], rows[0][1])
        assert isinstance(record, ExperimentStarted)
        return record

    def durations(self, run_id: str) -> list[float]:
        """The recorded duration of each session that finished the run."""
        rows = self._all(
            "SELECT type, payload FROM events WHERE run_id = ? AND type = ? ORDER BY seq",
            (run_id, RunFinished.type),
        )
        out = []
        for type_, payload in rows:
            finished = from_row(type_, payload)
            assert isinstance(finished, RunFinished)
            out.append(finished.duration_s)
        return out


_RUN_COLUMNS = (
    "SELECT run_id, experiment_id, model, mode, status, samples_total, created_at, repeats "
    "FROM runs"
)
