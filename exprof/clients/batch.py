"""The Message Batches client, on the official SDK's `messages.batches`.

Create bodies are streamed (one request serialised at a time, through the SDK's `post`
with an iterable body) and results are read line by line from the SDK's streaming
response, so neither is ever held whole. Every request's custom_id names the run, the
intent that sent it and the sample's dataset position (`<tag>-<intent>-<position>`), so
results join back to samples whatever the dialogue ids are, and results of a batch that
is not ours are ignored.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from exprof.clients import sanitize
from exprof.clients.credentials import redact
from exprof.clients.live import answer_response, build_request
from exprof.clients.outcome import Failure, Outcome
from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.files import env_number

MAX_REQUESTS = 100_000  # the API's limits on one batch
MAX_BYTES = 256 * 1024 * 1024
BODY_OVERHEAD = len(b'{"requests":[]}')
# A batch created at most this long before its intent's clock reading is still ours:
# room for skew between this machine's clock and the API's.
LIST_SKEW_S = 300.0
LIST_PAGE = 100
# The API's list may lag a create call, and a create call cut off by a crash may still
# finish on the server. So an intent whose batch is not (yet) listed is voided only once
# this long has passed since its clock reading; until then a resume lists again.
LIST_SETTLE_S = 120.0
SETTLE_ENV = "EXPROF_BATCH_LIST_SETTLE_S"  # tests shorten it; so may a user in a hurry
# Per-request errors worth sending again; anything else is the request's own fault.
RETRYABLE_ERRORS = {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}


def list_settle_s() -> float:
    return env_number(SETTLE_ENV, LIST_SETTLE_S, float, 0)


def run_tag(run_id: str) -> str:
    """Eight hex digits naming the run inside every custom_id."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


def custom_id(tag: str, intent: int, position: int) -> str:
    return f"{tag}-{intent}-{position}"


def parse_custom_id(value: str, tag: str) -> tuple[int, int] | None:
    """(intent, position) of one of our custom_ids, else None."""
    parts = value.split("-")
    if len(parts) != 3 or parts[0] != tag or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


def batch_params(config: Config, sample: Sample) -> dict[str, Any]:
    """A batch request's params: the live request's body, with sampling parameters (only
    there where the configured API version takes them) moved into it; the create call
    sends that version."""
    params = build_request(config, sample)
    params.pop("extra_headers", None)
    params.update(params.pop("extra_body", {}))
    return params


def request_line(config: Config, tag: str, intent: int, position: int, sample: Sample) -> bytes:
    return orjson.dumps(
        {"custom_id": custom_id(tag, intent, position), "params": batch_params(config, sample)}
    )


