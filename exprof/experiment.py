"""Matrix experiments: one config, many cells, each cell a run of its own.

`matrix:` maps parameters (model, max_tokens, system, mock_responses_path, the knobs)
to lists of values; every combination is a cell. The experiment is recorded first, as
an ExperimentStarted event in a stream of its own keyed by the experiment id, listing
each cell's name, parameters and run id; then the cells run one after another on the
same Runner, so the concurrency limit is shared (never more than N requests in flight
in all). A cell's run id is `<experiment id>.<cell name>`, and its RunStarted carries
the cell, so `runs`, `summarize` and `compare` can group and label the cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from exprof import hints, knobs
from exprof.config import Config, auto_run_id
from exprof.config_matrix import MAX_CELLS, NAMED_MATRIX_KEYS
from exprof.dataset import Sample
from exprof.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SAMPLES_FAILED,
    ConcurrencyError,
    ExprofError,
)
from exprof.metric_specs import with_schema_metric
from exprof.mock_responses import load_mock_responses
from exprof.run.budget import Budget
from exprof.run.runner import Runner, RunResult
from exprof.stats import bootstrap_means, bootstrap_p_value, holm, repeat_statistics
from exprof.store.engine import Store
from exprof.store.events import ExperimentStarted
from exprof.store.record import load_run, sequential_events
from exprof.summary import run_summary

RUN_ID_MAX = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Cell:
    name: str
    params: dict[str, Any]  # the matrix's values; system by its short name
    run_id: str

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "run_id": self.run_id}


@dataclass(frozen=True)
class ExperimentResult:
    experiment_id: str
    cells: list[dict[str, Any]]  # experiment_summary()'s rows
    exit_code: int
    message: str
    sequential: dict[str, Any] | None = None  # a sequential A/B's outcome (exprof.versus)


def plan_cells(config: Config, experiment_id: str) -> list[Cell]:
    """Every combination of the matrix's values, in the order the config lists them."""
    matrix = config.matrix or {}
    keys = list(matrix)
    choices = [list(matrix[k]) for k in keys]  # system: its names
    labels = [_labels(k, values) for k, values in zip(keys, choices, strict=True)]
    cells = []
    for combo in itertools.product(*(range(len(c)) for c in choices)):
        params = {k: choices[i][j] for i, (k, j) in enumerate(zip(keys, combo, strict=True))}
        name = ".".join(labels[i][j] for i, j in enumerate(combo))
        cells.append(Cell(name, params, cell_run_id(experiment_id, name)))
    return cells


def cell_configs(config: Config) -> list[tuple[str | None, Config]]:
    """Each cell's name and config; a config without a matrix is its one, unnamed."""
    if not config.matrix:
        return [(None, config)]
    return [(c.name, cell_config(config, c.params)) for c in plan_cells(config, "x")]


def cell_run_id(experiment_id: str, name: str) -> str:
    """`<experiment>.<cell>`, a valid run id: a long one is cut and given a digest of
    the whole so that two cells never share an id."""
    run_id = f"{experiment_id}.{name}"
    if len(run_id) <= RUN_ID_MAX:
        return run_id
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    return f"{run_id[: RUN_ID_MAX - 11]}.{digest}"


def cell_config(config: Config, params: dict[str, Any]) -> Config:
    """The config one cell runs with: the matrix's values in place, no matrix."""
    changes: dict[str, Any] = {"matrix": None}
    for key, value in params.items():
        if key in NAMED_MATRIX_KEYS:
            changes[key] = (config.matrix or {})[key][value]
        else:
            changes[key] = value
    if "output_schema" in params:
        changes["metrics"] = with_schema_metric(config.metrics, params["output_schema"])
    return dataclasses.replace(config, **changes)


def cell_samples(samples: list[Sample], config: Config) -> list[Sample]:
    """A matrix `system` replaces each sample's system prompt; the cell's dataset
    snapshot records the prompts as sent."""
    if config.system is None:
        return samples
    return [dataclasses.replace(s, system=config.system) for s in samples]


def cell_mocks(
    config: Config, cell: Cell, mode: str, mocks: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]] | None:
    """A matrix that varies `mock_responses_path` gives each mock cell its own answers."""
    if mode != "mock" or "mock_responses_path" not in cell.params:
        return mocks
    return load_mock_responses(config.mock_responses_path)


def check_size(config: Config, yes: bool) -> None:
    n = len(plan_cells(config, config.experiment_id))
    if n > MAX_CELLS and not yes:
        raise ExprofError(f"matrix: {n} cells is more than {MAX_CELLS}; pass --yes to run them all")


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


def find_cell(store: Store, experiment_id: str, ref: str) -> dict[str, Any]:
    """A cell of the experiment by its name or its run id."""
    record = store.experiment_record(experiment_id)
    if record is None:
        raise ExprofError(f"{store.location}: no experiment {experiment_id!r}")
    for payload in record.cells:
        if ref in (payload["name"], payload["run_id"]):
            return payload
    names = ", ".join(p["name"] for p in record.cells)
    raise ExprofError(f"--baseline: no cell {ref!r} in {experiment_id} (cells: {names})")


