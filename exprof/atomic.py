"""Writing our files: atomic writes, and cleaning up what a killed one left.

Files we write get temporary names that carry our marker and our pid, so that cleaning
up after a killed export can only ever remove our own leftovers.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, NoReturn

from exprof.errors import ExprofError

TEMP_MARK = ".exprof-"
# `.<name>.exprof-<pid>-<mkstemp's 8 random chars>.tmp`: see write_atomic.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.exprof-(?P<pid>\d+)-[a-z0-9_]{8}\.tmp$")


class AtomicFile:
    """A file written in pieces to a temporary beside `path`, which `commit` fsyncs and
    renames over it and `discard` removes: the file is whole or absent, never half.
    The file gets the mode any file the user writes gets (0666 less the umask), not
    mkstemp's 0600. Writes are buffered a block of pieces at a time."""

    BLOCK = 4096  # pieces per write

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd, self.tmp = tempfile.mkstemp(
                prefix=f".{path.name}{TEMP_MARK}{os.getpid()}-", suffix=".tmp", dir=path.parent
            )
        except OSError as exc:
            raise ExprofError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self.file: IO[str] | None = None
        self.buffer: list[str] = []
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            self.file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        except BaseException as exc:
            os.close(fd)
            self._fail(exc)

    def write(self, piece: str) -> None:
        self.buffer.append(piece)
        if len(self.buffer) >= self.BLOCK:
            self._flush_buffer()

    def commit(self) -> None:
        """Make the file whole under its name (fsync, then rename)."""
        assert self.file is not None, "committed or discarded already"
        try:
            self._flush_buffer()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            os.replace(self.tmp, self.path)
        except BaseException as exc:
            self._fail(exc)

    def discard(self) -> None:
        """Remove the temporary (no-op once committed or discarded); never raises, as it
        is what cleans up after a failure."""
        file, self.file = self.file, None
        if file is not None:
            with contextlib.suppress(OSError):  # a full disk flushing the last block
                file.close()
            with contextlib.suppress(OSError):
                Path(self.tmp).unlink(missing_ok=True)

    def _flush_buffer(self) -> None:
        assert self.file is not None
        try:
            self.file.write("".join(self.buffer))
        except BaseException as exc:
            self._fail(exc)
        self.buffer.clear()

    def _fail(self, exc: BaseException) -> NoReturn:
        """Leave nothing behind; an OSError becomes one ExprofError naming the file."""
        self.discard()
        with contextlib.suppress(OSError):
            Path(self.tmp).unlink(missing_ok=True)  # after a failed close in commit
        if isinstance(exc, OSError):
            raise ExprofError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        raise exc


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Write `chunks` to `path` whole or not at all (see AtomicFile)."""
    out = AtomicFile(path)
    try:
        for chunk in chunks:
            out.write(chunk)
    except BaseException as exc:
        out._fail(exc)
    out.commit()


def temp_target(name: str) -> str | None:
    """The file a write_atomic temporary of this name was to become, else None."""
    match = _TEMP_RE.match(name)
    return match["name"] if match else None


def remove_stale_temps(folder: Path) -> None:
    """Remove the temporary files a killed write_atomic left in folder: only names that
    write_atomic makes, and only those whose process is gone (or is us)."""
    for entry in folder.glob(f".*{TEMP_MARK}*.tmp"):
        match = _TEMP_RE.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _alive(pid):
            continue  # another export is writing it right now
        entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, but belongs to someone else
    return True


def _umask() -> int:
    """The process umask: from /proc where it can be read without changing it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # elsewhere, reading it means setting it, briefly
    os.umask(current)
    return current
