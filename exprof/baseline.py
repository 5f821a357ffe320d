"""`compare EXP --baseline CELL`: every cell of a matrix experiment against one of its
cells, paired by dialogue id, with Holm-corrected p-values, and the same as a CI gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exprof.compare import compare, verdict
from exprof.errors import ExprofError
from exprof.sides import load_side
from exprof.stats import bootstrap_means, bootstrap_p_value, holm
from exprof.store.engine import Store


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
