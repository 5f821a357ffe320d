"""What the experiment page shows: a heatmap of cells by metric, the cost-quality
frontier, and every cell against a baseline.

Nothing here computes a statistic. The cells' metrics come from
`experiment.experiment_summary` (what `summarize EXPERIMENT_ID` prints) and the
comparisons, CIs, Holm-corrected p-values and verdicts from
`experiment.compare_to_baseline` (what `compare EXPERIMENT_ID --baseline` prints), and
the frontier from `frontier.add_frontier` (what summarize EXPERIMENT_ID prints), so
the page and the commands cannot disagree. This module only lays them out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exprof.baseline import compare_to_baseline
from exprof.config_matrix import MATRIX_KEYS
from exprof.errors import ExprofError
from exprof.experiment import experiment_summary
from exprof.frontier import add_frontier
from exprof.jsonio import dumps
from exprof.knobs import KNOBS, describe, in_words
from exprof.render import fmt_value
from exprof.report import charts

# A cell shows these parameters, and any knob its matrix varies; its mock answers' file
# only where the matrix varies it (a path says nothing about a cell otherwise).
PARAMS = ("model", "temperature", "max_tokens", "system")
NAMED_PARAMS = ("system", "mock_responses_path")
SEED_METRICS = ("fact_coverage", "refusal_rate", "geometric_mean")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    higher_is_better: bool
    value: Callable[[dict[str, Any]], float | None]
    show: Callable[[float], str] = fmt_value


def _field(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda cell: _number(cell.get(key))


def _custom(name: str, key: str | None) -> Callable[[dict[str, Any]], float | None]:
    def value(cell: dict[str, Any]) -> float | None:
        found = (cell.get("metrics") or {}).get(name)
        return _number(found.get(key) if isinstance(found, dict) and key else found)

    return value


def _number(value: Any) -> float | None:
    """A value to colour and print: a count stays an int (prints as 0, not 0.0)."""
    if isinstance(value, bool):
        return float(value)
    return value if isinstance(value, int | float) else None


def _dollars(value: float) -> str:
    return f"${value:,.4f}"


def columns(cells: list[dict[str, Any]]) -> list[Column]:
    """The heatmap's metric columns: the seed metrics, each custom metric (a dict-valued
    one as `name.key`, as compare names it), the repeat statistics when there are
    repeats, then cost and latency. Custom metrics count higher as better, as compare's
    verdicts do."""
    out = [
        Column("fact_coverage", "fact coverage", True, _field("fact_coverage")),
        Column("refusal_rate", "refusal rate", False, _field("refusal_rate")),
        Column("geometric_mean", "geometric mean", True, _field("geometric_mean")),
    ]
    for cell in cells:
        for name, value in (cell.get("metrics") or {}).items():
            for key in list(value) if isinstance(value, dict) else [None]:
                label = name if key is None else f"{name}.{key}"
                if label not in (c.key for c in out):
                    out.append(Column(label, label, True, _custom(name, key)))
    if any("repeats" in c for c in cells):
        out += [
            Column("pass_at_k", "pass@k", True, _field("pass_at_k")),
            Column("pass_hat_k", "pass^k", True, _field("pass_hat_k")),
            Column("refusal_flips", "refusal flips", False, _field("refusal_flips")),
        ]
    out += [
        Column("estimated_cost_usd", "cost", False, _field("estimated_cost_usd"), _dollars),
    ]
    if any(c.get("cost_per_correct_usd") is not None for c in cells):
        out.append(
            Column(
                "cost_per_correct_usd",
                "cost / correct",
                False,
                _field("cost_per_correct_usd"),
                _dollars,
            )
        )
    out += [
        Column("latency_p50_ms", "latency p50 (ms)", False, _field("latency_p50_ms")),
    ]
    return out


def heatmap(cells: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Rows of cells, each with its parameters and one coloured, printed value per
    metric column; the colour is scaled within the column."""
    cols = columns(cells)
    values = [[col.value(cell) for cell in cells] for col in cols]
    classes = [
        charts.heat_classes(v, col.higher_is_better) for v, col in zip(values, cols, strict=True)
    ]
    matrix = config.get("matrix") or {}
    keys = PARAMS + tuple(k for k in MATRIX_KEYS if k in matrix and k not in PARAMS)
    rows = []
    for i, cell in enumerate(cells):
        params = cell.get("params") or {}
        shown = []
        for key in keys:
            if key in NAMED_PARAMS:
                name = params.get(key)
                # the text itself goes in the tooltip; the cell shows the short name
                shown.append(
                    ("–" if name is None else str(name), matrix.get(key, {}).get(name, ""))
                )
            else:
                value = params.get(key, config.get(key))
                if key in KNOBS and key not in params and value is not None:
                    value = describe(key, value)  # the config's own value, in a word
                shown.append((fmt_value(value), ""))
        metrics = []
        for j, col in enumerate(cols):
            v = values[j][i]
            text = "–" if v is None else col.show(v)
            ci = cell.get(f"{col.key}_ci95")
            title = f"{col.label}: {text}" + (f", 95% CI [{ci[0]}, {ci[1]}]" if ci else "")
            metrics.append({"text": text, "cls": classes[j][i], "title": title})
        rows.append(
            {
                "name": cell["cell"],
                "run_id": cell["run_id"],
                "status": cell.get("status", ""),
                "samples": cell.get("samples", ""),
                "params": shown,
                "metrics": metrics,
            }
        )
    return {
        "params": keys,
        "columns": [
            {"key": c.key, "label": c.label, "better": "higher" if c.higher_is_better else "lower"}
            for c in cols
        ],
        "rows": rows,
    }


