"""Custom metrics run under a time limit (`metric_timeout_s`) and give way to Ctrl-C.

A metric is user code: a python function that sleeps or loops, or a regex that
backtracks, must not hold a run past its stop signal. While one metric runs, SIGALRM
ends it once it overruns its limit: that sample's metric error, and the run goes on.
A stop signal that arrives meanwhile is noted and handed, once the metrics of the
answer are done, to the handler that was in place (the runner's flag, or the live
loop's), which stops the run where stopping is safe; from then on, until the next
run, every metric's limit is cut to STOP_GRACE_S, so that a slow metric cannot hold
the stop up while the answers in flight are recorded.

Regex metrics use the `regex` package, whose matching checks for signals; the
standard `re` would finish a catastrophic match with every signal held.
Off the main thread (Python sets signal handlers there only) metrics run unguarded.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from exprof.errors import STOP_SIGNALS

STOP_GRACE_S = 1.0  # a metric's limit once a stop signal has arrived
RERAISE_S = 0.1  # past its limit, a metric is stopped again this often
_stopping: list[int] = []  # the stop signal seen by a guard in this run, if any


class MetricStopped(BaseException):
    """A metric ended by its time limit: that sample's metric error. Not an Exception,
    so that a metric's own `except Exception` does not swallow it; raised again every
    RERAISE_S for one that swallows it all the same."""


def new_run() -> None:
    """Forget a stop seen by an earlier run in this process (a library user's)."""
    _stopping.clear()


class Guard:
    """`with Guard() as guard:` around one answer's metrics, `with guard.limit(s):`
    around each call."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.caught: int | None = None
        self.limit_s = 0.0
        self.running = False

    def __enter__(self) -> Guard:
        if threading.current_thread() is threading.main_thread():
            for signum in (*STOP_SIGNALS, signal.SIGALRM):
                self.previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.caught is not None:  # handed on: the run stops where it is safe to
            signal.raise_signal(self.caught)

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        if not self.previous:  # unguarded: not the main thread
            yield
            return
        self.limit_s = min(seconds, STOP_GRACE_S) if _stopping else seconds
        self.running = True
        signal.setitimer(signal.ITIMER_REAL, self.limit_s, RERAISE_S)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.running = False

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGALRM:
            if self.running:
                raise MetricStopped(self._overran())
            return
        if self.caught is None:
            self.caught = signum
            _stopping[:] = [signum]
        if self.running:  # the rest of this metric's time is cut to the grace
            left = signal.getitimer(signal.ITIMER_REAL)[0]
            if left == 0 or left > STOP_GRACE_S:
                self.limit_s = STOP_GRACE_S
                signal.setitimer(signal.ITIMER_REAL, STOP_GRACE_S, RERAISE_S)

    def _overran(self) -> str:
        if _stopping:
            return f"stopped after {self.limit_s:g} s: the run was stopping"
        return f"took longer than metric_timeout_s ({self.limit_s:g} s)"
