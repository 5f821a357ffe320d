"""One metric's recorded values, per sample and per repeat, as plan and the frontier
read them: the built-in per-sample metrics from the samples projection, custom ones
(a dict metric's keys as `name.key`) from their recorded events. Nothing is re-scored."""

from __future__ import annotations

from typing import Any

from exprof.errors import ExprofError
from exprof.scoring import recorded
from exprof.store.engine import Store
from exprof.store.record import load_started

PER_SAMPLE_BUILTINS = ("fact_coverage", "refusal_rate")


def repeat_values(store: Store, run_id: str, metric: str) -> dict[str, list[float]]:
    """dialogue_id -> the metric's value in each answered repeat, in dataset order
    (a boolean as 0 or 1); samples with no value are left out."""
    if metric == "geometric_mean":
        raise ExprofError(
            "geometric_mean is a run-level metric with no per-sample value; "
            "use --metric fact_coverage or refusal_rate"
        )
    out: dict[str, list[float]] = {}
    if metric in PER_SAMPLE_BUILTINS:
        for dialogue_id, coverage, refused in store.sample_scores(run_id):
            out.setdefault(dialogue_id, []).append(
                coverage if metric == "fact_coverage" else float(refused)
            )
        return out
    config = load_started(store, run_id).config
    names = recorded.metric_names(config)
    name, _, key = metric.partition(".")
    if name not in names:
        known = ", ".join([*PER_SAMPLE_BUILTINS, *names])
        raise ExprofError(f"run {run_id!r} has no metric {metric!r} (it has: {known})")
    for (dialogue_id, _), row in recorded.per_sample(store, run_id, config).items():
        value: Any = row.get(name)
        if isinstance(value, dict):
            if not key:
                keys = ", ".join(f"{name}.{k}" for k in value)
                raise ExprofError(f"metric {name!r} has several values; name one: {keys}")
            value = value.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float):
            raise ExprofError(f"metric {metric!r} of run {run_id!r} is not numeric")
        out.setdefault(dialogue_id, []).append(float(value))
    return out
