"""Reading the user's files and writing ours: size limits, clear errors, atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from exprof.errors import ExprofError


def read_text(path: Path, what: str) -> str:
    """Read a UTF-8 text file, turning every way it can fail into one clear line."""
    if not path.exists():
        raise ExprofError(f"{path}: {what} not found")
    if path.is_dir():
        raise ExprofError(f"{path}: {what} is a directory, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExprofError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ExprofError(f"{path}: {what} is not valid UTF-8 (it is UTF-16; save it as UTF-8)")
    if b"\x00" in data:
        raise ExprofError(f"{path}: {what} is binary or not UTF-8 (found a NUL byte)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExprofError(f"{path}: {what} is not valid UTF-8 (byte offset {exc.start})") from None


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            buffer: list[str] = []
            for chunk in chunks:
                buffer.append(chunk)
                if len(buffer) >= 4096:
                    f.write("".join(buffer))
                    buffer.clear()
            f.write("".join(buffer))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
