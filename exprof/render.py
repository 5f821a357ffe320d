"""Everything printed: the one table/JSON/markdown/CSV helper, and the progress bar."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from exprof.jsonio import standard

FORMATS = ("table", "json", "markdown", "csv")

# What a printed value may not carry raw: C0 and C1 controls and DEL (ESC starts the
# OSC/CSI sequences that retitle a terminal, clear it or plant a link), the Unicode line
# and paragraph separators, and the bidirectional overrides that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# In JSON text, the ones json.dumps leaves raw (it escapes C0 itself). They can only
# stand inside strings there, so a \u escape keeps the JSON exact, with the same value.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
NONE = "-"  # what every table shows for a value that is not there (JSON: null)
_FORMULA_START = ("=", "+", "-", "@")


def safe_text(value: Any) -> str:
    """str(value) with every unsafe character shown as its escape (`\\x1b`, `\\u202e`):
    visible, never acted on, and the same after a second pass."""
    return _UNSAFE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_json(data: Any) -> str:
    """Exact, indented JSON with the characters a terminal would act on escaped."""
    text = json.dumps(standard(data), ensure_ascii=False, indent=2, allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _csv_cell(value: Any) -> Any:
    """A spreadsheet runs a cell that starts with = + - @ as a formula: a leading '
    makes it text. Numbers (and the "-" that stands for none) stay as they are."""
    if not isinstance(value, str):
        return value
    text = safe_text(value)
    if text.startswith(_FORMULA_START) and text != "-" and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _sanitized(value: Any) -> Any:
    """Every string in a JSON-like value, keys included, made safe to print."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {_sanitized(k): _sanitized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitized(v) for v in value]
    return value


def render(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    fmt: str,
    json_data: Any = None,
) -> str:
    """Render rows as a tabulate table, markdown, CSV, or JSON (json_data, or the rows).
    Every value is made safe to print here, the one place all tables pass through."""
    if fmt == "json":
        data = json_data
        if data is None:
            data = [dict(zip(headers, row, strict=True)) for row in rows]
        return safe_json(data)
    rows = [[NONE if cell is None else cell for cell in row] for row in rows]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([_csv_cell(h) for h in headers])
        writer.writerows([_csv_cell(cell) for cell in row] for row in rows)
        return buf.getvalue().rstrip("\n")
    text = _markdown_cell if fmt == "markdown" else safe_text
    headers = [text(h) for h in headers]
    rows = [[cell if isinstance(cell, int | float) else text(cell) for cell in row] for row in rows]
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github" if fmt == "markdown" else "simple")


def _markdown_cell(value: Any) -> str:
    """A markdown table cell: a `|` in it (a dialogue id may hold one) would end the
    cell and forge a column, so it is escaped."""
    return safe_text(value).replace("|", "\\|")


def fmt_value(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items()) or "-"
    return str(value)


def fmt_usd(value: Any) -> str:
    """Dollars to four significant figures: a cost per sample is often far below 1e-4."""
    if isinstance(value, list):
        return "[" + ", ".join(fmt_usd(v) for v in value) + "]"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return fmt_value(value)


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


def _sequential_lines(seq: dict[str, Any]) -> list[str]:
    """compare of a sequential A/B's two arms: which interval a stopped run may use."""
    lo, hi = seq["interval"]
    ci = seq["fixed_n_ci95"]
    won = f", {seq['winner']} wins" if seq["winner"] else ""
    return [
        f"{seq['metric']} B−A: confidence sequence [{lo}, {hi}] after {seq['pairs_used']} "
        f"pairs ({seq['verdict']}{won}): VALID for this stopped run",
        f"{seq['metric']} B−A: fixed-n bootstrap 95% CI "
        + (f"[{ci[0]}, {ci[1]}]" if ci else "-")
        + ": not valid here (it assumes the number of samples was fixed in advance)",
    ]


