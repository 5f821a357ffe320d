"""The event types: small frozen dataclasses, each with a payload round-trip.

A run is the ordered list of its events. Everything else (state, summary, exports,
comparisons, resume plans) is derived from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple, Self

from exprof.jsonio import loads


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = ""

    def to_payload(self) -> dict[str, Any]:
        # A shallow copy: asdict's deep copy costs more than the rest of a mock sample.
        payload = dict(self.__dict__)
        if payload.get("repeat") == 0:  # a run without repeats records what it always did
            del payload["repeat"]
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Self:
        names = _field_names(cls)
        return cls(**{k: v for k, v in payload.items() if k in names})


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    """Per class, once: every stored event read back (an export reads 100k) asks."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))
    return names


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
    # A matrix cell's place: {"experiment", "name", "params"}; absent from the
    # payload of a run outside an experiment, which records exactly what it always did.
    cell: dict[str, Any] | None = None
    # A live run's model entry from the Models API, as checked before it sent anything;
    # absent, like `cell`, where there is none.
    model_info: dict[str, Any] | None = None

    def to_payload(self) -> dict[str, Any]:
        payload = dict(self.__dict__)
        for key in ("cell", "model_info"):
            if payload[key] is None:
                del payload[key]
        return payload


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
    repeat: int = 0  # which of the run's repeats of the sample


@dataclass(frozen=True)
class ResponseReceived(Event):
    type: ClassVar[str] = "response_received"
    dialogue_id: str
    completion: str
    metadata: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0


@dataclass(frozen=True)
class SampleFailed(Event):
    type: ClassVar[str] = "sample_failed"
    dialogue_id: str
    error_class: str
    message: str
    status: int | None = None
    attempts: int = 1
    repeat: int = 0


@dataclass(frozen=True)
class SampleScored(Event):
    type: ClassVar[str] = "sample_scored"
    dialogue_id: str
    fact_coverage: float
    refused: bool
    facts_missing: list[str] = field(default_factory=list)
    # Custom metrics: absent from the payload when the config has none, so a
    # seed-only run records exactly what it always did.
    metrics: dict[str, Any] | None = None
    metric_errors: dict[str, str] | None = None
    repeat: int = 0

    def to_payload(self) -> dict[str, Any]:
        payload = super().to_payload()
        for key in ("metrics", "metric_errors"):
            if payload[key] is None:
                del payload[key]
        return payload


@dataclass(frozen=True)
class JudgeRequestSent(Event):
    """A grader model's prompt for one sample and one judge metric."""

    type: ClassVar[str] = "judge_request_sent"
    dialogue_id: str
    metric: str
    model: str
    system: str
    user: str
    repeat: int = 0  # which repeat's answer is graded


@dataclass(frozen=True)
class JudgeScored(Event):
    """The grader's reply (or failure) and the score parsed from it; `value` is None when
    the request failed or the reply held no score, with the reason in `error`."""

    type: ClassVar[str] = "judge_scored"
    dialogue_id: str
    metric: str
    reply: str | None
    metadata: dict[str, Any]
    value: float | None
    error: str | None = None
    repeat: int = 0


@dataclass(frozen=True)
class TurnRecorded(Event):
    """One request of a sample's tool loop and what came of it: the messages it added to
    the conversation (`sent`: the sample's own turns first, then the tool results), the
    answer's content blocks, the results of its tool calls (none on the last turn), its
    usage and stop reason. A resume rebuilds the conversation from these and sends only
    the next turn."""

    type: ClassVar[str] = "turn_recorded"
    dialogue_id: str
    turn: int  # 1, 2, ...: the sample's requests to the model
    sent: list[dict[str, Any]]
    received: list[dict[str, Any]]
    tool_results: list[dict[str, Any]]
    usage: dict[str, Any]
    stop_reason: str | None
    repeat: int = 0


@dataclass(frozen=True)
class RescoreStarted(Event):
    """A rescore run: which run's recorded responses it reuses, and how its
    config differs from that run's."""

    type: ClassVar[str] = "rescore_started"
    source_run_id: str
    config_diff: dict[str, Any]


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


@dataclass(frozen=True)
class BatchIntent(Event):
    """Written before a Message Batches create call: which samples the batch
    will carry, as [start, stop) position ranges, and a lower bound on its creation time,
    so that a resume after a crash between the call and BatchSubmitted can find the batch
    in the API's list (by creation time and request count) instead of paying again."""

    type: ClassVar[str] = "batch_intent"
    intent: int  # 1, 2, ... within the run; part of every custom_id it sends
    ranges: list[list[int]]
    requests: int
    body_bytes: int
    not_before: float  # epoch seconds, taken before the create call


@dataclass(frozen=True)
class BatchSubmitted(Event):
    """The batch an intent created; `adopted` when a resume found it in the API's list."""

    type: ClassVar[str] = "batch_submitted"
    intent: int
    batch_id: str
    created_at: str
    requests: int
    adopted: bool = False