def create_body(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The create call's JSON body, one request at a time."""
    yield b'{"requests":['
    for k, line in enumerate(lines):
        yield line if k == 0 else b"," + line
    yield b"]}"


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    status: str  # in_progress / canceling / ended
    counts: dict[str, int]
    created_at: str

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def created_epoch(self) -> float:
        return datetime.datetime.fromisoformat(self.created_at.replace("Z", "+00:00")).timestamp()


def outcome_of(result: dict[str, Any], config: Config, attempts: int) -> Outcome | str:
    """A result line's Response, or the Failure to record, or the reason ("errored",
    "expired", "canceled") to send it again."""
    kind = result.get("type")
    if kind == "succeeded":
        try:
            answer = sanitize.message(result.get("message"))
        except sanitize.Garbage as exc:
            return Failure("InvalidResponse", str(exc), None, attempts)
        return answer_response(answer, config)
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or {}
        error_type = str(error.get("type", "api_error"))
        if error_type in RETRYABLE_ERRORS and attempts <= config.max_retries:
            return "errored"
        return Failure(error_type, redact(str(error.get("message", ""))), None, attempts)
    if kind in ("expired", "canceled") and attempts <= config.max_retries:
        return str(kind)
    return Failure(f"batch_{kind}", f"the request {kind} in {attempts} batch(es)", None, attempts)


class BatchClient:
    """The five calls a batch run makes, with API errors turned into ExprofError lines."""

    def __init__(self, config: Config) -> None:
        import anthropic

        self.anthropic = anthropic
        self.config = config
        # Reads are idempotent, so the SDK may retry them; the create call is never
        # retried blindly (see create).
        self.client = anthropic.Anthropic(
            base_url=os.environ.get("ANTHROPIC_BASE_URL") or None,
            max_retries=min(config.max_retries, 4),
            timeout=max(config.timeout_s, 60.0),
        )
        self.headers = {"anthropic-version": config.api_version} if config.sends_temperature else {}

    def create(self, body: Iterator[bytes]) -> BatchInfo:
        """Create a batch from a streamed body. Not retried here: a failure may still
        have created it, so the caller reconciles with the list first."""
        batch = self.client.post(
            "/v1/messages/batches",
            cast_to=self.anthropic.types.messages.MessageBatch,
            content=body,
            options={
                "headers": {"content-type": "application/json", **self.headers},
                "max_retries": 0,
            },
        )
        return _info(batch)

    def retrieve(self, batch_id: str) -> BatchInfo:
        return _info(self.client.messages.batches.retrieve(batch_id))

    def list_since(self, not_before: float) -> Iterator[BatchInfo]:
        """The workspace's batches created since `not_before` (less the skew), newest first."""
        for batch in self.client.messages.batches.list(limit=LIST_PAGE):
            info = _info(batch)
            if info.created_epoch < not_before - LIST_SKEW_S:
                return
            yield info

    def cancel(self, batch_id: str) -> BatchInfo:
        return _info(self.client.messages.batches.cancel(batch_id))

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The ended batch's result lines, parsed one at a time as they stream in. A line
        that is not a JSON object names no request of ours and is passed over (that
        request stays unanswered); a stream that cannot be read to its end (an error
        status, a refused connection, a cut) raises ResultsBroken after the lines read."""
        try:
            with self.client.messages.batches.with_streaming_response.results(batch_id) as response:
                for line in response.iter_lines():
                    try:
                        row = orjson.loads(line) if line.strip() else None
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(row, dict):
                        yield row
        except (self.anthropic.APIError, OSError, ValueError) as exc:
            raise ResultsBroken(redact(f"{type(exc).__name__}: {exc}")) from None
        except Exception as exc:  # the HTTP library's own stream errors (a cut body)
            if type(exc).__module__.split(".")[0] not in _HTTP_MODULES:
                raise
            raise ResultsBroken(redact(f"{type(exc).__name__}: {exc}")) from None

    def close(self) -> None:
        self.client.close()

    def describe_error(self, exc: Exception) -> str | None:
        """A one-line cause for an API error worth stopping on; None for one worth
        waiting out (connection trouble, 429, 5xx)."""
        if isinstance(exc, self.anthropic.APIStatusError):
            if exc.status_code == 429 or exc.status_code >= 500:
                return None
            return redact(f"{exc.status_code} from the Message Batches API: {exc.message}")
        if isinstance(exc, self.anthropic.APIConnectionError):
            return None
        return None


def _info(batch: Any) -> BatchInfo:
    counts = batch.request_counts
    created = batch.created_at
    created_at = created.isoformat() if isinstance(created, datetime.datetime) else str(created)
    return BatchInfo(
        batch.id,
        batch.processing_status,
        {
            "processing": counts.processing,
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
        },
        created_at,
    )


class ResultsBroken(Exception):
    """A batch's results could not be read to their end; what was read stands."""


# The packages whose exceptions a broken results stream raises through the SDK.
_HTTP_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "h11")


def api_errors(client: BatchClient) -> tuple[type[Exception], ...]:
    return (client.anthropic.APIStatusError, client.anthropic.APIConnectionError)


def stop_on(client: BatchClient, exc: Exception) -> None:
    """Raise the one-line error for an API error that waiting will not fix."""
    cause = client.describe_error(exc)
    if cause is not None:
        raise ExprofError(cause) from None