def _baseline_cell(
    record_cells: list[dict[str, Any]], started: set[str], wanted: str | None
) -> str:
    if wanted is not None:
        for payload in record_cells:
            if wanted in (payload["name"], payload["run_id"]) and payload["run_id"] not in started:
                raise ExprofError(f"--baseline: cell {payload['name']!r} has not started yet")
        return wanted  # compare_to_baseline names the cells when there is no such one
    for payload in record_cells:
        if payload["run_id"] in started:
            return str(payload["name"])
    return ""


def against_baseline(found: dict[str, Any]) -> dict[str, Any]:
    """compare_to_baseline's rows as the page shows them: a table row per cell, and one
    CI chart per metric with a bar per cell. The coverage chart carries the table's
    Holm-corrected verdict; the other metrics' verdicts are compare's, uncorrected."""
    rows: list[dict[str, Any]] = []
    per_metric: dict[str, dict[str, Any]] = {}
    for r in found["cells"]:
        ci = r.get("fact_coverage_ci95")
        rows.append(
            {
                "name": r["cell"],
                "samples": r["samples"],
                "coverage_delta": f"{r['fact_coverage_delta']:+.4f}",
                "coverage_ci": f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "–",
                "coverage_p": fmt_value(r.get("fact_coverage_p")),
                "coverage_p_holm": fmt_value(r.get("fact_coverage_p_holm")),
                "refusal_delta": f"{r['refusal_rate_delta']:+.4f}",
                "refusal_p": fmt_value(r.get("refusal_mcnemar_p")),
                "refusal_p_holm": fmt_value(r.get("refusal_mcnemar_p_holm")),
                "verdict": r["verdict"],
                "kind": _kind(r["verdict"]),
            }
        )
        for key, m in (r.get("metrics") or {}).items():
            if key in SEED_METRICS or key.startswith("metrics."):
                holm = key == "fact_coverage" and m.get("ci95")  # else compare's reason
                shown = {**m, "verdict": r["verdict"]} if holm else m
                per_metric.setdefault(key, {})[r["cell"]] = shown
    chart_list = []
    for key, by_cell in per_metric.items():
        chart = charts.ci_bars(by_cell)
        reason = next(iter(by_cell.values())).get("verdict") if chart is None else None
        chart_list.append({"metric": key, "chart": chart, "empty": reason or ""})
    return {
        "baseline": found["baseline"],
        "statistics": found["statistics"],
        "rows": rows,
        "charts": chart_list,
    }


def _kind(verdict: str) -> str:
    return "good" if verdict == "improved" else "bad" if verdict == "regressed" else "neutral"


def experiment_context(
    store: Any, experiment_id: str, baseline: str | None, links: dict[str, str]
) -> dict[str, Any]:
    """Everything the experiment page shows, ready for templates/experiment.html.
    `links` maps a cell's run id to the path of its run page, where one exists."""
    record = store.experiment_record(experiment_id)
    if record is None:
        raise ExprofError(f"{store.location}: no experiment {experiment_id!r}")
    found = add_frontier(store, experiment_summary(store, experiment_id))
    cells = found["cells"]
    started = {c["run_id"] for c in cells if c.get("status") != "not started"}
    base = _baseline_cell(record.cells, started, baseline)
    versus = (
        against_baseline(compare_to_baseline(store, experiment_id, base, detail=True))
        if base
        else None
    )
    config = dict(record.config)
    return {
        "title": f"Experiment {experiment_id}",
        "experiment_id": experiment_id,
        "mode": record.mode,
        "cards": _cards(cells, versus),
        "heatmap": heatmap(cells, config),
        "frontier": charts.frontier_scatter(cells, found["frontier"]["metric"]),
        "frontier_tests": found["frontier"]["neighbours"],
        "repeats": next((c["repeats"] for c in cells if "repeats" in c), None),
        "versus": versus,
        "cells": [
            {
                "name": c["cell"],
                "run_id": c["run_id"],
                "status": c.get("status", ""),
                "samples": c.get("samples", "–"),
                "params": ", ".join(f"{k}={v}" for k, v in in_words(c.get("params") or {}).items()),
                "link": links.get(c["run_id"]),
            }
            for c in cells
        ],
        "config": [(k, v if isinstance(v, str) else dumps(v)) for k, v in sorted(config.items())],
    }


def _cards(cells: list[dict[str, Any]], versus: dict[str, Any] | None) -> list[dict[str, Any]]:
    done = sum(1 for c in cells if c.get("status") == "complete")
    cards = [
        {
            "id": "cells",
            "label": "cells",
            "value": str(len(cells)),
            "detail": f"{done} complete",
        }
    ]
    for key, label in (
        ("fact_coverage", "best fact coverage"),
        ("geometric_mean", "best geometric mean"),
    ):
        scored = [(c[key], c["cell"]) for c in cells if isinstance(c.get(key), int | float)]
        if scored:
            best = max(scored, key=lambda s: s[0])
            ties = sum(1 for s in scored if s[0] == best[0])
            detail = best[1] if ties == 1 else f"{ties} cells tie"
            cards.append(
                {"id": f"best-{key}", "label": label, "value": fmt_value(best[0]), "detail": detail}
            )
    costs = [
        c["estimated_cost_usd"]
        for c in cells
        if isinstance(c.get("estimated_cost_usd"), int | float)
    ]
    if costs:
        cards.append(
            {
                "id": "cost",
                "label": "estimated cost",
                "value": _dollars(sum(costs)),
                "detail": "all cells",
            }
        )
    if versus is not None:
        verdicts = [r["verdict"] for r in versus["rows"]]
        cards.append(
            {
                "id": "baseline",
                "label": "against the baseline",
                "value": f"{verdicts.count('improved')} ↑ · {verdicts.count('regressed')} ↓",
                "detail": f"of {len(verdicts)} cells vs {versus['baseline']} (Holm)",
            }
        )
    return cards
