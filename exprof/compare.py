"""Comparing two runs: paired statistics over the samples they share, flips, config diff.

The bootstrap resamples the common samples with replacement, as the textbook paired
bootstrap does, but draws the *counts* of each distinct (coverage A, coverage B,
refused A, refused B) tuple from a multinomial: the same distribution, at a cost that
depends on the number of distinct tuples (a few dozen for fact coverage) rather than on
the number of samples. That keeps 10,000 resamples of 100k samples well under a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exprof.errors import ExprofError
from exprof.knobs import KNOBS
from exprof.scoring.builtin import geometric_mean
from exprof.sides import Side
from exprof.stats import bootstrap_means, mcnemar_exact
from exprof.store.record import load_started, sequential_events

MIN_SAMPLES = 10
CONFIG_KEYS = (
    "model",
    "temperature",
    "max_tokens",
    "dataset_sha256",
    "mode",
    "api_version",
    "sent_params",
)
EXTRA_METRICS = (
    "input_tokens",
    "output_tokens",
    "latency_p50_ms",
    "latency_p90_ms",
    "estimated_cost_usd",
    "cost_per_correct_usd",
)


def verdict(samples: int, significant: bool, better: bool, counted: str = "common samples") -> str:
    """The one verdict rule, of `compare A B` and `compare EXP --baseline CELL` alike:
    below MIN_SAMPLES paired samples no test is meaningful; otherwise a significant change
    is improved or regressed, and anything else is no significant change."""
    if samples < MIN_SAMPLES:
        return f"not meaningful: {samples} {counted} (< {MIN_SAMPLES})"
    if not significant:
        return "no significant change"
    return "improved" if better else "regressed"


def _ci_verdict(n: int, lo: float, hi: float, higher_is_better: bool = True) -> str:
    """A CI that excludes 0 is significant; the side it lies on says which way."""
    return verdict(n, lo > 0 or hi < 0, (lo > 0) == higher_is_better)


def _metric_row(va: float, vb: float, verdict: str | None) -> dict[str, Any]:
    """A metric's A, B and change; the CI and verdict are filled in by the caller."""
    return {
        "a": round(va, 4),
        "b": round(vb, 4),
        "delta": round(vb - va, 4),
        "relative": _relative(va, vb),
        "ci95": None,
        "verdict": verdict,
    }