@dataclass(frozen=True)
class BatchVoided(Event):
    """An intent that created no batch (the create call failed, or a resume found nothing
    in the list): its samples are sent again under a new intent."""

    type: ClassVar[str] = "batch_voided"
    intent: int
    reason: str


@dataclass(frozen=True)
class BatchPolled(Event):
    """A batch's processing status and request counts, when they changed (for `runs`)."""

    type: ClassVar[str] = "batch_polled"
    batch_id: str
    status: str
    counts: dict[str, int]


@dataclass(frozen=True)
class BatchEnded(Event):
    """Every result of the batch is recorded (or queued to be sent again)."""

    type: ClassVar[str] = "batch_ended"
    batch_id: str
    counts: dict[str, int]


@dataclass(frozen=True)
class BatchCancelled(Event):
    """`exprof cancel`: these batches were cancelled on purpose, so their canceled
    requests are recorded as failures instead of being sent again."""

    type: ClassVar[str] = "batch_cancelled"
    batch_ids: list[str]


BATCH_EVENTS = (BatchIntent, BatchSubmitted, BatchVoided, BatchPolled, BatchEnded, BatchCancelled)


@dataclass(frozen=True)
class ExperimentStarted(Event):
    """A matrix experiment's record, the first event of its own stream (keyed
    by the experiment id): the config, the mode, and each cell's name, parameters and run
    id, written before any cell starts so that resume knows every cell."""

    type: ClassVar[str] = "experiment_started"
    experiment_id: str
    mode: str
    config: dict[str, Any]
    cells: list[dict[str, Any]]


@dataclass(frozen=True)
class SequentialStarted(Event):
    """A sequential A/B experiment (`run --versus --stop-when-decided`), the second event
    of its stream: both arms' configs, the metric whose paired differences (B - A, in
    [low, high]) feed the confidence sequence, its alpha and min_effect, and the seeded
    order of dataset positions in which the pairs are dispatched and observed."""

    type: ClassVar[str] = "sequential_started"
    metric: str
    low: float
    high: float
    alpha: float
    min_effect: float | None
    seed: int
    order: list[int]
    configs: dict[str, dict[str, Any]]  # the arms' configs, by cell name


@dataclass(frozen=True)
class SequentialStopped(Event):
    """Why a sequential A/B experiment stopped dispatching: decided (and which arm wins),
    equivalent, or undecided (dataset or budget_usd ran out), after `pairs_used` pairs
    of `order`, with the sequence's interval for the mean difference B - A."""

    type: ClassVar[str] = "sequential_stopped"
    verdict: str
    winner: str | None
    pairs_used: int
    interval: list[float]
    seed: int
    order: list[int]
    reason: str


@dataclass(frozen=True)
class ResponseReused(ResponseReceived):
    """An answer taken from the store instead of sent (`cache: true`): the
    identical request's recorded answer, copied, with the id of the event that first
    recorded it. It counts as the sample's response everywhere a response does."""

    type: ClassVar[str] = "response_reused"
    source_event_id: int = 0


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
        JudgeRequestSent,
        JudgeScored,
        TurnRecorded,
        RescoreStarted,
        RunInterrupted,
        RunFinished,
        *BATCH_EVENTS,
        ExperimentStarted,
        SequentialStarted,
        SequentialStopped,
        ResponseReused,
    )
}


def event_hash(previous: str, type_: str, payload: str) -> str:
    """One link of a run's hash chain over the stored bytes: editing any event breaks
    the link that covers it (and a rewrite of the links breaks at the next honest one)."""
    return chain_link(previous, type_, payload.encode())


def chain_link(previous: str, type_: str, payload: bytes) -> str:
    """event_hash of a payload held as its UTF-8 bytes (an append encodes each once)."""
    return hashlib.sha256(b"%s\n%s\n%s" % (previous.encode(), type_.encode(), payload)).hexdigest()


def type_names(classes: Iterable[type[Event]]) -> tuple[str, ...]:
    """The type strings the events table stores for these event classes (each class's
    own, never its subclasses')."""
    return tuple(cls.type for cls in classes)


def from_row(type_: str, payload: str) -> Event:
    """A stored row's type and payload text as its typed event; an unknown type is a
    damaged store."""
    cls = EVENT_TYPES.get(type_)
    if cls is None:
        raise ValueError(f"unknown event type {type_!r}")
    return cls.from_payload(loads(payload))


class StoredEvent(NamedTuple):
    """An event with its place in the store: global id, run, per-run seq, time. A named
    tuple, not a frozen dataclass: an append makes one per event, and a frozen
    dataclass's __init__ cost a 100k-sample mock run over a second."""

    id: int
    run_id: str
    seq: int
    event: Event
    created_at: float

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def payload(self) -> dict[str, Any]:
        return self.event.to_payload()


# The columns of an events row that make a StoredEvent, in its field order.
STORED_COLUMNS = "id, run_id, seq, type, payload, created_at"


def stored_from_row(row: Sequence[Any]) -> StoredEvent:
    """A row of STORED_COLUMNS as its StoredEvent."""
    id_, run_id, seq, type_, payload, created_at = row
    return StoredEvent(id_, run_id, seq, from_row(type_, payload), created_at)
