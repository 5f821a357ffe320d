"""Building the page: gather, lay out, render with Jinja2 (autoescape on), write atomically.

The per-sample rows go into a `<script type="application/json">` block, with `<`, `>`
and `&` written as JSON escapes so no value can close the block. Past COMPRESS_OVER
bytes they are gzipped and base64-encoded instead (a 100k-sample run's rows are ~37 MB
as JSON, ~8 MB this way: gzip level 4 takes a quarter of level 6's time for 20% more
bytes) and the page inflates them with DecompressionStream. A Content-Security-Policy
with the hashes of our one script and one style keeps anything else from running or
loading, as a second line behind the escaping.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
from collections.abc import Callable
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from exprof import hints
from exprof.atomic import write_atomic
from exprof.compare import compare
from exprof.errors import ExprofError
from exprof.jsonio import dumps
from exprof.refs import ExperimentRef, resolve
from exprof.render import fmt_value
from exprof.report import charts
from exprof.report.data import COLUMNS, RunData, completions, run_data
from exprof.report.matrix import experiment_context
from exprof.sides import Side, load_side

COMPRESS_OVER = 2_000_000
GENERATOR = b'<meta name="generator" content="exprof'  # in every page's head (base.html)
FAILURES_LISTED = 200
FLIPS_LISTED = 100
ONLY_LISTED = 20
HEADLINE = (
    ("fact_coverage", "fact coverage"),
    ("refusal_rate", "refusal rate"),
    ("geometric_mean", "geometric mean"),
)


def build_report(
    refs: list[str],
    store_factory: Callable[[], Any],
    output_dir: str | Path,
    out: str | Path | None = None,
    top: int = 10,
    compress_over: int = COMPRESS_OVER,
    baseline: str | None = None,
) -> Path:
    """Write the report for one ref (a run page, or an experiment page for a matrix
    experiment's id) or two (a compare page); return its path. A ref is a run id, an
    experiment id or an export directory; a plain experiment id means its latest run."""
    store = _experiment_store(refs[0], store_factory) if len(refs) == 1 else None
    if store is not None:
        return _experiment_report(store, refs[0], Path(output_dir), out, baseline)
    if baseline is not None:
        raise ExprofError(
            f"--baseline: give a matrix experiment's id (see `{hints.command('runs')}`)"
        )
    sides = [load_side(ref, store_factory) for ref in refs]
    target = Path(out) if out else default_out(sides, Path(output_dir))
    check_target(target)
    if len(sides) == 1:
        html = run_page(run_data(sides[0]), compress_over)
    else:
        html = compare_page(sides[0], sides[1], top, compress_over)
    return _write(target, html)


def _write(target: Path, html: str) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExprofError(f"{target}: cannot create the report's folder: {exc.strerror}") from None
    try:
        write_atomic(target, [html])
    except OSError as exc:
        raise ExprofError(f"{target}: cannot write the report: {exc.strerror}") from None
    return target


def _experiment_store(ref: str, store_factory: Callable[[], Any]) -> Any:
    """The store, when ref names a matrix experiment (and no run or export directory)."""
    found = resolve(ref, store_factory)
    return found.store if isinstance(found, ExperimentRef) else None


def _experiment_report(
    store: Any, experiment_id: str, output_dir: Path, out: str | Path | None, baseline: str | None
) -> Path:
    """<output-dir>/<experiment_id>/report.html by default, a folder beside its cells'
    (each cell's exports go to <output-dir>/<run id>/); a cell's run page, where one has
    been written there, is linked."""
    target = Path(out) if out else output_dir / experiment_id / "report.html"
    check_target(target)
    record = store.experiment_record(experiment_id)
    links = {}
    for payload in record.cells:
        page = output_dir / payload["run_id"] / "report.html"
        if page.is_file():
            links[payload["run_id"]] = quote(
                Path(os.path.relpath(page.resolve(), target.resolve().parent)).as_posix()
            )
    context = experiment_context(store, experiment_id, baseline, links)
    return _write(target, _render("experiment.html", context, {}, COMPRESS_OVER))


def check_target(target: Path) -> None:
    """Replace only a page exprof wrote: never the store, an export file, a folder or a
    file of the user's that an --out typo happens to name."""
    if "\x00" in str(target):
        raise ExprofError("--out: a path cannot contain a NUL byte")
    try:
        if not target.exists() and not target.is_symlink():
            return
        if target.is_symlink() or not target.is_file():
            raise ExprofError(f"{target}: exists and is not a regular file; choose another --out")
        with target.open("rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise ExprofError(f"{target}: cannot use it: {exc.strerror}") from None
    if GENERATOR not in head:
        raise ExprofError(f"{target}: exists and is not an exprof report; choose another --out")


def default_out(sides: list[Side], output_dir: Path) -> Path:
    """<output-dir>/<run>/report.html; a compare goes beside B as compare-<A>.html. An
    export directory's report goes into that directory."""

    def folder(side: Side) -> Path:
        return Path(side.label) if side.store is None else output_dir / side.summary["run_id"]

    if len(sides) == 1:
        return folder(sides[0]) / "report.html"
    return folder(sides[1]) / f"compare-{folder(sides[0]).name}.html"


# -- run page ----------------------------------------------------------------------


def run_page(run: RunData, compress_over: int = COMPRESS_OVER) -> str:
    summary = run.summary
    coverage = run.column("coverage")
    refused = run.column("refused")
    failures = run.failures()
    by_class = summary.get("failures_by_class") or _count(r[10] for r in failures)
    context = {
        "title": f"Run {run.label}",
        "summary": summary,
        "source": run.source,
        "cards": _run_cards(summary),
        "charts": {
            "coverage": charts.distribution(coverage),
            "refusals": charts.categories(
                [("answered", len(refused) - sum(refused)), ("refused", sum(refused))],
                ("bar", "bar refused"),
            )
            if refused
            else None,
            "tokens": charts.histogram(run.column("output_tokens")),
            "latency": charts.histogram(run.column("latency_ms")),
            "ttft": charts.histogram(run.column("ttft_ms")),
            "speed": charts.histogram(run.column("output_tokens_per_s")),
        },
        "failed_total": len(failures),
        "failures_by_class": sorted(by_class.items()),
        "failures": [(r[0], r[10], r[11]) for r in failures[:FAILURES_LISTED]],
        "config": [(k, _show(v)) for k, v in sorted(run.config.items())],
    }
    table = {"columns": list(COLUMNS), "facts": run.facts, "rows": run.rows}
    return _render("run.html", context, table, compress_over)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _run_cards(summary: dict[str, Any]) -> list[dict[str, Any]]:
    cards = [
        {"id": key, "label": label, "value": fmt_value(summary.get(key)), "detail": detail}
        for (key, label), detail in zip(
            HEADLINE,
            (
                "mean over answered samples",
                "share of answers refused",
                "√(coverage × (1 − refusal))",
            ),
            strict=True,
        )
    ]
    for name, value in (summary.get("metrics") or {}).items():  # custom metrics
        parts = value.items() if isinstance(value, dict) else [(None, value)]
        for key, mean in parts:
            label = name if key is None else f"{name}.{key}"
            cards.append(
                {
                    "id": f"custom-{label}",
                    "label": label,
                    "value": fmt_value(mean),
                    "detail": "mean",
                }
            )
    total, done = summary.get("samples_total"), summary.get("samples_completed")
    failed = summary.get("samples_failed") or 0
    of_total = f"of {total:,} · " if isinstance(total, int) else ""
    cards.append(
        {
            "id": "samples",
            "label": "samples answered",
            "value": fmt_value(done if not isinstance(done, int) else f"{done:,}"),
            "detail": of_total + (f"{failed:,} failed" if failed else "none failed"),
        }
    )
    cards.append(
        {
            "id": "tokens",
            "label": "tokens out",
            "value": f"{summary.get('output_tokens') or 0:,}",
            "detail": f"{summary.get('input_tokens') or 0:,} in",
        }
    )
    cost = summary.get("estimated_cost_usd")
    if cost is not None:
        value = f"${cost:,.4f}" if isinstance(cost, int | float) else str(cost)
        cards.append(
            {"id": "cost", "label": "estimated cost", "value": value, "detail": by_class(summary)}
        )
        cards.extend(cache_cards(summary))
    latency = summary.get("latency_ms")
    if latency:
        cards.append(
            {
                "id": "latency",
                "label": "latency p50",
                "value": f"{fmt_value(latency['p50'])} ms",
                "detail": f"p90 {fmt_value(latency['p90'])} · p99 {fmt_value(latency['p99'])} ms",
            }
        )
    else:
        cards.append(
            {"id": "latency", "label": "latency", "value": "–", "detail": "not measured (mock)"}
        )
    return cards


def by_class(summary: dict[str, Any]) -> str:
    """The cost panel's breakdown: each token class that cost anything."""
    names = {
        "input": "input",
        "cache_write_5m": "5m writes",
        "cache_write_1h": "1h writes",
        "cache_read": "reads",
        "output": "output",
    }
    classes = summary.get("cost_by_class") or {}
    return " · ".join(f"{names[k]} ${v:,.4f}" for k, v in classes.items() if v)


def cache_cards(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The cache hit rate with what it saved, and the cost per correct answer."""
    cards = []
    rate = summary.get("cache_hit_rate")
    if rate is not None:
        saving = summary.get("cache_saving_usd") or 0.0
        written = summary.get("cache_write_tokens") or 0
        cards.append(
            {
                "id": "cache",
                "label": "cache hit rate",
                "value": f"{rate:.1%}",
                "detail": f"saved ${saving:,.4f} · {written:,} tokens written",
            }
        )
    per_correct = summary.get("cost_per_correct_usd")
    if per_correct is not None:
        cards.append(
            {
                "id": "per_correct",
                "label": "cost per correct answer",
                "value": f"${per_correct:,.4f}",
                "detail": "full coverage, no refusal",
            }
        )
    return cards


def _show(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value)


# -- compare page ------------------------------------------------------------------


def compare_page(a: Side, b: Side, top: int = 10, compress_over: int = COMPRESS_OVER) -> str:
    result = compare(a, b, top=top)
    wanted = {c["dialogue_id"] for c in result["top_changed"]}
    texts_a, texts_b = completions(a, wanted), completions(b, wanted)
    changes = []
    for c in result["top_changed"]:
        d = c["dialogue_id"]
        lost = {f: "lost" for f in c["facts_lost"]}
        gained = {f: "gained" for f in c["facts_gained"]}
        changes.append(
            {
                **c,
                "text_a": segments(texts_a.get(d, "(no answer text recorded)"), lost),
                "text_b": segments(texts_b.get(d, "(no answer text recorded)"), gained),
            }
        )
    metrics = result["metrics"]
    flips = result["refusal_flips"]
    context = {
        "title": f"Compare {result['a']} → {result['b']}",
        "result": result,
        "cards": [_compare_card(key, label, metrics[key]) for key, label in HEADLINE],
        "metric_rows": [_metric_row(name, m) for name, m in metrics.items()],
        "ci": charts.ci_bars(
            {k: m for k, m in metrics.items() if k in dict(HEADLINE) or k.startswith("metrics.")}
        ),
        "scatter": charts.scatter(
            [(r["coverage_a"], r["coverage_b"]) for r in result["per_sample"]]
        ),
        "flips": {
            "a": flips["refused_in_a_only"][:FLIPS_LISTED],
            "b": flips["refused_in_b_only"][:FLIPS_LISTED],
            "a_total": len(flips["refused_in_a_only"]),
            "b_total": len(flips["refused_in_b_only"]),
        },
        "changes": changes,
        "config_diff": [
            (key, _show(v["a"]), _show(v["b"]))
            for key, v in result["config_diff"]["fields"].items()
        ],
        "only": {"a": result["a_only"][:ONLY_LISTED], "b": result["b_only"][:ONLY_LISTED]},
    }
    columns = ["dialogue_id", "coverage_a", "coverage_b", "delta", "refused_a", "refused_b"]
    rows = [
        [
            r["dialogue_id"],
            round(r["coverage_a"], 4),
            round(r["coverage_b"], 4),
            round(r["coverage_b"] - r["coverage_a"], 4),
            int(r["refused_a"]),
            int(r["refused_b"]),
        ]
        for r in result["per_sample"]
    ]
    return _render("compare.html", context, {"columns": columns, "rows": rows}, compress_over)


def _kind(verdict: str | None) -> str:
    verdict = verdict or ""
    return "good" if verdict == "improved" else "bad" if verdict == "regressed" else "neutral"


def _compare_card(key: str, label: str, m: dict[str, Any]) -> dict[str, Any]:
    ci = m.get("ci95")
    return {
        "id": key,
        "label": label,
        "value": f"{m['delta']:+.4f}",
        "detail": f"{fmt_value(m['a'])} → {fmt_value(m['b'])}"
        + (f" · CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""),
        "verdict": m.get("verdict") or "",
        "kind": _kind(m.get("verdict")),
    }


def _metric_row(name: str, m: dict[str, Any]) -> dict[str, Any]:
    ci = m.get("ci95")
    delta = m["delta"]
    return {
        "name": name,
        "a": fmt_value(m["a"]),
        "b": fmt_value(m["b"]),
        "delta": f"{delta:+}" if isinstance(delta, int | float) else fmt_value(delta),
        "relative": "–" if m.get("relative") is None else f"{m['relative']:+.1%}",
        "ci": f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "–",
        "verdict": m.get("verdict") or "",
        "kind": _kind(m.get("verdict")),
    }


def segments(text: str, marks: dict[str, str]) -> list[tuple[str, str]]:
    """The text cut into (piece, mark kind or "") where the facts occur, case-insensitive
    as the scorer matches them; the template escapes every piece."""
    lower = text.lower()
    spans = []
    if len(lower) == len(text):  # lower() can change lengths (e.g. "İ"); then mark nothing
        for fact, kind in marks.items():
            needle = fact.lower()
            start = lower.find(needle) if needle else -1
            while start >= 0:
                spans.append((start, start + len(needle), kind))
                start = lower.find(needle, start + len(needle))
    spans.sort(key=lambda s: (s[0], -s[1]))
    out, pos = [], 0
    for start, end, kind in spans:
        if start < pos:
            continue
        out += [(text[pos:start], ""), (text[start:end], kind)]
        pos = end
    out.append((text[pos:], ""))
    return [piece for piece in out if piece[0]]


# -- rendering ---------------------------------------------------------------------

_ENV: Environment | None = None


def _env() -> Environment:
    global _ENV
    if _ENV is None:
        _ENV = Environment(
            loader=PackageLoader("exprof.report", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _ENV


def _asset(name: str) -> str:
    return (resources.files("exprof.report") / "templates" / name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def embed_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' left raw."""
    return dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _render(template: str, context: dict[str, Any], table: Any, compress_over: int) -> str:
    text = embed_json(table)
    encoding = None
    if len(text) > compress_over:
        packed = gzip.compress(text.encode("utf-8"), compresslevel=4, mtime=0)
        text, encoding = '"' + base64.b64encode(packed).decode("ascii") + '"', "gzip"
    css, js = _asset("report.css"), _asset("report.js")
    try:
        exprof_version = version("exprof")
    except PackageNotFoundError:
        exprof_version = "dev"
    return (
        _env()
        .get_template(template)
        .render(
            **context,
            version=exprof_version,
            css=Markup(css),
            js=Markup(js),
            style_hash=_csp_hash(css),
            script_hash=_csp_hash(js),
            table_json=Markup(text),
            table_encoding=encoding,
        )
    )
