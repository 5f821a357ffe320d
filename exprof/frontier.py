"""The cost-quality frontier of a matrix experiment: which cells give the most quality
for the money, and how sure we are.

Per cell, from its recorded answers: the cost per sample (a sample's repeats all
count), the quality (`--metric`, default fact_coverage: the mean over samples of each
sample's mean over its repeats), the cost per correct answer (total cost over total
quality: for a 0/1 metric the cost of each correct answer, for fact_coverage the cost
of each fully-covered answer's worth), with a 95% percentile interval from a seeded
bootstrap over samples, and the quality per dollar. A cell is on the frontier when no
other cell costs no more and scores no less, and beats it in one of the two. Each two
neighbours on the frontier (by cost) get a paired test over their common samples:
the quality difference and the cost difference, each with a 95% interval, from
stats.bootstrap_means (the paired bootstrap compare uses).

Costs are the ledger's: the tokens recorded as paid for, priced by pricing.py (a mock
answer's token_count too, so a mock experiment has a frontier). A cell whose model
has no price has no cost and takes no place on the frontier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from exprof.costs import sample_costs
from exprof.sample_values import PER_SAMPLE_BUILTINS, repeat_values
from exprof.stats import bootstrap_means, bootstrap_p_value
from exprof.store.engine import Store
from exprof.store.record import load_started

RESAMPLES = 1000  # enough for a percentile interval; summarize stays quick at scale
SEED = 0
USD_PLACES = 8


@dataclass(frozen=True)
class CellData:
    """One cell's per-sample quality and cost, keyed by dialogue id."""

    name: str
    quality: dict[str, float]
    cost: dict[str, float] | None


def load_cell(store: Store, name: str, run_id: str, metric: str) -> CellData:
    # One read, summed per sample in SQL, gives the built-in scores and the tokens.
    totals = store.sample_totals(run_id)
    if metric in PER_SAMPLE_BUILTINS:
        builtin = metric == "fact_coverage"
        quality = {
            dialogue_id: (coverage if builtin else refused) / answers
            for dialogue_id, answers, coverage, refused, *_ in totals
        }
    else:
        values = repeat_values(store, run_id, metric)
        quality = {d: sum(v) / len(v) for d, v in values.items()}
    return CellData(name, quality, sample_costs(load_started(store, run_id).config, totals))


def pareto(points: list[tuple[float, float] | None]) -> list[bool | None]:
    """For each (cost, quality), whether no other point costs no more, scores no less
    and is strictly better in one; None for a point with no cost."""
    out: list[bool | None] = []
    for i, p in enumerate(points):
        if p is None:
            out.append(None)
            continue
        dominated = any(
            q is not None and q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])
            for j, q in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out


def _usd(value: float) -> float:
    return round(value, USD_PLACES)


def _interval(values: np.ndarray, places: int) -> list[float | None]:
    with np.errstate(invalid="ignore"):  # a ratio's resample with no quality is inf
        lo, hi = np.percentile(values, [2.5, 97.5])
    return [None if not math.isfinite(v) else round(float(v), places) for v in (lo, hi)]


