"""The one exception type for expected failures, and the exit codes docs/SPEC.md gives."""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_SAMPLES_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM stopped
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ExprofError(Exception):
    """A mistake the user can fix: the CLI prints `Error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ConcurrencyError(ExprofError):
    """Another writer appended to the same run: our batch was rolled back whole."""


class LeaseHeldError(ExprofError):
    """Another live process holds the run."""


class StoreWriteError(ExprofError):
    """The store refused a write (a full disk, a read-only file): what was committed
    before stands, so a run that had begun is recorded and resumable."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what containers, CI runners and systemd send), handled as Ctrl-C is
    (record, release, print the resume hint) but with exit code 143. A KeyboardInterrupt,
    so every path that handles one handles both."""

    exit_code = EXIT_TERMINATED


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception that a stop signal becomes."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def stop_name(exc: BaseException) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"


def stop_exit_code(exc: BaseException) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
