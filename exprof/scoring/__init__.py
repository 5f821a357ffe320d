"""The one place a completion is scored: a sample's outcome becomes its events."""

from __future__ import annotations

from collections.abc import Sequence

from exprof.clients.outcome import Failure, Outcome
from exprof.dataset import Sample
from exprof.jsonio import dumps, loads
from exprof.scoring import builtin, custom
from exprof.store.events import (
    Event,
    RequestSent,
    ResponseReceived,
    ResponseReused,
    SampleFailed,
    SampleScored,
)


def sample_events(
    sample: Sample,
    outcome: Outcome,
    metrics: Sequence[custom.Metric] = (),
    reused_from: int | None = None,
) -> list[Event]:
    """The events that record one sample's request and its outcome, scored with the
    built-in metrics and `metrics`, the config's custom ones (see custom.build). With
    `reused_from`, the outcome is the answer recorded by that event, taken instead of
    sending: no request, a ResponseReused, and the scores as usual."""
    repeat = sample.repeat
    sent = RequestSent(sample.dialogue_id, getattr(outcome, "attempts", 1), repeat)
    if isinstance(outcome, Failure):
        return [
            sent,
            SampleFailed(
                sample.dialogue_id,
                outcome.error_class,
                outcome.message,
                outcome.status,
                outcome.attempts,
                repeat,
            ),
        ]
    coverage, missing = builtin.score(outcome.completion, sample.required_facts)
    refused = builtin.is_refusal(outcome.completion, outcome.metadata)
    values = errors = None
    if metrics:
        # A deep copy (through JSON, which it is: 5x quicker than copy.deepcopy): the
        # repeats of a mock sample share one metadata dict, and a metric that changed it
        # would change what the other repeats record.
        metadata = loads(dumps(outcome.metadata))
        values, errors = custom.evaluate(metrics, sample.to_payload(), outcome.completion, metadata)
    scored = SampleScored(
        sample.dialogue_id, coverage, refused, missing, values, errors or None, repeat
    )
    if reused_from is not None:
        args = (sample.dialogue_id, outcome.completion, outcome.metadata, repeat)
        return [ResponseReused(*args, source_event_id=reused_from), scored]
    return [
        sent,
        ResponseReceived(sample.dialogue_id, outcome.completion, outcome.metadata, repeat),
        scored,
    ]
