"""Ctrl-C and SIGTERM as flags checked at safe points, for every loop that writes.

A stop signal must never cut a transaction half-way (and leave its connection holding
the write lock), nor cancel a Message Batch: while `deferred_signals` is active a
signal only sets a flag, and the caller's check raises it where stopping is safe.
The mock loop, the judge and the batch loop all use this one context manager.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from exprof.errors import STOP_SIGNALS, interruption

T = TypeVar("T")
_END: Any = object()


@contextlib.contextmanager
def deferred_signals() -> Iterator[Callable[[], None]]:
    """Turn Ctrl-C and SIGTERM into a flag. The caller calls the yielded check at safe
    points: it raises the signal's KeyboardInterrupt (Terminated for SIGTERM) there.
    On leaving, a signal caught since the last check is raised too, so none is lost.
    Outside the main thread, where handlers cannot be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    caught: list[int] = []

    def check() -> None:
        if caught:
            raise interruption(caught[0])

    previous = {
        signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
        for signum in STOP_SIGNALS
    }
    try:
        yield check
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    check()


@contextlib.contextmanager
def raising_signals() -> Iterator[None]:
    """Inside a deferred_signals block, around a call that may block for long and has
    no transaction open (an HTTP call to the API): a stop signal raises at once, in
    the call, as Python's own Ctrl-C does. Outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise interruption(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def raising_iter(items: Iterator[T]) -> Iterator[T]:
    """`items`, each drawn under raising_signals (a stream read from the API); what the
    caller does with an item in between (record it) is not interrupted."""
    while True:
        with raising_signals():
            item = next(items, _END)
        if item is _END:
            return
        yield item  # type: ignore[misc]
