"""Reading the user's files: size limits and clear errors.

Every file exprof reads from a user goes through `read_text`, so the limits below hold
everywhere (the JSON in them is parsed by exprof.strict_json):

- only regular files are read (a FIFO would block forever, `/dev/zero` never ends);
- a file larger than `max_input_bytes()` (default 256 MiB, `EXPROF_MAX_INPUT_BYTES`
  overrides it) is refused before a byte of it is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from exprof.errors import ExprofError

# What an export folder holds (export.py writes them; `runs` checks they are all there).
EXPORT_FILES = ("requests.jsonl", "responses.jsonl", "scores.jsonl", "summary.json")
DEFAULT_MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few dozen lines; anything bigger is a mistake


def max_input_bytes() -> int:
    """The size limit for datasets, mock answers and exported files we read back."""
    return int(env_number("EXPROF_MAX_INPUT_BYTES", DEFAULT_MAX_INPUT_BYTES, int, 1))


def env_number(name: str, default: float, kind: Callable[[str], float], minimum: float) -> float:
    """A numeric setting from the environment (`kind` int or float), or `default`; a
    value that is not one, or below `minimum`, is the user's error, named."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ExprofError(f"{name}: must be {noun}, got {raw!r}") from None
    if not value >= minimum:
        raise ExprofError(f"{name}: must be >= {minimum}, got {value}")
    return value


def read_text(path: Path, what: str, limit: int | None = None) -> str:
    """Read a UTF-8 text file, turning every way it can fail into one clear line."""
    limit = max_input_bytes() if limit is None else limit
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ExprofError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ExprofError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ExprofError(f"{path}: {what} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
            raise ExprofError(f"{path}: {what} is {kind}, not a regular file")
        if info.st_size > limit:
            raise ExprofError(
                f"{path}: {what} is {_size(info.st_size)}, over the limit of "
                f"{_size(limit)} (EXPROF_MAX_INPUT_BYTES)"
            )
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)  # a file that grows while we read stays bounded
        except OSError as exc:
            raise ExprofError(f"{path}: cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ExprofError(f"{path}: {what} is over the limit of {_size(limit)}")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ExprofError(f"{path}: {what} is not valid UTF-8 (it is UTF-16; save it as UTF-8)")
    if b"\x00" in data:
        raise ExprofError(f"{path}: {what} is binary or not UTF-8 (found a NUL byte)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExprofError(f"{path}: {what} is not valid UTF-8 (byte offset {exc.start})") from None


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def export_complete(folder: Path) -> bool:
    """Whether every export file is in folder (a failed export leaves some missing)."""
    return all((folder / name).is_file() for name in EXPORT_FILES)


def jsonl_lines(text: str) -> Iterable[tuple[int, str]]:
    """(line number, line) of a JSON Lines text. Only "\\n" ends a line: U+2028, U+0085
    and friends are valid inside a JSON string, so `str.splitlines` would cut records."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield lineno, line
