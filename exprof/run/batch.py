"""Batch runs: samples go out as Message Batches at half the price, and no
batch is ever lost to a crash.

The protocol, in events: BatchIntent (which samples, and a clock reading) is committed
before each create call, BatchSubmitted (the batch id) after it. A resume that finds an
intent with neither a batch nor a void looks for its batch in the API's list, by
creation time and request count, and adopts it (BatchSubmitted adopted=True) or voids
the intent (BatchVoided) and sends its samples again. Ended batches are streamed,
joined on custom_id and recorded through scoring.sample_events like any answer; then
BatchEnded. A crash while ingesting only means the batch is read again: samples already
recorded are skipped.

The one remaining window: a batch that the API created but does not yet list (or lists
with a creation time more than LIST_SKEW_S before our clock reading) when a resume
reconciles its intent is voided and its samples are sent, and paid for, again.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from typing import Any

from exprof import hints
from exprof.clients.batch import (
    BODY_OVERHEAD,
    LIST_SKEW_S,
    MAX_BYTES,
    MAX_REQUESTS,
    BatchClient,
    BatchInfo,
    ResultsBroken,
    api_errors,
    create_body,
    list_settle_s,
    outcome_of,
    parse_custom_id,
    request_line,
    run_tag,
    stop_on,
)
from exprof.clients.credentials import require_credentials
from exprof.clients.outcome import Failure
from exprof.config import Config
from exprof.errors import ConcurrencyError, ExprofError
from exprof.run.session import Session
from exprof.signals import raising_iter, raising_signals
from exprof.store.batches import Batch, BatchState, batch_state, iter_ranges, to_ranges
from exprof.store.engine import Store
from exprof.store.events import (
    BatchCancelled,
    BatchEnded,
    BatchIntent,
    BatchPolled,
    BatchSubmitted,
    BatchVoided,
    Event,
)
from exprof.store.record import SnapshotReader, load_started

DEFAULT_POLL_S = 5.0
POLL_CAP_S = 60.0
POLL_BACKOFF = 1.5
INGEST_FLUSH = 30_000  # events per transaction while ingesting (10,000 results): fewer commits
POLL_EVENT_EVERY_S = 10.0  # a batch's changing counts are recorded at most this often
RESULT_TRIES = 4  # reads of a batch's results before its unread answers become failures


def run_batch(session: Session, positions: Sequence[int], poll_s: float | None = None) -> None:
    """Send the samples at dataset `positions` (ascending) as batches, wait, record the
    results. The samples are read from the run's snapshot as they are needed, never held
    all at once. Raises KeyboardInterrupt (Terminated for SIGTERM) after a signal, once
    what has arrived is recorded."""
    loop = _BatchLoop(session, positions)
    loop.poll_s = poll_s or session.config.batch_poll_s or DEFAULT_POLL_S
    try:
        loop.run()
    except KeyboardInterrupt:
        session.flush()  # what has arrived is recorded before the stop goes up
        raise
    finally:
        loop.client.close()


class _BatchLoop:
    def __init__(self, session: Session, positions: Sequence[int]) -> None:
        self.session = session
        self.store, self.config, self.run_id = session.store, session.config, session.run_id
        self.positions = positions
        self.owed = bytearray(b"\x01") * len(positions)  # by slot: no answer recorded yet
        self.samples = SnapshotReader(self.store, self.run_id)
        self.tag = run_tag(self.run_id)
        self.client = BatchClient(self.config)
        self.state: BatchState = batch_state(self.store, self.run_id)
        self.poll_s = DEFAULT_POLL_S
        self.settle_s = list_settle_s()
        self.polled_at: dict[str, float] = {}
        self.last_info: dict[str, BatchInfo] = {}
        self.broken_reads: dict[str, int] = {}

    # -- the loop ----------------------------------------------------------------

    def run(self) -> None:
        for intent in self.state.unresolved:
            self.reconcile(intent)
        live = self.state.live_ranges()
        queue = [p for p in self.positions if not live.contains(p)]
        delay = self.poll_s
        while queue or self.state.live:
            if queue:
                queue = self.submit(queue)
                continue
            ended = False
            for batch in self.state.live:
                info = self.poll(batch)
                if info is not None and info.status == "ended":
                    queue += self.ingest(batch, info)
                    ended = True
            self.show()
            if ended or queue or not self.state.live:
                delay = self.poll_s
                continue
            self.wait(delay)
            delay = min(delay * POLL_BACKOFF, max(POLL_CAP_S, self.poll_s))

    def submit(self, queue: list[int]) -> list[int]:
        """Send one batch from the head of `queue` (split at the API's limits); return
        the rest."""
        self.check()
        intent_no = self.state.next_intent
        taken: list[int] = []
        size = BODY_OVERHEAD
        for pos in queue:
            if len(taken) == MAX_REQUESTS:
                break
            grow = len(self.line(intent_no, pos)) + (1 if taken else 0)
            if taken and size + grow > MAX_BYTES:
                break
            size += grow
            taken.append(pos)
        rest = queue[len(taken) :]
        taken.sort()
        intent = BatchIntent(intent_no, to_ranges(taken), len(taken), size, time.time())
        self.append([intent])
        self.state.intents[intent_no] = intent
        body = create_body(self.line(intent_no, pos) for pos in taken)
        try:
            with raising_signals():  # the intent is recorded: a resume reconciles it
                info = self.client.create(body)
        except api_errors(self.client) as exc:
            if self.client.describe_error(exc) is not None:
                self.void(intent, "the create call was refused")
                stop_on(self.client, exc)
            # The call may have created the batch all the same: look before sending again.
            if not self.reconcile(intent):
                self.wait(self.poll_s)
                return taken + rest
            return rest
        self.record_batch(intent, info, adopted=False)
        return rest

    def reconcile(self, intent: BatchIntent) -> bool:
        """Adopt the batch an intent created, found in the API's list, or void it, but
        only once the list has had LIST_SETTLE_S (from the intent's clock reading) to
        show the batch: until then, list again at the poll interval."""
        settled = intent.not_before + self.settle_s
        while True:
            best = self.find(intent)
            if best is not None:
                self.record_batch(intent, best, adopted=True)
                return True
            left = settled - time.time()
            if left <= 0:
                self.void(intent, "not in the list of batches")
                return False
            self.show(f"intent {intent.intent}: waiting for the batch list")
            self.wait(min(self.poll_s, left))

    def find(self, intent: BatchIntent) -> BatchInfo | None:
        """The listed batch that best fits the intent (its request count, created
        closest after its clock reading), and not claimed by another intent."""
        claimed = set(self.state.batches)
        best: BatchInfo | None = None
        try:
            for info in raising_iter(iter(self.client.list_since(intent.not_before))):
                if info.batch_id in claimed or info.total != intent.requests:
                    continue
                if info.created_epoch < intent.not_before - LIST_SKEW_S:
                    continue
                gap = abs(info.created_epoch - intent.not_before)
                if best is None or gap < abs(best.created_epoch - intent.not_before):
                    best = info
        except api_errors(self.client) as exc:
            stop_on(self.client, exc)
            raise ExprofError(
                f"cannot list the Message Batches to check intent {intent.intent}: {exc}; "
                f"resume again later: {hints.command('resume', self.run_id)}",
                exit_code=1,
            ) from None
        return best

    def poll(self, batch: Batch) -> BatchInfo | None:
        self.check()
        try:
            with raising_signals():
                info = self.client.retrieve(batch.batch_id)
        except api_errors(self.client) as exc:
            stop_on(self.client, exc)
            return None  # waited out: the next poll asks again
        self.last_info[batch.batch_id] = info
        now = time.monotonic()
        changed = info.status != batch.status or info.counts != batch.counts
        due = now - self.polled_at.get(batch.batch_id, 0.0) >= POLL_EVENT_EVERY_S
        if changed and (due or info.status != batch.status) and info.status != "ended":
            self.append([BatchPolled(batch.batch_id, info.status, info.counts)])
            batch.status, batch.counts = info.status, dict(info.counts)
            self.polled_at[batch.batch_id] = now
        self.session.beat()
        return info

    def ingest(self, batch: Batch, info: BatchInfo) -> list[int]:
        """Record an ended batch's results; return the positions to send again."""
        cancelled = batch_state(self.store, self.run_id).batches[batch.batch_id].cancelled
        intent = self.state.intents[batch.intent]
        # The batch's owed samples, looked up as its results arrive in any order; the
        # prompts only when a custom metric may read them.
        owed = (p for p in iter_ranges(intent.ranges) if self.is_owed(p))
        samples = self.samples.many(owed, prompts=bool(self.session.metrics))
        try:
            for result in raising_iter(iter(self.client.results(batch.batch_id))):
                self.take(batch, result, samples, cancelled)
        except ResultsBroken as broken:
            self.session.flush()  # the answers read before the break are kept: never rebought
            tries = self.broken_reads[batch.batch_id] = self.broken_reads.get(batch.batch_id, 0) + 1
            if tries < RESULT_TRIES:
                self.wait(min(self.poll_s * POLL_BACKOFF**tries, POLL_CAP_S))
                return []  # still live: the next poll reads its results again
            for pos in iter_ranges(intent.ranges):  # given up: resume sends these again
                sample, slot = samples.get(pos), self.slot(pos)
                if sample is not None and slot is not None and self.owed[slot]:
                    failure = Failure("BatchResultsUnreadable", str(broken), None, 1)
                    self.session.record(sample, failure)
                    self.owed[slot] = 0
        self.session.flush()
        again = [pos for pos in iter_ranges(intent.ranges) if self.is_owed(pos)]
        self.append([BatchEnded(batch.batch_id, info.counts)])
        batch.ended, batch.status, batch.counts = True, "ended", dict(info.counts)
        return again

    def take(
        self, batch: Batch, result: dict[str, Any], samples: dict[int, Any], cancelled: bool
    ) -> None:
        """Record one result line, if it answers a request of this batch still owed."""
        parsed = parse_custom_id(str(result.get("custom_id", "")), self.tag)
        if parsed is None or parsed[0] != batch.intent:
            return  # not a request of this batch: never ours to record
        pos = parsed[1]
        sample = samples.get(pos)
        slot = self.slot(pos)
        if sample is None or slot is None or not self.owed[slot]:
            return  # recorded before a crash, or not owed in this session
        body = result.get("result") or {}
        if not isinstance(body, dict):
            body = {}
        attempts = 1 if body.get("type") == "succeeded" else self.state.attempts(pos)
        outcome = outcome_of(body, self.config, attempts)
        if outcome == "canceled" and cancelled:
            outcome = Failure("batch_canceled", "cancelled with exprof cancel", None, attempts)
        if isinstance(outcome, str):
            return  # left owed: sent again
        self.session.record(sample, outcome)
        self.owed[slot] = 0
        if len(self.session.arrived) >= INGEST_FLUSH:
            self.session.flush()
            self.show()
            self.check()

    # -- helpers -----------------------------------------------------------------

    def line(self, intent_no: int, pos: int) -> bytes:
        return request_line(self.config, self.tag, intent_no, pos, self.samples.get(pos))

    def is_owed(self, pos: int) -> bool:
        slot = self.slot(pos)
        return slot is not None and bool(self.owed[slot])

    def slot(self, pos: int) -> int | None:
        """A dataset position's slot in `owed`, if it is owed in this session."""
        positions = self.positions
        if isinstance(positions, range):
            return pos - positions.start if pos in positions else None
        k = bisect.bisect_left(positions, pos)
        return k if k < len(positions) and positions[k] == pos else None

    def record_batch(self, intent: BatchIntent, info: BatchInfo, adopted: bool) -> None:
        self.append(
            [BatchSubmitted(intent.intent, info.batch_id, info.created_at, info.total, adopted)]
        )
        self.state.batches[info.batch_id] = Batch(
            intent.intent, info.batch_id, info.created_at, info.total
        )

    def void(self, intent: BatchIntent, reason: str) -> None:
        self.append([BatchVoided(intent.intent, reason)])
        self.state.voided.add(intent.intent)

    def append(self, events: list[Event]) -> None:
        """Record `events` now, after what has arrived."""
        self.session.flush()
        self.session.append(events)

    def check(self) -> None:
        """A safe point: raises the stop signal caught since the last one."""
        self.session.check_signals()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def show(self, note: str = "") -> None:
        if note:
            self.session.show(note)
            return
        totals: dict[str, int] = {}
        for batch in self.state.live:
            info = self.last_info.get(batch.batch_id)
            for key, value in (info.counts if info else {}).items():
                totals[key] = totals.get(key, 0) + value
        counts = " ".join(
            f"{key} {totals.get(key, 0)}"
            for key in ("processing", "succeeded", "errored", "expired")
        )
        self.session.show(f"batches {len(self.state.live)}: {counts}")


def cancel_run(store: Store, run_id: str) -> list[str]:
    """Cancel a batch run's in-flight batches on purpose; their canceled requests are
    recorded as failures, which `resume` sends again. Returns the batch ids cancelled."""
    config = Config.from_dict(load_started(store, run_id).config)
    if not config.batch:
        raise ExprofError(f"run {run_id!r} is not a batch run: there is nothing to cancel")
    require_credentials(f"cancel {run_id}")
    state = batch_state(store, run_id)
    live = [b.batch_id for b in state.live if not b.cancelled]
    if not live:
        raise ExprofError(f"run {run_id!r} has no batch in flight to cancel")
    client = BatchClient(config)
    try:
        for batch_id in live:
            try:
                client.cancel(batch_id)
            except api_errors(client) as exc:
                stop_on(client, exc)
                raise ExprofError(f"cannot cancel {batch_id}: {exc}", exit_code=1) from None
    finally:
        client.close()
    # The worker waiting on the run (if any) appends too: take the next free seq.
    for _ in range(50):
        try:
            store.append(run_id, [BatchCancelled(live)], after_seq=store.last_seq(run_id))
            return live
        except ConcurrencyError:
            time.sleep(0.05)
    raise ExprofError(f"run {run_id!r}: could not record the cancel; try again", exit_code=1)
