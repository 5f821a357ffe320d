"""The mock loop: answers from the config's mock file, or, for a rescore, the answers
another run recorded. Thousands of answers per transaction; a stop signal lands
between transactions, never inside one."""

from __future__ import annotations

from typing import Any

from exprof.clients.mock import MockClient
from exprof.clients.outcome import Response
from exprof.clients.replay import ReplayClient
from exprof.dataset import Sample
from exprof.export import StreamedExport
from exprof.heap import collector_paused
from exprof.run.session import Session
from exprof.run.tools import drive
from exprof.store.record import recorded_responses, rescore_source

MOCK_BATCH = 2000  # mock samples per transaction


def run_mock(
    session: Session, pending: list[Sample], streamed: StreamedExport | None = None
) -> None:
    """Answer and record `pending`; `streamed` receives each sample's events as well."""
    store, record = session.store, session.run
    config = session.config
    client: MockClient | ReplayClient = MockClient(
        record.mocks, config.max_tokens, config.sent_params("mock")
    )
    if record.started.mode == "rescore":
        source = rescore_source(store, record.run_id).source_run_id
        client = ReplayClient(source, recorded_responses(store, source))
        session.budget = None  # a rescore pays for nothing: its answers are recorded ones
    if session.budget is not None:  # mock answers carry usage: held to budget_usd like live
        pending = session.budget.affordable(record.run_id, pending, lambda s: _usage(client, s))
    # A rescore replays each sample's final answer: its tool loop is recorded already.
    tools = session.tools if isinstance(client, MockClient) else None
    for start in range(0, len(pending), MOCK_BATCH):
        with collector_paused():
            for sample in pending[start : start + MOCK_BATCH]:
                session.check_signals()  # a slow custom metric: a stop lands within one answer
                if tools is None:
                    events = session.record(sample, client.complete(sample))
                else:  # the tool loop: its turns are queued before the answer
                    outcome, turns = drive(session.trajectory(sample), tools, client.complete)
                    for turn in turns:
                        session.record_turn(turn)
                    events = session.record(sample, outcome)
                if streamed is not None:
                    streamed.add(sample, events)
            session.flush()  # the chunk's events are freed here, while the collector looks away
        session.show()


def _usage(client: MockClient | ReplayClient, sample: Sample) -> dict[str, Any]:
    """The metadata the mock will record for `sample`, as it will be cut off at
    max_tokens: what the budget counts before dispatching it."""
    outcome = client.complete(sample)
    return outcome.metadata if isinstance(outcome, Response) else {}
