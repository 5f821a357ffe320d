"""Live runs through the official anthropic SDK: concurrency, retries, AIMD, Ctrl-C.

Retries are ours (the SDK's are turned off) so that each attempt is counted, the
in-flight limit can adapt to 429s, and a final failure records how many attempts it
took. Each answer is committed before its slot is given to the next request (answers
that land in the same event-loop turn share one transaction), so a kill wastes at most
`concurrency` requests: those in flight, plus answers not yet committed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from exprof.clients.credentials import redact
from exprof.clients.fatal import fatal_cause
from exprof.clients.limits import AdaptiveLimit, Gate, pacer_for
from exprof.clients.outcome import Failure, Outcome, Response
from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import STOP_SIGNALS, ExprofError, interruption
from exprof.heap import settled_heap
from exprof.render import Progress
from exprof.scoring import custom, sample_events
from exprof.store.engine import Lease, Store
from exprof.store.events import Event, RunInterrupted
from exprof.store.record import RunRecord

HEARTBEAT_S = 10.0
SIGINT_GRACE_S = 5.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


def build_request(config: Config, sample: Sample) -> dict[str, Any]:
    """messages.create arguments; sampling parameters only where the API version takes them."""
    request: dict[str, Any] = {
        "model": config.model,
        "max_tokens": config.max_tokens,
        "messages": [{"role": "user", "content": sample.user}],
    }
    if sample.system:
        request["system"] = sample.system
    if config.sends_temperature:
        request["extra_headers"] = {"anthropic-version": config.api_version}
        request["extra_body"] = {"temperature": config.temperature}
    return request


class LiveClient:
    def __init__(self, config: Config, limiter: AdaptiveLimit) -> None:
        import anthropic

        self.anthropic = anthropic
        self.config = config
        self.limiter = limiter
        endpoint = os.environ.get("ANTHROPIC_BASE_URL") or ""
        # Shared by everything in this process that calls this model there.
        self.pacer = pacer_for(config.model, endpoint, config.rate_limit)
        self.gate = Gate(self.pacer)
        self.client = anthropic.AsyncAnthropic(
            base_url=endpoint or None,
            max_retries=0,
            timeout=config.timeout_s,
        )
        self.halted = False  # set after an error that will hit every request

    async def complete(self, sample: Sample) -> Outcome:
        """The sample's Response or final Failure; raises Halted instead of sending once
        the run is halted, so that the sample stays pending."""
        request = build_request(self.config, sample)
        chars = len(sample.user) + len(sample.system or "")
        attempts = 0
        while True:
            attempts += 1
            await self.limiter.acquire()  # every attempt, retries too, waits for a slot
            cost = self.pacer.estimate(chars, self.config.max_tokens)
            settled = False
            try:
                await self.gate.enter(cost)  # ... and for the rate limits
                if self.halted:
                    raise Halted
                started = time.perf_counter()
                raw = await self.client.messages.with_raw_response.create(**request)
                message = await raw.parse()
            except self.anthropic.APIStatusError as exc:
                headers = exc.response.headers
                informed = self.pacer.settle(cost, headers, time.monotonic())
                settled = True
                if exc.status_code == 429 and not informed:
                    # No rate-limit headers to pace by: AIMD, and everyone waits it out.
                    self.limiter.on_rate_limited()
                    self.pacer.hold(_retry_after(headers) or 0.0, time.monotonic())
                retry = exc.status_code in RETRYABLE_STATUS
                said = redact(_api_message(exc))
                fatal = fatal_cause(exc.status_code, said, self.config.model)
                failure = Failure(type(exc).__name__, said, exc.status_code, attempts, fatal)
            except self.anthropic.APIConnectionError as exc:
                retry, headers = True, None
                failure = Failure(type(exc).__name__, redact(str(exc)), None, attempts)
            else:
                usage = message.usage
                self.pacer.settle(
                    cost,
                    raw.headers,
                    time.monotonic(),
                    usage=(usage.input_tokens, usage.output_tokens),
                    chars=chars,
                )
                settled = True
                self.limiter.on_success()
                return self._response(message, attempts, time.perf_counter() - started)
            finally:
                if not settled:  # no answer to learn from: only give the estimate back
                    self.pacer.settle(cost, None, time.monotonic())
                self.limiter.release()
            if failure.fatal:
                self.halted = True
                return failure
            if not retry or attempts > self.config.max_retries:
                return failure
            await asyncio.sleep(_backoff(attempts, headers))

    def status(self) -> str:
        """For the progress bar: the rate limit holding the run back, or the AIMD limit."""
        return self.pacer.status(time.monotonic()) or f"in-flight limit {self.limiter.limit}"

    def _response(self, message: Any, attempts: int, elapsed: float) -> Response:
        text = "".join(block.text for block in message.content if block.type == "text")
        metadata: dict[str, Any] = {"model": message.model}
        if self.config.sends_temperature:
            metadata["temperature"] = self.config.temperature
        metadata.update(
            token_count=message.usage.output_tokens,
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            stop_reason=message.stop_reason,
            latency_ms=round(elapsed * 1000, 1),
            attempts=attempts,
            request_id=message._request_id,
        )
        if message.stop_reason == "refusal":
            metadata["type"] = "refusal"
        return Response(text, metadata)

    async def close(self) -> None:
        await self.client.close()


class Halted(Exception):
    """A sample not sent because the run stopped on an error that hits every request."""


def _api_message(exc: Any) -> str:
    """The API's own error message where the body has one, else the SDK's text."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", exc.message))
    return str(exc.message)


