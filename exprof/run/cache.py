"""Reusing recorded answers (`cache: true`): the cache is the event store.

A request is identical to a recorded one when the model, the parameters actually sent,
the system prompt, the user prompt, max_tokens and the API version are the same, and so
is the repeat index: repeat i reuses only repeat i of an earlier run, so K repeats stay
K independent draws. The reused answer is recorded as a ResponseReused event pointing at
the event that first recorded it, and scored as usual.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from exprof.clients.outcome import Response
from exprof.dataset import Sample
from exprof.jsonio import dumps
from exprof.store.engine import Store
from exprof.store.events import ResponseReceived, ResponseReused, RunStarted
from exprof.store.record import iter_samples

if TYPE_CHECKING:
    from exprof.run.session import Session


def _key(identity: tuple[str, str], repeat: int) -> str:
    system, user = identity
    return hashlib.sha256(f"{repeat}\x00{system}\x00{user}".encode()).hexdigest()


def request_identity(started: RunStarted) -> tuple[object, ...]:
    """What makes two runs' requests identical, apart from the prompts and the repeat:
    the mode, model, sent parameters, max_tokens and API version (a mock run sends no
    API version, so two mock runs match on the rest). `run --dry-run` asks it too."""
    config = started.config
    return (
        started.mode,
        config["model"],
        config["max_tokens"],
        dumps(dict(sorted(started.sent_params.items()))),
        config["api_version"] if started.mode == "live" else None,
    )


def find_sources(
    store: Store, started: RunStarted, pending: Iterable[Sample]
) -> dict[tuple[str, int], int]:
    """For each pending (dialogue_id, repeat) whose identical request was answered in an
    earlier run: the id of an event that recorded the answer. Reads only; `run --dry-run`
    asks it too, with the RunStarted the run would record."""
    wanted = {_key(s.identity(), s.repeat): (s.dialogue_id, s.repeat) for s in pending}
    found: dict[tuple[str, int], int] = {}
    for run_id in store.runs_of_model(started.config["model"], started.mode):
        if run_id == started.run_id or len(found) == len(wanted):
            continue
        other = store.run_started(run_id)
        if other is None or request_identity(started) != request_identity(other):
            continue
        answered: dict[int, list[tuple[int, int]]] = {}
        for position, repeat, event_id in store.answered_slots(run_id):
            answered.setdefault(position, []).append((repeat, event_id))
        if not answered:
            continue
        for position, sample in enumerate(iter_samples(store, run_id)):
            for repeat, event_id in answered.get(position, ()):
                slot = wanted.get(_key(sample.identity(), repeat))
                if slot is not None and slot not in found:
                    found[slot] = event_id
    return found


def find_answers(
    store: Store, started: RunStarted, pending: Iterable[Sample]
) -> dict[tuple[str, int], tuple[int, Response]]:
    """For each pending (dialogue_id, repeat) whose identical request was answered in an
    earlier run: the id of the event that first recorded the answer, and the answer."""
    out: dict[tuple[str, int], tuple[int, Response]] = {}
    for slot, event_id in find_sources(store, started, pending).items():
        event = store.event_at(event_id)
        assert isinstance(event, ResponseReceived)
        # Point at the answer's first record, not at an earlier reuse of it.
        source = event.source_event_id if isinstance(event, ResponseReused) else event_id
        out[slot] = (source, Response(event.completion, event.metadata))
    return out


def reuse(session: Session, pending: list[Sample]) -> list[Sample]:
    """Record the answers the store already holds for identical requests; return the
    samples still to send."""
    found = find_answers(session.store, session.run.started, pending)
    if not found:
        return pending
    rest = []
    for sample in pending:
        hit = found.get((sample.dialogue_id, sample.repeat))
        if hit is None:
            rest.append(sample)
        else:
            session.record(sample, hit[1], reused_from=hit[0])
    session.flush()
    return rest
