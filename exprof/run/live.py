"""The live loop: many requests through the API at once, each answer committed before
its slot is given to the next request (answers that land in the same event-loop turn
share one transaction), so a kill wastes at most `concurrency` requests: those in
flight, plus answers not yet committed. Ctrl-C and SIGTERM give the requests in flight
a grace period, then abandon them.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

from exprof.clients import caching
from exprof.clients.limits import AdaptiveLimit
from exprof.clients.live import Halted, LiveClient
from exprof.clients.outcome import Failure, Outcome, Response
from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import STOP_SIGNALS, ExprofError, interruption
from exprof.heap import settled_heap
from exprof.knobs import SAMPLING
from exprof.run.session import HEARTBEAT_S, Session
from exprof.run.tools import run_calls
from exprof.run.warmup import Scheduler
from exprof.store.events import RunInterrupted

SIGINT_GRACE_S = 5.0


def run_live(
    session: Session, pending: Iterable[Sample], concurrency: int | None, warn: bool = True
) -> None:
    """Send `pending` through the API. Raises KeyboardInterrupt after a Ctrl-C, once the
    answers that arrived in the grace period are recorded. `warn`: say which recorded
    parameters are not sent (a caller sending a run in many calls says it once)."""
    config = session.config
    unsent = {k: v for k, v in config.knobs.items() if k in SAMPLING}
    if warn and unsent and not config.sends_temperature:
        said = ", ".join(f"{k} {v}" for k, v in unsent.items())
        verb = "is" if len(unsent) == 1 else "are"
        print(
            f"warning: {said} {verb} recorded but not sent: API version "
            f'{config.api_version} rejects sampling parameters; set api_version: "2023-06-01" '
            "in the config to send them",
            file=sys.stderr,
        )
    if config.prompt_cache is not None:
        caching.ttl_s(config.prompt_cache)  # a bad EXPROF_CACHE_TTL_S: an error before the loop
    if session.budget is not None:  # none is dispatched once the limit is reached
        pending = session.budget.within(pending)
    loop = _LiveLoop(session, concurrency or config.concurrency)
    import anthropic  # noqa: F401  (imported before the freeze, so frozen with the rest)

    # The SDK allocates heavily per request; without this, each full collection would
    # also walk every object that start-up left behind (SQLAlchemy, the dataset, ...).
    with settled_heap():
        asyncio.run(loop.run(pending))


def warn_short_prefixes(config: Config, pending: list[Sample]) -> None:
    """prompt_cache's one warning for the prefixes under the model's minimum, printed
    before the samples are claimed."""
    warning = caching.short_warning(config, pending)
    if warning:
        print(warning, file=sys.stderr)


class _LiveLoop:
    def __init__(self, session: Session, concurrency: int) -> None:
        self.session = session
        self.concurrency = concurrency
        self.committed: asyncio.Future[None] | None = None
        self.crashed: list[BaseException] = []
        self.stopping: int | None = None  # the stop signal, once one arrives
        self.fatal: str | None = None  # the cause, once an error will hit every request
        self.halt: asyncio.Event | None = None  # set on a stop, a fatal error or a crash

    async def run(self, pending: Iterable[Sample]) -> None:
        session = self.session
        limiter = AdaptiveLimit(self.concurrency)
        client = LiveClient(session.config, limiter)
        # Samples in progress (sending, or waiting to retry) are bounded by the configured
        # concurrency; requests actually in flight by the adaptive limit, inside complete().
        workers = asyncio.Semaphore(self.concurrency)
        loop = asyncio.get_running_loop()
        # The loop's handlers replace the runner's, and removing them would leave
        # Python's defaults (SIGTERM: die at once), so the runner's are put back after.
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        self.halt = asyncio.Event()
        try:  # a signal that came before the loop's handlers: nothing is sent
            session.check_signals()
        except KeyboardInterrupt:
            self._restore(loop, previous)
            await client.close()
            raise
        tasks: set[asyncio.Task[None]] = set()
        scheduler = self._scheduler(pending)
        # Beats on a timer, not with the answers: in a 429/529 storm every slot may wait
        # on retries for longer than STALE_LEASE_S, and a worker that went quiet would
        # be taken for dead and its in-flight samples sent again by a peer.
        beating = asyncio.create_task(self._beat())
        beating.add_done_callback(self._settle(set()))

        async def one(sample: Sample) -> None:
            try:
                try:
                    if session.tools is None:
                        outcome = await client.complete(sample)
                    else:
                        outcome = await self._trajectory(client, sample)
                except Halted:
                    return  # never sent: the sample stays pending for a resume
                if isinstance(outcome, Failure) and outcome.fatal and self.fatal is None:
                    self.fatal = outcome.fatal
                    self._wake()
                session.record(sample, outcome)
                if scheduler is not None:
                    scheduler.answered(sample, not isinstance(outcome, Failure))
                await self._committed()
                session.show(client.status())
            finally:
                workers.release()

        try:
            for sample in self._order(pending, scheduler):
                if scheduler is not None:
                    sample = await scheduler.next(self.halt)
                    if sample is None or self._over_budget():
                        break
                if not await self._slot(workers):
                    break
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
            self._restore(loop, previous)
            session.flush()
            await client.close()
        if self.fatal:
            session.progress.close()
            session.append([RunInterrupted(f"stopped: {self.fatal}")])
            raise ExprofError(self.fatal)
        if self.stopping is not None:
            raise interruption(self.stopping)

    def _scheduler(self, pending: Iterable[Sample]) -> Scheduler | None:
        """The cache-aware order (exprof.run.warmup), when prompt_cache schedules."""
        config = self.session.config
        settings = config.prompt_cache
        if settings is None or not settings["schedule"]:
            return None
        return Scheduler(
            pending,
            lambda sample: caching.plan(config, sample).prefix_sha256,
            caching.ttl_s(settings),
            self.concurrency,
        )

    @staticmethod
    def _order(pending: Iterable[Sample], scheduler: Scheduler | None) -> Iterable[Any]:
        """What the dispatch loop walks: the samples, or with a scheduler, turns that
        each ask it for the next one."""
        if scheduler is None:
            return pending
        return itertools.repeat(None)

    def _over_budget(self) -> bool:
        budget = self.session.budget
        return budget is not None and budget.check()

    async def _trajectory(self, client: LiveClient, sample: Sample) -> Outcome:
        """The sample's tool loop, from its last recorded turn: each turn is committed
        before the next request goes out, so a kill costs at most the turn in flight. The
        tools run off the event loop; its last turn is queued for session.record's commit.
        Once the budget is reached no further turn is sent (the sample stays pending)."""
        session = self.session
        assert session.tools is not None
        trajectory = session.trajectory(sample)
        while True:
            outcome = await client.complete(trajectory.request())
            calls = trajectory.calls(outcome)
            if calls is None:
                final, last = trajectory.final(outcome)
                for turn in last:
                    session.record_turn(turn)
                return final
            assert isinstance(outcome, Response)
            results = await asyncio.to_thread(run_calls, session.tools, sample, calls)
            session.record_turn(trajectory.add(outcome, results))
            await self._committed()
            if session.budget is not None and session.budget.check():
                raise Halted  # the budget holds per turn: the rest waits for a resume

    def _restore(self, loop: asyncio.AbstractEventLoop, previous: dict[Any, Any]) -> None:
        """Put the runner's signal handlers back in place of the loop's."""
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)

    async def _slot(self, workers: asyncio.Semaphore) -> bool:
        """Wait for a free slot, or for the halt (a stop signal while every slot waits on
        a slow server): True once a slot is taken, False on a halt."""
        if not workers.locked():
            await workers.acquire()
            return True
        assert self.halt is not None
        taking = asyncio.ensure_future(workers.acquire())
        halted = asyncio.ensure_future(self.halt.wait())
        await asyncio.wait({taking, halted}, return_when=asyncio.FIRST_COMPLETED)
        halted.cancel()
        if not taking.done():
            taking.cancel()
            await asyncio.gather(taking, return_exceptions=True)
        if taking.cancelled():
            return False
        return True

    def _wake(self) -> None:
        if self.halt is not None:
            self.halt.set()

    def _settle(self, tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        """A done-callback: forget the task, keeping any error (asyncio.wait would not)."""

        def settle(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.crashed.append(task.exception())  # type: ignore[arg-type]
                self._wake()

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
            self.session.heartbeat()

    def _on_signal(self, signum: int) -> None:
        if self.stopping is None:
            self.stopping = signum
            self._wake()
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            print(f"\n{name}: finishing the requests in flight...", file=sys.stderr)

    async def _committed(self) -> None:
        """Wait until the events queued so far are committed: one commit for all the
        answers that arrive in this turn of the event loop."""
        if self.committed is None:
            self.committed = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit)
        await asyncio.shield(self.committed)

    def _commit(self) -> None:
        committed, self.committed = self.committed, None
        try:
            self.session.flush()
        except Exception as exc:  # the waiting tasks raise it; see run()
            if committed is not None:
                committed.set_exception(exc)
            return
        if committed is not None:
            committed.set_result(None)
