"""Everything printed: the one table/JSON/markdown/CSV helper, and the progress bar."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

FORMATS = ("table", "json", "markdown", "csv")


def render(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    fmt: str,
    json_data: Any = None,
) -> str:
    """Render rows as a tabulate table, markdown, CSV, or JSON (json_data, or the rows)."""
    if fmt == "json":
        data = json_data
        if data is None:
            data = [dict(zip(headers, row, strict=True)) for row in rows]
        return json.dumps(data, ensure_ascii=False, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github" if fmt == "markdown" else "simple")


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items()) or "-"
    return str(value)


class Progress:
    """done/total, errors and rate on stderr; redrawn in place at most ten times a second."""

    def __init__(self, total: int, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.done = 0
        self.errors = 0
        self.extra = ""

    def update(self, done: int, errors: int, extra: str = "") -> None:
        self.done, self.errors, self.extra = done, errors, extra
        now = time.monotonic()
        if self.enabled and now - self.last_draw >= 0.1:
            self.last_draw = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        extra = f" {self.extra}" if self.extra else ""
        return (
            f"[{bar}] {self.done}/{self.total} errors {self.errors} "
            f"{self.done / elapsed:.0f}/s{extra}"
        )

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
