"""The event types: small frozen dataclasses, each with a payload round-trip.

A run is the ordered list of its events. Everything else (state, summary, exports,
comparisons, resume plans) is derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = ""

    def to_payload(self) -> dict[str, Any]:
        # A shallow copy: asdict's deep copy costs more than the rest of a mock sample.
        return dict(self.__dict__)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in names})


@dataclass(frozen=True)
class RunStarted(Event):
    """The run's identity and full config; the dataset follows in DatasetChunk events
    (and, in mock mode, each chunk's answers in a MockChunk)."""

    type: ClassVar[str] = "run_started"
    run_id: str
    experiment_id: str
    mode: str
    config: dict[str, Any]
    dataset_sha256: str
    samples_total: int
    sent_params: dict[str, Any]
    exprof_version: str
    snapshot_chunk: int = 2000  # samples per DatasetChunk: chunk k holds k*n .. k*n+n-1


@dataclass(frozen=True)
class DatasetChunk(Event):
    """A slice of the dataset snapshot, with each sample's mock answer in mock mode."""

    type: ClassVar[str] = "dataset_chunk"
    start: int
    samples: list[dict[str, Any]]


@dataclass(frozen=True)
class MockChunk(Event):
    """The mock's answers for one DatasetChunk, keyed by dialogue_id. Kept apart from the
    prompts so that exporting a run never has to parse them."""

    type: ClassVar[str] = "mock_chunk"
    start: int
    answers: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class RunResumed(Event):
    type: ClassVar[str] = "run_resumed"
    pid: int
    host: str
    retry_failed: bool = True


@dataclass(frozen=True)
class RequestSent(Event):
    type: ClassVar[str] = "request_sent"
    dialogue_id: str
    attempts: int = 1


@dataclass(frozen=True)
class ResponseReceived(Event):
    type: ClassVar[str] = "response_received"
    dialogue_id: str
    completion: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleFailed(Event):
    type: ClassVar[str] = "sample_failed"
    dialogue_id: str
    error_class: str
    message: str
    status: int | None = None
    attempts: int = 1


@dataclass(frozen=True)
class SampleScored(Event):
    type: ClassVar[str] = "sample_scored"
    dialogue_id: str
    fact_coverage: float
    refused: bool
    facts_missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunInterrupted(Event):
    type: ClassVar[str] = "run_interrupted"
    reason: str


@dataclass(frozen=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    completed: int
    failed: int
    duration_s: float


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        DatasetChunk,
        MockChunk,
        RunResumed,
        RequestSent,
        ResponseReceived,
        SampleFailed,
        SampleScored,
        RunInterrupted,
        RunFinished,
    )
}


def from_row(type_: str, payload: dict[str, Any]) -> Event:
    return EVENT_TYPES[type_].from_payload(payload)


@dataclass(frozen=True)
class StoredEvent:
    id: int
    run_id: str
    seq: int
    type: str
    payload: dict[str, Any]
    created_at: float