def compare_to_baseline(
    store: Store,
    experiment_id: str,
    baseline: str,
    resamples: int = 10_000,
    seed: int = 0,
    detail: bool = False,
) -> dict[str, Any]:
    """Every cell against the baseline, paired by dialogue id, with Holm-corrected
    p-values over the comparisons made (one family for coverage, one for refusals).
    With `detail`, each row also keeps compare()'s `metrics` (every metric's delta, CI
    and uncorrected verdict), which the report draws."""
    from exprof.compare import compare, load_side, verdict

    base = find_cell(store, experiment_id, baseline)
    record = store.experiment_record(experiment_id)
    assert record is not None
    base_side = load_side(base["run_id"], lambda: store)
    rows = []
    for payload in record.cells:
        if payload["run_id"] == base["run_id"] or not store.run_exists(payload["run_id"]):
            continue
        result = compare(base_side, load_side(payload["run_id"], lambda: store), resamples, seed, 0)
        cov, ref = result["metrics"]["fact_coverage"], result["metrics"]["refusal_rate"]
        p_value = None
        if result["statistics"]["meaningful"]:  # as compare: no p from a handful of samples
            pairs = np.array([[r["coverage_a"], r["coverage_b"]] for r in result["per_sample"]])
            means = bootstrap_means(pairs, resamples, seed)
            p_value = round(bootstrap_p_value(means[:, 1] - means[:, 0]), 6)
        rows.append(
            {
                "cell": payload["name"],
                "run_id": payload["run_id"],
                "params": payload["params"],
                "samples": result["samples"]["common"],
                "fact_coverage_delta": cov["delta"],
                "fact_coverage_ci95": cov["ci95"],
                "fact_coverage_p": p_value,
                "refusal_rate_delta": ref["delta"],
                "refusal_mcnemar_p": ref.get("mcnemar_p"),
                **({"metrics": result["metrics"]} if detail else {}),
            }
        )
    for key in ("fact_coverage_p", "refusal_mcnemar_p"):
        present = [r for r in rows if r[key] is not None]
        adjusted = holm([r[key] for r in present])
        for r, corrected in zip(present, adjusted, strict=True):
            r[f"{key}_holm"] = round(corrected, 6)
    for r in rows:  # compare's rule, on the Holm-corrected p
        p = r.get("fact_coverage_p_holm")
        significant = p is not None and p < 0.05
        r["verdict"] = verdict(r["samples"], significant, r["fact_coverage_delta"] > 0)
    return {
        "experiment_id": experiment_id,
        "baseline": base["name"],
        "statistics": {"resamples": resamples, "seed": seed, "correction": "holm"},
        "cells": rows,
    }


def baseline_gate(
    found: dict[str, Any], fail_on_regression: bool, max_refusal_increase: float | None
) -> list[str]:
    """compare --baseline as a CI gate: the reasons any cell fails against the baseline,
    by the same flags as a pair's gate (coverage significantly worse, here after Holm;
    the refusal rate up by more than the threshold)."""
    reasons = []
    base = found["baseline"]
    for row in found["cells"]:
        if fail_on_regression and row["verdict"] == "regressed":
            reasons.append(
                f"{row['cell']}: fact_coverage regressed against {base} (delta "
                f"{row['fact_coverage_delta']}, Holm-corrected p {row['fact_coverage_p_holm']})"
            )
        delta = row["refusal_rate_delta"]
        if max_refusal_increase is not None and delta > max_refusal_increase:
            reasons.append(
                f"{row['cell']}: refusal_rate rose by {delta} against {base}, past "
                f"--max-refusal-increase {max_refusal_increase}"
            )
    return reasons


def _short(key: str) -> str:
    short = {"max_tokens": "mt", "system": "sys", "mock_responses_path": "mock", **knobs.SHORT}
    return short.get(key, key)


def _word(key: str, value: Any) -> str:
    """A value as its cell name spells it, before unsafe characters are replaced."""
    return str(knobs.describe(key, value) if key in knobs.KNOBS else value)


def _labels(key: str, values: list[Any]) -> list[str]:
    """`<key>-<value>` for each of one parameter's values, distinct even where a file
    system ignores case. A value an id can hold as it is keeps its plain label; one that
    had to be changed (`m/a`, `m a`, `mа` with a Cyrillic a) gets a digest of the value
    too, so that values differing only in such characters never share a cell."""
    labels = [_label(key, v, _word(key, v) != _safe(_word(key, v))) for v in values]
    folded = [label.casefold() for label in labels]
    labels = [
        _label(key, v, True) if folded.count(f) > 1 else label
        for v, label, f in zip(values, labels, folded, strict=True)
    ]
    if len({label.casefold() for label in labels}) < len(labels):  # only a crafted value
        raise ExprofError(f"matrix.{key}: two values would share a cell name; rename one")
    return labels


def _label(key: str, value: Any, digest: bool) -> str:
    label = f"{_short(key)}-{_safe(_word(key, value))}"
    if not digest:
        return label
    raw = _word(key, value).encode("utf-8", "surrogatepass")
    return f"{label}-{hashlib.sha256(raw).hexdigest()[:8]}"


def _safe(value: Any) -> str:
    return _UNSAFE.sub("-", str(value)).strip("-") or "x"