def _retry_after(headers: Any) -> float | None:
    """The server's retry-after(-ms), in seconds, if it sent one."""
    if headers is not None:
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            value = headers.get(name)
            if value is not None:
                try:
                    return min(float(value) * scale, RETRY_AFTER_CAP_S)
                except ValueError:
                    pass
    return None


def _backoff(attempt: int, headers: Any) -> float:
    """Honour retry-after(-ms) exactly when the server sends it; else exponential with
    full jitter."""
    after = _retry_after(headers)
    if after is not None:
        return after
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


def run_live(
    store: Store,
    record: RunRecord,
    lease: Lease,
    seq: int,
    pending: Iterable[Sample],
    concurrency: int | None,
    progress: Progress,
) -> int:
    """Send `pending` through the API; return the last seq this worker appended (the run's
    last, unless other workers joined: they append to the run too). Raises KeyboardInterrupt
    after a Ctrl-C, once the answers that arrived in the grace period are recorded."""
    config = record.config
    if not config.sends_temperature:
        print(
            f"warning: temperature {config.temperature} is recorded but not sent: API version "
            f'{config.api_version} rejects sampling parameters; set api_version: "2023-06-01" '
            "in the config to send it",
            file=sys.stderr,
        )
    session = _LiveSession(store, record, lease, seq, concurrency or config.concurrency, progress)
    import anthropic  # noqa: F401  (imported before the freeze, so frozen with the rest)

    # The SDK allocates heavily per request; without this, each full collection would
    # also walk every object that start-up left behind (SQLAlchemy, the dataset, ...).
    with settled_heap():
        return asyncio.run(session.run(pending))