def _relative(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return round((b - a) / abs(a), 4)


def compare(a: Side, b: Side, resamples: int = 10_000, seed: int = 0, top: int = 10) -> dict:
    """The comparison as one JSON-ready object with stable keys (documented in README)."""
    b_index = {d: i for i, d in enumerate(b.ids)}
    a_only = [d for d in a.ids if d not in b_index]
    a_pos = [i for i, d in enumerate(a.ids) if d in b_index]
    if not a_pos:
        raise ExprofError(f"no common samples between {a.label} and {b.label}")
    common = [a.ids[i] for i in a_pos]
    b_pos = [b_index[d] for d in common]
    a_set = set(a.ids)
    b_only = [d for d in b.ids if d not in a_set]
    cov_a, cov_b = a.coverage[a_pos], b.coverage[b_pos]
    ref_a, ref_b = a.refused[a_pos], b.refused[b_pos]
    n = len(common)

    point = {
        "fact_coverage": (float(cov_a.mean()), float(cov_b.mean())),
        "refusal_rate": (float(ref_a.mean()), float(ref_b.mean())),
    }
    point["geometric_mean"] = (
        geometric_mean(point["fact_coverage"][0], point["refusal_rate"][0]),
        geometric_mean(point["fact_coverage"][1], point["refusal_rate"][1]),
    )
    # A sample with repeats counts as refused when most of its repeats were.
    bin_a, bin_b = ref_a >= 0.5, ref_b >= 0.5
    flips_b_only = [d for d, x, y in zip(common, bin_a, bin_b, strict=True) if y and not x]
    flips_a_only = [d for d, x, y in zip(common, bin_a, bin_b, strict=True) if x and not y]
    p_value = mcnemar_exact(len(flips_a_only), len(flips_b_only))

    metrics: dict[str, dict[str, Any]] = {}
    meaningful = n >= MIN_SAMPLES
    if meaningful:
        means = bootstrap_means(np.column_stack([cov_a, cov_b, ref_a, ref_b]), resamples, seed)
        gm = np.sqrt(np.clip(means[:, [0, 1]] * (1 - means[:, [2, 3]]), 0, None))
        deltas = {
            "fact_coverage": means[:, 1] - means[:, 0],
            "refusal_rate": means[:, 3] - means[:, 2],
            "geometric_mean": gm[:, 1] - gm[:, 0],
        }
    for name, (va, vb) in point.items():
        row = _metric_row(va, vb, None)
        if meaningful:
            lo, hi = np.percentile(deltas[name], [2.5, 97.5])
            row["ci95"] = [round(float(lo), 4), round(float(hi), 4)]
            row["verdict"] = _ci_verdict(n, float(lo), float(hi), name != "refusal_rate")
            if name == "refusal_rate":
                row["mcnemar_p"] = round(p_value, 6)
                fewer = len(flips_b_only) <= len(flips_a_only)
                row["verdict"] = verdict(n, p_value < 0.05, fewer)
        else:
            row["verdict"] = verdict(n, False, False)
        metrics[name] = row
    for name in (n for n in a.custom if n in b.custom):
        col_a, col_b = a.custom[name], b.custom[name]
        pairs = [
            (col_a[i], col_b[j])
            for i, j in zip(a_pos, b_pos, strict=True)
            if col_a[i] is not None and col_b[j] is not None
        ]
        metrics[f"metrics.{name}"] = _custom_metric(pairs, resamples, seed)
    for name in EXTRA_METRICS:
        va, vb = _extra(a.summary, name), _extra(b.summary, name)
        if isinstance(va, int | float) and isinstance(vb, int | float):
            metrics[name] = {
                "a": va,
                "b": vb,
                "delta": round(vb - va, 6),
                "relative": _relative(va, vb),
            }

    delta = cov_b - cov_a
    order = sorted(
        (i for i in range(n) if delta[i] != 0), key=lambda i: (-abs(delta[i]), common[i])
    )
    changed_ids = [common[i] for i in order[:top]]
    missing_a, missing_b = a.facts_missing(changed_ids), b.facts_missing(changed_ids)
    changed = []
    for i in order[:top]:
        d = common[i]
        lost_in_b, lost_in_a = set(missing_b.get(d, [])), set(missing_a.get(d, []))
        changed.append(
            {
                "dialogue_id": d,
                "a": round(float(cov_a[i]), 4),
                "b": round(float(cov_b[i]), 4),
                "delta": round(float(delta[i]), 4),
                "facts_gained": sorted(lost_in_a - lost_in_b),
                "facts_lost": sorted(lost_in_b - lost_in_a),
            }
        )
    result = {
        "a": a.label,
        "b": b.label,
        "samples": {"common": n, "a_only": len(a_only), "b_only": len(b_only)},
        "statistics": {"resamples": resamples, "seed": seed, "meaningful": meaningful},
        "metrics": metrics,
        "refusal_flips": {"refused_in_a_only": flips_a_only, "refused_in_b_only": flips_b_only},
        "top_changed": changed,
        "a_only": a_only,
        "b_only": b_only,
        "config_diff": _config_diff(a.summary, b.summary),
        "per_sample": [
            {
                "dialogue_id": d,
                "coverage_a": float(x),
                "coverage_b": float(y),
                "refused_a": bool(ra),
                "refused_b": bool(rb),
            }
            for d, x, y, ra, rb in zip(common, cov_a, cov_b, ref_a, ref_b, strict=True)
        ],
    }
    sequential = _sequential(a, b, metrics)
    if sequential is not None:
        result["sequential"] = sequential
    if a.cut_off or b.cut_off:
        # A pair cut off on one side only compares a cut-off with an answer: a tight
        # max_tokens, not a worse prompt, may be why it lost.
        result["cut_off_pairs"] = [
            {"dialogue_id": d, "cut_off": "a" if d in a.cut_off else "b"}
            for d in common
            if (d in a.cut_off) != (d in b.cut_off)
        ]
    return result


def _sequential(a: Side, b: Side, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The two arms of one stopped sequential A/B experiment (exprof.versus): the
    confidence sequence's interval beside the fixed-n bootstrap CI, and which of them is
    valid for a run that stopped when the sequence decided."""
    if a.store is None or b.store is None:
        return None
    cells = [load_started(s.store, s.summary["run_id"]).cell or {} for s in (a, b)]
    if not all(c.get("sequential") for c in cells):
        return None
    exp = cells[0]["experiment"]
    if cells[1]["experiment"] != exp or cells[0]["name"] == cells[1]["name"]:
        return None
    plan, stopped = sequential_events(a.store, exp)
    if plan is None or stopped is None:
        return None
    lo, hi = stopped.interval
    if cells[0]["name"] == "B":  # the sequence is of B - A as the experiment names them
        lo, hi = -hi, -lo
    winner = stopped.winner  # the experiment's arm name, as this compare's run id
    if winner is not None:
        winner = a.label if cells[0]["name"] == winner else b.label
    return {
        "experiment": exp,
        "metric": plan.metric,
        "verdict": stopped.verdict,
        "winner": winner,
        "pairs_used": stopped.pairs_used,
        "interval": [lo, hi],
        "fixed_n_ci95": (metrics.get(plan.metric) or {}).get("ci95"),
        "valid": "interval",
        "note": (
            "the run stopped when its confidence sequence decided: the sequence's interval "
            "holds at that data-dependent stop; the fixed-n bootstrap CI assumes the number "
            "of samples was fixed in advance, and is not valid for a stopped run"
        ),
    }


def _custom_metric(pairs: list[tuple[Any, Any]], resamples: int, seed: int) -> dict[str, Any]:
    """A custom metric over the common samples where both runs have a value: a paired
    bootstrap CI of the mean's change, and for a boolean metric the exact McNemar test
    on the samples that flipped (True counts as the better outcome)."""
    n = len(pairs)
    values = np.array(pairs, dtype=float).reshape(n, 2)
    va, vb = (float(values[:, 0].mean()), float(values[:, 1].mean())) if n else (0.0, 0.0)
    row = _metric_row(va, vb, verdict(n, False, False, "samples with values"))
    row["samples"] = n
    if n < MIN_SAMPLES:
        return row
    means = bootstrap_means(values, resamples, seed)
    lo, hi = np.percentile(means[:, 1] - means[:, 0], [2.5, 97.5])
    row["ci95"] = [round(float(lo), 4), round(float(hi), 4)]
    row["verdict"] = _ci_verdict(n, float(lo), float(hi))
    if all(isinstance(x, bool) and isinstance(y, bool) for x, y in pairs):
        gained = sum(1 for x, y in pairs if y and not x)
        lost = sum(1 for x, y in pairs if x and not y)
        p_value = mcnemar_exact(gained, lost)
        row["mcnemar_p"] = round(p_value, 6)
        row["verdict"] = verdict(n, p_value < 0.05, gained > lost)
    return row


def _extra(summary: dict[str, Any], name: str) -> Any:
    if name.startswith("latency_"):
        return (summary.get("latency_ms") or {}).get(name.split("_")[1])
    return summary.get(name)


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Fields that differ. Temperature only counts where a run sent it: under API
    2026-10-21 it is recorded but not sent, so two such runs do not differ in it."""
    fields = {}
    for key in CONFIG_KEYS:
        if a.get(key) != b.get(key):
            fields[key] = {"a": a.get(key), "b": b.get(key)}
    notes = []
    sent_a, sent_b = a.get("sent_params") or {}, b.get("sent_params") or {}
    if "temperature" in fields and "temperature" not in sent_a and "temperature" not in sent_b:
        del fields["temperature"]
        notes.append(
            f"temperature is configured differently ({a.get('temperature')} vs "
            f"{b.get('temperature')}) but neither run sent it"
        )
    # Each knob on its own, where a run sent it; one configured but sent by neither run
    # (the mock honours effort and thinking only) is a note, not a difference.
    fields.pop("sent_params", None)
    knobs_a, knobs_b = a.get("knobs") or {}, b.get("knobs") or {}
    for key in KNOBS:
        if key == "temperature":
            continue
        if sent_a.get(key) != sent_b.get(key):
            fields[key] = {"a": sent_a.get(key), "b": sent_b.get(key)}
        elif knobs_a.get(key) != knobs_b.get(key):
            notes.append(f"{key} is configured differently but neither run sent it")
    for x, y in ((a, b), (b, a)):
        if y.get("rescore_of") and y.get("rescore_of") == x.get("run_id"):
            del fields["mode"]  # the same answers: only the metrics scoring them differ
            notes.append(
                f"{y['run_id']} rescores {x['run_id']}'s recorded responses with other metrics"
            )
    same = a.get("dataset_sha256") == b.get("dataset_sha256") and a.get("dataset_sha256")
    return {"fields": fields, "datasets_identical": bool(same), "notes": notes}


def gate(
    result: dict, fail_on_regression: bool = False, max_refusal_increase: float | None = None
) -> list[str]:
    """Reasons B fails the CI gate. Each flag checks its own metric only:
    `fail_on_regression` fact coverage significantly worse, `max_refusal_increase` the
    refusal rate up by more than that."""
    reasons = []
    cov = result["metrics"]["fact_coverage"]
    if fail_on_regression and cov["verdict"] == "regressed":
        reasons.append(
            f"fact_coverage regressed: {cov['a']} -> {cov['b']} (delta {cov['delta']}, "
            f"95% CI {cov['ci95']})"
        )
    ref = result["metrics"]["refusal_rate"]
    if max_refusal_increase is not None and ref["delta"] > max_refusal_increase:
        reasons.append(
            f"refusal_rate rose by {ref['delta']} ({ref['a']} -> {ref['b']}), "
            f"past --max-refusal-increase {max_refusal_increase}"
        )
    return reasons