def cell_figures(cell: CellData, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """cost_per_sample and the quality with their 95% intervals (for the scatter),
    cost_per_correct with its 95% interval, quality_per_usd."""
    out: dict[str, Any] = {
        "cost_per_sample": None,
        "cost_per_sample_ci95": None,
        "quality_ci95": None,
        "cost_per_correct": None,
        "cost_per_correct_ci95": None,
        "quality_per_usd": None,
    }
    ids = [d for d in cell.quality if cell.cost is not None and d in cell.cost]
    if cell.cost is None or not ids:
        return out
    cost = np.array([cell.cost[d] for d in ids])
    quality = np.array([cell.quality[d] for d in ids])
    total_cost, total_quality = float(cost.sum()), float(quality.sum())
    out["cost_per_sample"] = _usd(total_cost / len(ids))
    means = bootstrap_means(np.column_stack([cost, quality]), resamples, seed)
    out["cost_per_sample_ci95"] = _interval(means[:, 0], USD_PLACES)
    out["quality_ci95"] = _interval(means[:, 1], 4)
    if total_quality > 0:
        out["cost_per_correct"] = _usd(total_cost / total_quality)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(means[:, 1] > 0, means[:, 0] / means[:, 1], np.inf)
        out["cost_per_correct_ci95"] = _interval(ratios, USD_PLACES)
    if total_cost > 0:
        out["quality_per_usd"] = round(total_quality / total_cost, 4)
    return out


def neighbour_test(
    cheaper: CellData, dearer: CellData, resamples: int = RESAMPLES, seed: int = SEED
) -> dict[str, Any]:
    """The dearer cell against the cheaper one, paired by sample: quality and cost per
    sample differences (dearer - cheaper) with 95% intervals, and the quality p-value."""
    assert cheaper.cost is not None and dearer.cost is not None
    ids = [
        d for d in cheaper.quality if d in dearer.quality and d in cheaper.cost and d in dearer.cost
    ]
    out: dict[str, Any] = {"from": cheaper.name, "to": dearer.name, "samples": len(ids)}
    if not ids:
        return {**out, "quality_delta": None, "cost_per_sample_delta": None}
    rows = np.array(
        [[cheaper.quality[d], dearer.quality[d], cheaper.cost[d], dearer.cost[d]] for d in ids]
    )
    centre = rows.mean(axis=0)
    means = bootstrap_means(rows, resamples, seed)
    quality_deltas, cost_deltas = means[:, 1] - means[:, 0], means[:, 3] - means[:, 2]
    return {
        **out,
        "quality_delta": round(float(centre[1] - centre[0]), 4),
        "quality_ci95": _interval(quality_deltas, 4),
        "quality_p": round(bootstrap_p_value(quality_deltas), 4),
        "cost_per_sample_delta": _usd(float(centre[3] - centre[2])),
        "cost_per_sample_ci95": _interval(cost_deltas, USD_PLACES),
    }


def frontier(
    cells: list[CellData], resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each cell's figures with its quality and on_frontier; and the neighbour tests
    along the frontier, cheapest first."""
    figures = []
    for cell in cells:
        found = cell_figures(cell, resamples, seed)
        quality = list(cell.quality.values())
        found["quality"] = round(sum(quality) / len(quality), 4) if quality else None
        figures.append(found)
    points = [
        (f["cost_per_sample"], f["quality"])
        if f["cost_per_sample"] is not None and f["quality"] is not None
        else None
        for f in figures
    ]
    for found, on in zip(figures, pareto(points), strict=True):
        found["on_frontier"] = on
    # Exact costs order the frontier; the rounded ones above only print it.
    on_front = [i for i, f in enumerate(figures) if f["on_frontier"] and cells[i].cost is not None]
    on_front.sort(key=lambda i: (_mean_cost(cells[i]), -(figures[i]["quality"] or 0.0)))
    tests = [
        neighbour_test(cells[i], cells[j], resamples, seed)
        for i, j in zip(on_front, on_front[1:], strict=False)
    ]
    return figures, tests


def _mean_cost(cell: CellData) -> float:
    assert cell.cost is not None
    return sum(cell.cost.values()) / max(len(cell.cost), 1)


def add_frontier(
    store: Store, found: dict[str, Any], metric: str = "fact_coverage"
) -> dict[str, Any]:
    """experiment_summary's result with each started cell's frontier figures and a
    `frontier` block: the quality metric and the neighbour tests."""
    started = [c for c in found["cells"] if c.get("status") != "not started"]
    data = [load_cell(store, c["cell"], c["run_id"], metric) for c in started]
    figures, tests = frontier(data)
    by_run = {c["run_id"]: f for c, f in zip(started, figures, strict=True)}
    cells = [{**c, **by_run.get(c["run_id"], {})} for c in found["cells"]]
    block = {"metric": metric, "resamples": RESAMPLES, "seed": SEED, "neighbours": tests}
    return {**found, "cells": cells, "frontier": block}
