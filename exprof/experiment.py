"""Matrix experiments: one config, many cells, each cell a run of its own.

`matrix:` maps parameters (model, max_tokens, system, mock_responses_path, the knobs)
to lists of values; every combination is a cell (exprof.cells). The experiment is
recorded first, as an ExperimentStarted event in a stream of its own keyed by the
experiment id, listing each cell's name, parameters and run id; then the cells run one
after another on the same Runner, so the concurrency limit is shared (never more than N
requests in flight in all). A cell's run id is `<experiment id>.<cell name>`, and its
RunStarted carries the cell, so `runs`, `summarize` and `compare` can group and label
the cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exprof import hints, knobs
from exprof.cells import Cell, cell_config, cell_mocks, cell_samples, plan_cells
from exprof.config import Config, auto_run_id
from exprof.dataset import Sample
from exprof.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SAMPLES_FAILED,
    ConcurrencyError,
    ExprofError,
)
from exprof.run.budget import Budget
from exprof.run.runner import Runner, RunResult
from exprof.stats import repeat_statistics
from exprof.store.engine import Store
from exprof.store.events import ExperimentStarted
from exprof.store.record import load_run, sequential_events
from exprof.summary import run_summary


@dataclass(frozen=True)
class ExperimentResult:
    experiment_id: str
    cells: list[dict[str, Any]]  # experiment_summary()'s rows
    exit_code: int
    message: str
    sequential: dict[str, Any] | None = None  # a sequential A/B's outcome (exprof.versus)


def run_experiment(
    runner: Runner,
    config: Config,
    samples: list[Sample],
    mode: str,
    mocks: dict[str, dict[str, Any]] | None,
    experiment_id: str | None = None,
    concurrency: int | None = None,
) -> ExperimentResult:
    """Record the experiment, then run every cell."""
    store = runner.store
    if experiment_id is not None and store.experiment_record(experiment_id) is not None:
        raise ExprofError(
            f"experiment {experiment_id!r} already exists; continue it with "
            f"`{hints.command('resume', experiment_id)}` or choose another --run-id"
        )
    # The experiment's id comes from the same family as its runs' (`exp`, `exp-2`, ...),
    # chosen and held under the store's write lock like a run's, then recorded.
    lease = store.acquire_new_run(
        config.experiment_id, experiment_id, lambda n: auto_run_id(config.experiment_id, n)
    )
    chosen = lease.run_id
    try:
        cells = plan_cells(config, chosen)
        taken = [c.run_id for c in cells if store.run_exists(c.run_id)]
        if taken:
            raise ExprofError(f"run {taken[0]!r} already exists; choose another --run-id")
        record = ExperimentStarted(chosen, mode, config.to_dict(), [c.to_payload() for c in cells])
        try:
            store.append(chosen, [record], after_seq=0)
        except ConcurrencyError:
            raise ExprofError(f"experiment {chosen!r} already exists") from None
    finally:
        store.release_lease(lease)
    return _run_cells(runner, record, samples, mocks, concurrency, resume=False)


def resume_experiment(
    runner: Runner,
    experiment_id: str,
    concurrency: int | None = None,
    retry_failed: bool = True,
    budget_usd: float | None = None,
) -> ExperimentResult:
    """Continue every unfinished cell; a cell that never started starts now, from a
    sibling's dataset snapshot (every cell records the same prompts, bar the system)."""
    record = runner.store.experiment_record(experiment_id)
    if record is None:
        raise ExprofError(f"{runner.store.location}: no experiment {experiment_id!r}")
    return _run_cells(
        runner, record, None, None, concurrency, resume=True, retry=retry_failed, limit=budget_usd
    )


def _run_cells(
    runner: Runner,
    record: ExperimentStarted,
    samples: list[Sample] | None,
    mocks: dict[str, dict[str, Any]] | None,
    concurrency: int | None,
    resume: bool,
    retry: bool = True,
    limit: float | None = None,
) -> ExperimentResult:
    store = runner.store
    config = Config.from_dict(record.config)
    exp = record.experiment_id
    # One budget for the whole experiment: the recorded cost of all its cells.
    limit = limit if limit is not None else config.budget_usd
    run_ids = [payload["run_id"] for payload in record.cells]
    budget = Budget(store, run_ids, limit) if limit is not None else None
    codes: list[int] = []
    for payload in record.cells:
        cell = Cell(payload["name"], payload["params"], payload["run_id"])
        if resume and store.run_exists(cell.run_id):
            result = runner.resume(cell.run_id, concurrency, retry, budget)
        else:
            if samples is None:
                samples, mocks = _sibling_snapshot(store, record)
            cfg = cell_config(config, cell.params)
            result = runner.run(
                cfg,
                cell_samples(samples, cfg),
                record.mode,
                mocks=cell_mocks(cfg, cell, record.mode, mocks),
                run_id=cell.run_id,
                concurrency=concurrency,
                cell={"experiment": exp, "name": cell.name, "params": cell.params},
                budget=budget,
            )
        codes.append(result.exit_code)
        if result.over_budget and budget is not None:
            return _result(store, exp, result.exit_code, budget.message(exp))
        if result.exit_code not in (EXIT_OK, EXIT_SAMPLES_FAILED):  # Ctrl-C, SIGTERM, ...
            return _result(store, exp, result.exit_code, _stopped(result, exp))
    if any(code == EXIT_SAMPLES_FAILED for code in codes):
        return _result(
            store,
            exp,
            EXIT_SAMPLES_FAILED,
            f"some samples failed; retry them with: {hints.command('resume', exp)}",
        )
    return _result(store, exp, EXIT_OK, f"experiment {exp} complete: {len(codes)} cells")


