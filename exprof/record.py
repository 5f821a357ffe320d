"""Reading a recorded run back from its events: config, dataset snapshot, mock answers.

A run is self-contained: resume, export, summarize and compare read it from here and
never need the original YAML, dataset or mock file again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.events import RunStarted
from exprof.store import Store

SNAPSHOT_CHUNK = 2000


@dataclass(frozen=True)
class RunRecord:
    started: RunStarted
    samples: list[Sample]
    mocks: dict[str, dict[str, Any]]

    @property
    def run_id(self) -> str:
        return self.started.run_id

    @property
    def config(self) -> Config:
        return Config.from_dict(self.started.config)


def snapshot_chunks(
    samples: list[Sample], mocks: dict[str, dict[str, Any]] | None
) -> Iterator[dict[str, Any]]:
    """The dataset as DatasetChunk payloads; in mock mode each sample carries its answer."""
    for start in range(0, len(samples), SNAPSHOT_CHUNK):
        rows = []
        for sample in samples[start : start + SNAPSHOT_CHUNK]:
            row = sample.to_payload()
            if mocks is not None and sample.dialogue_id in mocks:
                row["mock"] = mocks[sample.dialogue_id]
            rows.append(row)
        yield {"start": start, "samples": rows}


def require_run(store: Store, run_id: str) -> None:
    with store.engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).scalar()
    if not found:
        raise ExprofError(f"{store.location}: no run {run_id!r} (see `exprof runs`)")


def load_started(store: Store, run_id: str) -> RunStarted:
    require_run(store, run_id)
    for ev in store.events(run_id, types=("run_started",)):
        return RunStarted.from_payload(ev.payload)
    raise ExprofError(f"{store.location}: run {run_id!r} has no run_started event")


def iter_samples(store: Store, run_id: str) -> Iterator[Sample]:
    """The dataset snapshot in order, streamed chunk by chunk."""
    for ev in store.events(run_id, types=("dataset_chunk",), batch=1):  # ~1 MB each
        for row in ev.payload["samples"]:
            yield Sample.from_payload(row)


def load_run(store: Store, run_id: str) -> RunRecord:
    require_run(store, run_id)
    started: RunStarted | None = None
    samples: list[Sample] = []
    mocks: dict[str, dict[str, Any]] = {}
    for ev in store.events(run_id, types=("run_started", "dataset_chunk"), batch=1):
        if ev.type == "run_started":
            started = RunStarted.from_payload(ev.payload)
            continue
        for row in ev.payload["samples"]:
            samples.append(Sample.from_payload(row))
            if "mock" in row:
                mocks[row["dialogue_id"]] = row["mock"]
    if started is None:
        raise ExprofError(f"{store.location}: run {run_id!r} has no run_started event")
    return RunRecord(started, samples, mocks)