class _LiveSession:
    def __init__(
        self,
        store: Store,
        record: RunRecord,
        lease: Lease,
        seq: int,
        concurrency: int,
        progress: Progress,
    ) -> None:
        self.store, self.record, self.lease, self.seq = store, record, lease, seq
        self.concurrency = concurrency
        self.progress = progress
        self.arrived: list[Event] = []
        self.committed: asyncio.Future[None] | None = None
        self.crashed: list[BaseException] = []
        self.done = self.errors = 0
        self.stopping: int | None = None  # the stop signal, once one arrives
        self.fatal: str | None = None  # the cause, once an error will hit every request

    async def run(self, pending: Iterable[Sample]) -> int:
        limiter = AdaptiveLimit(self.concurrency)
        client = LiveClient(self.record.config, limiter)
        metrics = custom.build(self.record.config.metrics)
        # Samples in progress (sending, or waiting to retry) are bounded by the configured
        # concurrency; requests actually in flight by the adaptive limit, inside complete().
        workers = asyncio.Semaphore(self.concurrency)
        loop = asyncio.get_running_loop()
        # The loop's handlers replace the runner's, and removing them would leave
        # Python's defaults (SIGTERM: die at once), so the runner's are put back after.
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        tasks: set[asyncio.Task[None]] = set()
        # Beats on a timer, not with the answers: in a 429/529 storm every slot may wait
        # on retries for longer than STALE_LEASE_S, and a worker that went quiet would
        # be taken for dead and its in-flight samples sent again by a peer.
        beating = asyncio.create_task(self._beat())
        beating.add_done_callback(self._settle(set()))

        async def one(sample: Sample) -> None:
            try:
                try:
                    outcome = await client.complete(sample)
                except Halted:
                    return  # never sent: the sample stays pending for a resume
                if isinstance(outcome, Failure) and outcome.fatal and self.fatal is None:
                    self.fatal = outcome.fatal
                await self._record(sample_events(sample, outcome, metrics))
                self.done += 1
                self.errors += isinstance(outcome, Failure)
                self.progress.update(self.done, self.errors, client.status())
            finally:
                workers.release()

        try:
            for sample in pending:
                await workers.acquire()
                if self.stopping is not None or self.crashed or self.fatal:
                    workers.release()
                    break
                task = asyncio.create_task(one(sample))
                tasks.add(task)
                task.add_done_callback(self._settle(tasks))
            while tasks and self.stopping is None and not self.fatal and not self.crashed:
                await asyncio.wait(set(tasks), timeout=0.2)
            await self._wait_or_cancel(tasks)
            if self.crashed:
                raise self.crashed[0]
        finally:
            beating.cancel()
            for signum, handler in previous.items():
                loop.remove_signal_handler(signum)
                signal.signal(signum, handler)
            self._flush()
            await client.close()
        if self.fatal:
            self.progress.close()
            reason = f"stopped: {self.fatal}"
            self.seq = self.store.append(
                self.record.run_id, [RunInterrupted(reason)], after_seq=None, fenced=self.lease
            )
            raise ExprofError(self.fatal)
        if self.stopping is not None:
            raise interruption(self.stopping)
        return self.seq

    def _settle(self, tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        """A done-callback: forget the task, keeping any error (asyncio.wait would not)."""

        def settle(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.crashed.append(task.exception())  # type: ignore[arg-type]

        return settle

    async def _wait_or_cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        """After Ctrl-C or a fatal error: a grace period for the requests in flight, then
        abandon them."""
        if not tasks:
            return
        _, late = await asyncio.wait(set(tasks), timeout=SIGINT_GRACE_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _beat(self) -> None:
        """Keep this worker's heartbeat fresh while the session runs; a worker that lost
        its place raises ConcurrencyError here (kept by _settle, so the session stops)."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.store.heartbeat(self.lease)

    def _on_signal(self, signum: int) -> None:
        if self.stopping is None:
            self.stopping = signum
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            print(f"\n{name}: finishing the requests in flight...", file=sys.stderr)

    async def _record(self, events: list[Event]) -> None:
        """Queue a sample's events and wait until they are committed."""
        self.arrived.extend(events)
        if self.committed is None:
            self.committed = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit)
        await asyncio.shield(self.committed)

    def _commit(self) -> None:
        committed, self.committed = self.committed, None
        try:
            self._flush()
        except Exception as exc:  # the waiting tasks raise it; see run()
            if committed is not None:
                committed.set_exception(exc)
            return
        if committed is not None:
            committed.set_result(None)

    def _flush(self) -> None:
        if self.arrived:
            batch, self.arrived = self.arrived, []
            # After the run's last seq, not ours: other workers (resume --join) interleave.
            # Fenced: refused if this worker lost its place (its claims were taken over).
            self.seq = self.store.append(
                self.record.run_id, batch, after_seq=None, fenced=self.lease
            )
