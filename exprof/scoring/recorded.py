"""Custom metric values as recorded: read back from a run's events for exports, the
summary, `runs` and compare. Nothing is re-scored here (scoring runs once, when the
answer is recorded); a run whose config has no custom metric costs no read at all.
"""

from __future__ import annotations

from typing import Any

from exprof.scoring import custom
from exprof.store.engine import Store
from exprof.store.events import JudgeScored, SampleScored


def metric_names(config: dict[str, Any]) -> list[str]:
    """The custom metric names of a recorded config, in config order."""
    return [spec["name"] for spec in custom.custom_specs(config.get("metrics", ()))]


def per_sample(store: Store, run_id: str, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """dialogue_id -> {metric: value, ..., "metric_errors": {...} where any failed}.
    Judge scores come from their own events; the latest event for a sample wins."""
    names = metric_names(config)
    if not names:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for stored in store.events(run_id, types=("sample_scored", "judge_scored")):
        ev = stored.event
        if isinstance(ev, SampleScored):
            values, errors = ev.metrics or {}, ev.metric_errors or {}
        elif isinstance(ev, JudgeScored):
            values = {ev.metric: ev.value}
            errors = {ev.metric: ev.error} if ev.error else {}
        else:
            continue
        row = out.setdefault(ev.dialogue_id, {})
        row.update(values)
        failed = row.setdefault("metric_errors", {})
        for name in values:  # a later grade replaces an earlier failure
            failed.pop(name, None)
        failed.update(errors)
    # Config order, every metric present (None where a judge has not scored it yet).
    return {
        did: {
            **{name: row.get(name) for name in names},
            **({"metric_errors": row["metric_errors"]} if row["metric_errors"] else {}),
        }
        for did, row in out.items()
    }


def summary_fields(store: Store, run_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """`metrics` (each custom metric's mean) and `metric_errors` (counts) for summary.json;
    empty for a run without custom metrics, so its summary keeps the seed's keys."""
    names = metric_names(config)
    if not names:
        return {}
    rows = list(per_sample(store, run_id, config).values())
    fields: dict[str, Any] = {"metrics": custom.summary_means(rows, names)}
    errors: dict[str, int] = {}
    for row in rows:
        for name in row.get("metric_errors", {}):
            errors[name] = errors.get(name, 0) + 1
    if errors:
        fields["metric_errors"] = {name: errors[name] for name in names if name in errors}
    return fields
