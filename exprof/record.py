"""Reading a recorded run back from its events: config, dataset snapshot, mock answers.

A run is self-contained: resume, export, summarize and compare read it from here and
never need the original YAML, dataset or mock file again.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import Any

from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.events import RunStarted
from exprof.jsonio import loads
from exprof.store import Store

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
    with store.engine.connect() as conn:
        payload = conn.exec_driver_sql(
            "SELECT payload FROM events WHERE run_id = ? AND type = 'run_started' "
            "ORDER BY seq LIMIT 1",  # the run's first event: the scan stops there
            (run_id,),
        ).scalar()
    if payload is None:
        raise ExprofError(f"{store.location}: run {run_id!r} has no run_started event")
    return RunStarted.from_payload(loads(payload))


def iter_samples(store: Store, run_id: str) -> Iterator[Sample]:
    """The dataset snapshot in order, streamed chunk by chunk."""
    for ev in store.events(run_id, types=("dataset_chunk",), batch=1):  # ~1 MB each
        for row in ev.payload["samples"]:
            yield Sample.from_payload(row)


def load_run(store: Store, run_id: str, positions: Container[int] | None = None) -> RunRecord:
    """The run's start and dataset snapshot; with `positions` (dataset indexes), only the
    chunks holding them are parsed and only those samples kept, so a resume of a large
    run starts sending at once."""
    started = load_started(store, run_id)
    with store.engine.connect() as conn:
        chunk_ids = [
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT id FROM events WHERE run_id = ? AND type = 'dataset_chunk' ORDER BY seq",
                (run_id,),
            )
        ]
    size = started.snapshot_chunk
    if positions is not None:
        wanted = {i // size for i in positions}  # type: ignore[attr-defined]
        chunk_ids = [cid for k, cid in enumerate(chunk_ids) if k in wanted]
    samples: list[Sample] = []
    mocks: dict[str, dict[str, Any]] = {}
    for chunk_id in chunk_ids:
        with store.engine.connect() as conn:
            text = conn.exec_driver_sql(
                "SELECT payload FROM events WHERE id = ?", (chunk_id,)
            ).scalar_one()
        chunk = loads(text)
        for i, row in enumerate(chunk["samples"], start=chunk["start"]):
            if positions is not None and i not in positions:
                continue
            samples.append(Sample.from_payload(row))
            if "mock" in row:
                mocks[row["dialogue_id"]] = row["mock"]
    return RunRecord(started, samples, mocks, partial=positions is not None)