def _stopped(result: RunResult, exp: str) -> str:
    interrupted = result.exit_code == EXIT_INTERRUPTED
    what = "interrupted" if interrupted else f"stopped in cell {result.run_id}"
    return f"{what}; continue with: {hints.command('resume', exp)}"


def _result(store: Store, exp: str, code: int, message: str) -> ExperimentResult:
    return ExperimentResult(exp, experiment_summary(store, exp)["cells"], code, message)


def _sibling_snapshot(
    store: Store, record: ExperimentStarted
) -> tuple[list[Sample], dict[str, dict[str, Any]]]:
    for payload in record.cells:
        if store.run_exists(payload["run_id"]):
            run = load_run(store, payload["run_id"])
            return run.samples, run.mocks
    raise ExprofError(
        f"experiment {record.experiment_id} stopped before its first cell started; "
        "run the config again"
    )


# -- reading an experiment back ----------------------------------------------------


def experiment_summary(store: Store, experiment_id: str) -> dict[str, Any]:
    """One row per cell: its parameters, each metric with its 95% CI, cost, latency."""
    record = store.experiment_record(experiment_id)
    if record is None:
        raise ExprofError(f"{store.location}: no experiment {experiment_id!r}")
    rows = []
    for payload in record.cells:
        row: dict[str, Any] = {"cell": payload["name"], "run_id": payload["run_id"]}
        row["params"] = knobs.in_words(payload["params"])
        if not store.run_exists(payload["run_id"]):
            rows.append({**row, "status": "not started"})
            continue
        rows.append({**row, **_cell_metrics(store, payload["run_id"])})
    found: dict[str, Any] = {"experiment_id": experiment_id, "mode": record.mode, "cells": rows}
    outcome = sequential_outcome(store, experiment_id)
    if outcome is not None:  # a sequential A/B: its arms stopped when it was decided
        found["sequential"] = outcome
        for row in rows:
            if row.get("status") == "incomplete":
                row["status"] = "stopped"
    return found


def sequential_outcome(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """A stopped sequential A/B experiment's `sequential` block (exprof.versus): verdict,
    winner, pairs used and the confidence sequence's interval for the mean B - A."""
    if store.last_seq(experiment_id) < 2:  # a matrix experiment's stream is its record
        return None
    _, stopped = sequential_events(store, experiment_id)
    if stopped is None:
        return None
    return {
        "verdict": stopped.verdict,
        "winner": stopped.winner,
        "pairs_used": stopped.pairs_used,
        "interval": stopped.interval,
    }


def _cell_metrics(store: Store, run_id: str) -> dict[str, Any]:
    found = repeat_statistics(store.sample_scores(run_id))  # clustered CIs at any repeats
    # The cell's scores and its custom metrics' events are read this once.
    summary = run_summary(store, run_id, found, metric_cis=True)
    out: dict[str, Any] = {
        "status": summary["status"],
        "samples": f"{summary['samples_completed']}/{summary['samples_total']}",
    }
    for name in ("fact_coverage", "refusal_rate"):
        out[name], out[f"{name}_ci95"] = found[name], found[f"{name}_ci95"]
    out["geometric_mean"] = summary["geometric_mean"]
    if summary.get("repeats"):
        for name in ("repeats", "pass_at_k", "pass_hat_k", "refusal_flips"):
            out[name] = summary[name]
    if summary.get("metrics"):  # custom metrics: their means, as in summarize
        out["metrics"], out["metrics_ci95"] = summary["metrics"], summary["metrics_ci95"]
    if "responses_reused" in summary:  # cache: true (answers taken from the store)
        out["responses_reused"] = summary["responses_reused"]
        out["cost_avoided_usd"] = summary["cost_avoided_usd"]
    for name in ("thinking_tokens", "cut_off_rate"):  # runs that set a knob
        if name in summary:
            out[name] = summary[name]
    out["estimated_cost_usd"] = summary.get("estimated_cost_usd")  # live runs only
    if summary.get("cost_per_correct_usd") is not None:
        out["cost_per_correct_usd"] = summary["cost_per_correct_usd"]
    out["latency_p50_ms"] = (summary.get("latency_ms") or {}).get("p50")
    return out