def render_compare(result: dict[str, Any], fmt: str, top: int) -> str:
    """`exprof compare` output: sections of tables, or one JSON object, or per-sample CSV."""
    if fmt == "json":  # the per-sample rows are the CSV's; JSON stays one readable object
        return render([], [], "json", {k: v for k, v in result.items() if k != "per_sample"})
    result = _sanitized(result)  # the lines below print labels and ids outside tables
    if fmt == "csv":
        rows = [
            [
                s["dialogue_id"],
                s["coverage_a"],
                s["coverage_b"],
                round(s["coverage_b"] - s["coverage_a"], 6),
                s["refused_a"],
                s["refused_b"],
            ]
            for s in result["per_sample"]
        ]
        rows += [[d, "", "", "", "", ""] for d in result["a_only"]]
        rows += [[d, "", "", "", "", ""] for d in result["b_only"]]
        headers = ["dialogue_id", "coverage_a", "coverage_b", "delta", "refused_a", "refused_b"]
        return render(rows, headers, "csv")
    md = fmt == "markdown"

    def heading(text: str) -> str:
        return f"### {text}" if md else f"{text}:"

    counts = result["samples"]
    stats = result["statistics"]
    out = [
        f"{'**A**' if md else 'A'}: {result['a']}  {'**B**' if md else 'B'}: {result['b']}",
        f"samples: {counts['common']} common, {counts['a_only']} only in A, "
        f"{counts['b_only']} only in B; paired bootstrap, {stats['resamples']} resamples, "
        f"seed {stats['seed']}",
        "",
    ]
    metric_rows = []
    for name, m in result["metrics"].items():
        ci = m.get("ci95")
        metric_rows.append(
            [
                name,
                fmt_value(m["a"]),
                fmt_value(m["b"]),
                fmt_value(m["delta"]),
                "-" if m.get("relative") is None else f"{m['relative']:+.1%}",
                f"[{ci[0]}, {ci[1]}]" if ci else "-",
                m.get("verdict") or "-",
            ]
        )
    out.append(
        render(metric_rows, ["metric", "A", "B", "Δ (B−A)", "relative", "95% CI", "verdict"], fmt)
    )
    if "sequential" in result:
        out += ["", heading("sequential A/B"), *_sequential_lines(result["sequential"])]
    flips = result["refusal_flips"]
    p = result["metrics"]["refusal_rate"].get("mcnemar_p")
    out += [
        "",
        heading("refusal flips"),
        f"{len(flips['refused_in_b_only'])} refused in B only, "
        f"{len(flips['refused_in_a_only'])} refused in A only"
        + (f" (exact McNemar p = {p})" if p is not None else ""),
    ]
    for key, label in (
        ("refused_in_b_only", "refused in B only"),
        ("refused_in_a_only", "refused in A only"),
    ):
        if flips[key]:
            more = len(flips[key]) - top
            out.append(
                f"{label}: {', '.join(flips[key][:top])}" + (f" (+{more} more)" if more > 0 else "")
            )
    if result["top_changed"]:
        out += ["", heading(f"top {len(result['top_changed'])} coverage changes")]
        rows = [
            [
                c["dialogue_id"],
                c["a"],
                c["b"],
                c["delta"],
                ", ".join(c["facts_gained"]) or "-",
                ", ".join(c["facts_lost"]) or "-",
            ]
            for c in result["top_changed"]
        ]
        out.append(render(rows, ["dialogue_id", "A", "B", "Δ", "facts gained", "facts lost"], fmt))
    for key, label in (("a_only", "only in A"), ("b_only", "only in B")):
        if result[key]:
            more = len(result[key]) - top
            out += [
                "",
                f"{heading(label)} {', '.join(result[key][:top])}"
                + (f" (+{more} more)" if more > 0 else ""),
            ]
    diff = result["config_diff"]
    out += ["", heading("config differences")]
    if diff["fields"]:
        out.append(
            render(
                [[k, fmt_value(v["a"]), fmt_value(v["b"])] for k, v in diff["fields"].items()],
                ["field", "A", "B"],
                fmt,
            )
        )
    else:
        out.append("none")
    out.append(f"datasets identical: {'yes' if diff['datasets_identical'] else 'no'}")
    out += [f"note: {note}" for note in diff["notes"]]
    return "\n".join(out)


def render_plan(found: dict[str, Any], fmt: str) -> str:
    """`exprof plan` output: what it assumed, then one row per repeats option."""
    if fmt == "json":
        return render([], [], "json", found)
    runs = found["runs"]
    headers = ["repeats", "samples", "samples_ci95", "requests_per_arm", "sd_paired"]
    headers += [f"cost_usd {run}" for run in runs]
    rows = [
        [r["repeats"], r["samples"], f"{r['samples_ci95'][0]}-{r['samples_ci95'][1]}"]
        + [r["requests_per_arm"], fmt_value(r["sd_paired"])]
        + [fmt_usd(r["cost_usd"][run]) for run in runs]
        for r in found["plan"]
    ]
    table = render(rows, headers, fmt)
    if fmt == "csv":
        return table
    lo, hi = found["sd_paired_ci95"]
    head = [
        f"detect a paired {found['metric']} difference of {found['detect']:g} at power "
        f"{found['power']:g}, alpha {found['alpha']:g} (two-sided)",
        f"from: {found['basis']}",
        f"sd of the paired difference: {fmt_value(found['sd_paired'])} "
        f"(95% CI {fmt_value(lo)}-{fmt_value(hi)}, giving samples_ci95)",
        "",
    ]
    notes = [f"note: {note}" for note in found["notes"]]
    return "\n".join([*(safe_text(line) for line in head), table, *map(safe_text, notes)])


def render_frontier(block: dict[str, Any], fmt: str) -> str:
    """The paired tests between neighbours on an experiment's cost-quality frontier."""
    heading = (
        f"cost-quality frontier ({block['metric']}): neighbours, paired bootstrap, "
        f"{block['resamples']} resamples, seed {block['seed']}"
    )
    if not block["neighbours"]:
        return f"\n{safe_text(heading)}\nfewer than two cells on the frontier"
    headers = ["from", "to", "samples", "quality_delta", "quality_ci95", "quality_p"]
    headers += ["cost_per_sample_delta", "cost_per_sample_ci95"]
    rows = [
        [(fmt_usd if h.startswith("cost") else fmt_value)(t.get(h)) for h in headers]
        for t in block["neighbours"]
    ]
    return f"\n{safe_text(heading)}\n" + render(rows, headers, fmt)
