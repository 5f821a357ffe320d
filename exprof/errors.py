"""The one exception type for expected failures, and the exit codes SPEC.md gives."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SAMPLES_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (record, release, print the resume hint) but with
    exit code 143."""

    exit_code = EXIT_TERMINATED
