"""The commands exprof prints for the user to paste: `continue with: exprof resume ID`,
`see exprof runs`, and the like. Every such command is built here, by `command()`.

A command must reach the store the printing command used. The CLI names that store once
per command (`use_store`, from its --output-dir and --db), and `command()` adds the same
flags, so the hint works pasted in the same folder and shell. A --db that came from
EXPROF_DB is left out (the shell still has it), and a URL's password is never printed.
Used as a library, without the CLI, the commands name no store: the default one.
"""

from __future__ import annotations

import math
import shlex
from contextvars import ContextVar

DEFAULT_OUTPUT_DIR = "runs"
_STORE_FLAGS: ContextVar[tuple[str, ...]] = ContextVar("store_flags", default=())


def use_store(output_dir: str | None, db: str | None) -> None:
    """The store flags every later command() carries: `output_dir` unless it is the
    default, `db` (as it may be printed) when it was given on the command line."""
    flags: list[str] = []
    if output_dir is not None and output_dir != DEFAULT_OUTPUT_DIR:
        flags += ["--output-dir", output_dir]
    if db is not None:
        flags += ["--db", db]
    _STORE_FLAGS.set(tuple(flags))


def command(*words: object) -> str:
    """`exprof WORDS...`, quoted for a POSIX shell, with the store's flags."""
    return shlex.join(["exprof", *(str(w) for w in words), *_STORE_FLAGS.get()])


def budget_to_finish(spent_usd: float, limit_usd: float, done: int, owed: int) -> float:
    """A --budget-usd that lets a budget-stopped run (or experiment) finish: the cost
    recorded so far scaled to every request owed, and half again; at least twice the old
    limit and a cent. Rounded up to two significant figures."""
    scaled = spent_usd * owed / done if done else 0.0
    amount = max(scaled * 1.5, limit_usd * 2, 0.01)
    step = 10 ** (math.floor(math.log10(amount)) - 1)
    return round(math.ceil(amount / step - 1e-9) * step, 12)


def amount(value: float) -> str:
    """A dollar amount as a flag's value: no exponent, no trailing zeros."""
    return f"{value:.10f}".rstrip("0").rstrip(".")
