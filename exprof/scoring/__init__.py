"""The one place a completion is scored: a sample's outcome becomes its events."""

from __future__ import annotations

from exprof.clients.outcome import Failure, Outcome
from exprof.dataset import Sample
from exprof.scoring import builtin
from exprof.store.events import Event, RequestSent, ResponseReceived, SampleFailed, SampleScored


def sample_events(sample: Sample, outcome: Outcome) -> list[Event]:
    """The events that record one sample's request and its outcome, scored."""
    sent = RequestSent(sample.dialogue_id, getattr(outcome, "attempts", 1))
    if isinstance(outcome, Failure):
        return [
            sent,
            SampleFailed(
                sample.dialogue_id,
                outcome.error_class,
                outcome.message,
                outcome.status,
                outcome.attempts,
            ),
        ]
    coverage, missing = builtin.score(outcome.completion, sample.required_facts)
    refused = builtin.is_refusal(outcome.completion, outcome.metadata)
    return [
        sent,
        ResponseReceived(sample.dialogue_id, outcome.completion, outcome.metadata),
        SampleScored(sample.dialogue_id, coverage, refused, missing),
    ]
