"""Custom metric values as recorded: read back from a run's events for exports, the
summary, `runs` and compare. Nothing is re-scored here (scoring runs once, when the
answer is recorded); a run whose config has no custom metric costs no read at all.
"""

from __future__ import annotations

from typing import Any

from exprof.metric_specs import custom_specs
from exprof.scoring import custom
from exprof.store.engine import Store
from exprof.store.events import JudgeScored, SampleScored


def metric_names(config: dict[str, Any]) -> list[str]:
    """The custom metric names of a recorded config, in config order."""
    return [spec["name"] for spec in custom_specs(config.get("metrics", ()))]


Slot = tuple[str, int]  # (dialogue_id, repeat): one answer of a run with repeats


def per_sample(store: Store, run_id: str, config: dict[str, Any]) -> dict[Slot, dict[str, Any]]:
    """(dialogue_id, repeat) -> {metric: value, ..., "metric_errors": {...} where any
    failed}: each repeat keeps its own values. Judge scores come from their
    own events; the latest event for an answer wins."""
    names = metric_names(config)
    if not names:
        return {}
    out: dict[Slot, dict[str, Any]] = {}
    for stored in store.events(run_id, types=(SampleScored, JudgeScored)):
        ev = stored.event
        if isinstance(ev, SampleScored):
            values, errors = ev.metrics or {}, ev.metric_errors or {}
        elif isinstance(ev, JudgeScored):
            values = {ev.metric: ev.value}
            errors = {ev.metric: ev.error} if ev.error else {}
        else:
            continue
        row = out.setdefault((ev.dialogue_id, ev.repeat), {})
        row.update(values)
        failed = row.setdefault("metric_errors", {})
        for name in values:  # a later grade replaces an earlier failure
            failed.pop(name, None)
        failed.update(errors)
    return {slot: in_config_order(names, row, row["metric_errors"]) for slot, row in out.items()}


def in_config_order(
    names: list[str], values: dict[str, Any], errors: dict[str, str]
) -> dict[str, Any]:
    """One answer's custom metrics as exports show them: config order, every metric
    present (None where it has no value yet), then its metric_errors where any failed."""
    return {
        **{name: values.get(name) for name in names},
        **({"metric_errors": errors} if errors else {}),
    }


def per_dialogue(by_slot: dict[Slot, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """dialogue_id -> its values, the repeats of a sample averaged: a sample is
    one cluster, so its metric value is the mean of its repeats' values (None where no
    repeat has one; a dict metric's keys each averaged). A sample answered once keeps its
    row as recorded, so a run without repeats reads exactly as before."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for (dialogue_id, _), row in by_slot.items():
        groups.setdefault(dialogue_id, []).append(row)
    return {
        dialogue_id: rows[0] if len(rows) == 1 else custom.by_metric(rows, names, _mean)
        for dialogue_id, rows in groups.items()
    }


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _cis(samples: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Each metric's 95% interval over the samples' values (each a cluster's mean), as
    [low, high]; None with fewer than two samples valued (or per key, for a dict). A
    metric whose values all lie in [0, 1] (a boolean's rate, say) has its mean there
    too: its interval is clipped to [0, 1], as the built-in rates' are."""
    # Imported here: numpy costs every run, summarize and export ~0.2 s at start-up,
    # and only a run with repeats asks for intervals.
    import numpy as np

    from exprof.stats import cluster_mean_ci

    def interval(values: list[Any]) -> list[float] | None:
        present = np.array([float(v) for v in values if v is not None], dtype=float)
        _, lo, hi = cluster_mean_ci(present)
        if lo is None or hi is None:
            return None
        if present.min() >= 0.0 and present.max() <= 1.0:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        return [round(lo, 4), round(hi, 4)]

    return custom.by_metric(samples, names, interval)


def summary_fields(
    store: Store, run_id: str, config: dict[str, Any], ci: bool = False
) -> dict[str, Any]:
    """`metrics` (each custom metric's mean) and `metric_errors` (counts) for summary.json;
    empty for a run without custom metrics, so its summary keeps the seed's keys. With
    repeats the means are over samples, each the mean of its repeats, and
    `metrics_ci95` gives each one's clustered 95% interval; `ci` asks for
    the intervals without repeats too (summarize EXPERIMENT_ID shows every metric's)."""
    names = metric_names(config)
    if not names:
        return {}
    by_slot = per_sample(store, run_id, config)
    samples = list(per_dialogue(by_slot, names).values())
    fields: dict[str, Any] = {"metrics": custom.summary_means(samples, names)}
    if ci or config.get("repeats", 1) > 1:
        fields["metrics_ci95"] = _cis(samples, names)
    errors: dict[str, int] = {}
    for row in by_slot.values():
        for name in row.get("metric_errors", {}):
            errors[name] = errors.get(name, 0) + 1
    if errors:
        fields["metric_errors"] = {name: errors[name] for name in names if name in errors}
    return fields
