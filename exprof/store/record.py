"""Reading a recorded run back from its events: config, dataset snapshot, mock answers.

A run is self-contained: resume, export, summarize and compare read it from here and
never need the original YAML, dataset or mock file again.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.store.engine import Store
from exprof.store.events import (
    DatasetChunk,
    MockChunk,
    RescoreStarted,
    ResponseReceived,
    ResponseReused,
    RunStarted,
    SequentialStarted,
    SequentialStopped,
    TurnRecorded,
)

SNAPSHOT_CHUNK = 2000


@dataclass(frozen=True)
class RunRecord:
    started: RunStarted
    samples: list[Sample]
    mocks: dict[str, dict[str, Any]]
    partial: bool = False  # samples holds only some of the dataset

    @property
    def run_id(self) -> str:
        return self.started.run_id

    @property
    def config(self) -> Config:
        return Config.from_dict(self.started.config)


def snapshot(
    samples: Iterable[Sample], mocks: dict[str, dict[str, Any]] | None
) -> Iterator[DatasetChunk | MockChunk]:
    """The dataset as DatasetChunk events; in mock mode each is followed by its answers.
    `samples` is consumed a chunk at a time (a streamed dataset is never held)."""
    it = iter(samples)
    start = 0
    while chunk := list(itertools.islice(it, SNAPSHOT_CHUNK)):
        yield DatasetChunk(start, [sample.to_payload() for sample in chunk])
        if mocks is not None:
            answers = {s.dialogue_id: mocks[s.dialogue_id] for s in chunk if s.dialogue_id in mocks}
            yield MockChunk(start, answers)
        start += len(chunk)


def require_run(store: Store, run_id: str) -> None:
    store.require_run(run_id)


def load_started(store: Store, run_id: str) -> RunStarted:
    store.require_run(run_id)
    started = store.run_started(run_id)
    if started is None:
        raise ExprofError(f"{store.location}: run {run_id!r} has no run_started event")
    return started


def iter_samples(store: Store, run_id: str) -> Iterator[Sample]:
    """The dataset snapshot in order, streamed chunk by chunk."""
    for stored in store.events(run_id, types=(DatasetChunk,), batch=1):  # ~1 MB each
        chunk = stored.event
        assert isinstance(chunk, DatasetChunk)
        for row in chunk.samples:
            yield Sample.from_payload(row)


def load_run(store: Store, run_id: str, positions: Container[int] | None = None) -> RunRecord:
    """The run's start and dataset snapshot; with `positions` (dataset indexes), only the
    chunks holding them are parsed and only those samples kept, so a resume of a large
    run starts sending at once."""
    started = load_started(store, run_id)
    chunk_ids = store.snapshot_event_ids(run_id)
    size = started.snapshot_chunk
    wanted = range(len(chunk_ids[DatasetChunk]))
    if positions is not None:
        wanted = sorted({i // size for i in positions})  # type: ignore[attr-defined,assignment]
    samples: list[Sample] = []
    mocks: dict[str, dict[str, Any]] = {}
    for k in wanted:
        chunk = store.event_at(chunk_ids[DatasetChunk][k])
        assert isinstance(chunk, DatasetChunk)
        for i, row in enumerate(chunk.samples, start=chunk.start):
            if positions is None or i in positions:
                samples.append(Sample.from_payload(row))
        if chunk_ids[MockChunk]:
            answers = store.event_at(chunk_ids[MockChunk][k])
            assert isinstance(answers, MockChunk)
            mocks.update(answers.answers)
    return RunRecord(started, samples, mocks, partial=positions is not None)


class SnapshotReader:
    """A run's samples by dataset position, read from its snapshot a chunk at a time: a
    batch run of a million samples looks them up here instead of holding them."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.chunk_ids = store.snapshot_event_ids(run_id)[DatasetChunk]
        self.size = load_started(store, run_id).snapshot_chunk
        self.cached: tuple[int, list[dict[str, Any]]] = (-1, [])

    def _rows(self, k: int) -> list[dict[str, Any]]:
        if self.cached[0] != k:
            chunk = self.store.event_at(self.chunk_ids[k])
            assert isinstance(chunk, DatasetChunk)
            self.cached = (k, chunk.samples)
        return self.cached[1]

    def get(self, position: int) -> Sample:
        """One sample; reading positions in order parses each chunk once."""
        return Sample.from_payload(self._rows(position // self.size)[position % self.size])

    def many(self, positions: Iterable[int], prompts: bool = True) -> dict[int, Sample]:
        """The samples at `positions` (ascending), by position; without `prompts`, only
        what the built-in scores read (id and facts), a third of the memory."""
        out: dict[int, Sample] = {}
        facts: dict[str, str] = {}  # a dataset's facts repeat: share one string each
        for position in positions:
            row = self._rows(position // self.size)[position % self.size]
            if prompts:
                out[position] = Sample.from_payload(row)
            else:
                kept = tuple(facts.setdefault(f, f) for f in row["required_facts"])
                out[position] = Sample(row["dialogue_id"], "", "", kept)
        return out


def recorded_responses(
    store: Store, run_id: str
) -> dict[tuple[str, int], tuple[str, dict[str, Any]]]:
    """Every answer the run holds, received or reused from the store:
    (dialogue_id, repeat) -> (completion, metadata)."""
    out: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
    for stored in store.events(run_id, types=(ResponseReceived, ResponseReused), batch=5000):
        event = stored.event
        assert isinstance(event, ResponseReceived)
        out[event.dialogue_id, event.repeat] = (event.completion, event.metadata)
    return out


def recorded_turns(store: Store, run_id: str) -> dict[tuple[str, int], list[TurnRecorded]]:
    """Every tool-loop turn the run holds, by (dialogue_id, repeat), in turn order; a
    turn number recorded twice (two workers on one sample) counts once, the first."""
    out: dict[tuple[str, int], list[TurnRecorded]] = {}
    for stored in store.events(run_id, types=(TurnRecorded,), batch=5000):
        event = stored.event
        assert isinstance(event, TurnRecorded)
        turns = out.setdefault((event.dialogue_id, event.repeat), [])
        if all(t.turn != event.turn for t in turns):
            turns.append(event)
    for turns in out.values():
        turns.sort(key=lambda t: t.turn)
    return out


def tool_stats(store: Store, run_id: str) -> dict[str, Any]:
    """A tool run's summary fields, from its answers: the mean turns per answer, the tool
    error rate (error results over tool calls) and the share cut off by max_turns."""
    answers = turns = calls = errors = cut_off = 0
    for _, metadata in recorded_responses(store, run_id).values():
        answers += 1
        turns += metadata.get("turns", 1)
        calls += len(metadata.get("tool_calls", ()))
        errors += metadata.get("tool_errors", 0)
        cut_off += metadata.get("stop_reason") == "max_turns"
    return {
        "mean_turns": round(turns / answers, 4) if answers else None,
        "tool_calls": calls,
        "tool_error_rate": round(errors / calls, 4) if calls else 0.0,
        "max_turns_rate": round(cut_off / answers, 4) if answers else None,
    }


def rescore_source(store: Store, run_id: str) -> RescoreStarted:
    """A rescore run's source and config difference (its second event)."""
    for stored in store.events(run_id, types=(RescoreStarted,)):
        assert isinstance(stored.event, RescoreStarted)
        return stored.event
    raise ExprofError(f"{store.location}: run {run_id!r} is not a rescore run")


def sequential_events(
    store: Store, experiment_id: str
) -> tuple[SequentialStarted | None, SequentialStopped | None]:
    """A sequential A/B experiment's plan and its recorded stop (None: not one, or not
    stopped yet)."""
    started: SequentialStarted | None = None
    stopped: SequentialStopped | None = None
    for stored in store.events(experiment_id, types=(SequentialStarted, SequentialStopped)):
        if isinstance(stored.event, SequentialStarted):
            started = stored.event
        elif isinstance(stored.event, SequentialStopped):
            stopped = stored.event
    return started, stopped
