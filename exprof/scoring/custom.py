"""Custom metrics evaluated: the callables built from a config's recorded metric specs
(see exprof.metric_specs, which validates them when the config is loaded), run on every
answer as it is recorded, and their values aggregated. Model-graded (`judge`) specs are
evaluated by exprof.scoring.judge, since they need a client.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from exprof.errors import ExprofError
from exprof.metric_specs import (
    DEFAULT_METRIC_TIMEOUT_S,
    TOOL_KINDS,
    MetricFn,
    compile_regex,
    custom_specs,
    import_function,
    schema_validator,
)
from exprof.scoring import tool_metrics
from exprof.scoring.guard import Guard, MetricStopped
from exprof.strict_json import MAX_INT

Value = float | int | bool | dict[str, float | int | bool]


# -- evaluation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    timeout_s: float = DEFAULT_METRIC_TIMEOUT_S  # per call; see exprof.scoring.guard


def build(metrics: Iterable[object], timeout_s: float = DEFAULT_METRIC_TIMEOUT_S) -> list[Metric]:
    """Callables for a recorded `metrics` list's non-judge custom entries, in order,
    each call held to `timeout_s` (the config's metric_timeout_s)."""
    return [
        Metric(spec["name"], build_one(spec, f"metrics ({spec['name']})"), timeout_s)
        for spec in custom_specs(metrics)
        if spec["type"] != "judge"
    ]


def build_one(spec: dict[str, Any], where: str) -> MetricFn:
    kind = spec["type"]
    if kind in ("contains_all", "contains_any"):
        values = [v.lower() for v in spec["values"]]
        test = all if kind == "contains_all" else any

        def contains(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> bool:
            text = completion.lower()
            return test(v in text for v in values)

        return contains
    if kind == "regex":
        compiled = compile_regex(spec, where)
        find = compiled.fullmatch if spec["match"] == "full" else compiled.search

        def regex(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> bool:
            return find(completion) is not None

        return regex
    if kind == "json":
        return _json_metric(spec, where)
    if kind == "length":
        return _length_metric(spec)
    if kind == "python":
        return import_function(spec["function"], spec["search_path"], where)
    if kind == "judge":
        return _not_local
    if kind in TOOL_KINDS:
        return tool_metrics.build(spec)
    raise ExprofError(f"{where}: unknown type {kind!r}")


def _not_local(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> None:
    raise RuntimeError("judge metrics are scored by exprof.scoring.judge")


def _json_metric(spec: dict[str, Any], where: str) -> MetricFn:
    validator = schema_validator(spec, where) if "schema" in spec else None

    def valid_json(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> bool:
        try:
            document = json.loads(completion)
        except ValueError:
            return False
        return validator is None or validator.is_valid(document)

    return valid_json


def _length_metric(spec: dict[str, Any]) -> MetricFn:
    unit, low, high = spec["unit"], spec.get("min", 0), spec.get("max", math.inf)

    def length(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> bool:
        size: Any
        if unit == "words":
            size = len(completion.split())
        elif unit == "chars":
            size = len(completion)
        else:  # the answer's own count, as the API (or the mock) reported it
            size = metadata.get("output_tokens", metadata.get("token_count"))
            if isinstance(size, bool) or not isinstance(size, int):
                raise ValueError("no output_tokens or token_count in the response metadata")
        return bool(low <= size <= high)

    return length


def evaluate(
    metrics: Sequence[Metric], sample: dict[str, Any], completion: str, metadata: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each metric's value for one answer, and the errors of those that failed. A metric
    that raises (user code may) or overruns its time limit gets None and its error; the
    run goes on."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    with Guard() as guard:
        for metric in metrics:
            try:
                with guard.limit(metric.timeout_s):
                    value = metric.fn(sample, completion, metadata)
                values[metric.name] = check_value(value)
            except (Exception, MetricStopped) as exc:
                values[metric.name] = None
                errors[metric.name] = f"{type(exc).__name__}: {exc}"[:500]
    return values, errors


def check_value(value: object) -> Value:
    """float | bool | a flat dict of them, each number finite and within +-2**63 (so that
    sums and squares over any run stay finite, and integers stay exact); anything else
    is the metric's error."""
    if isinstance(value, dict):
        if not value or not all(isinstance(k, str) and _encodable(k) for k in value):
            raise TypeError("a metric's dict must map names to numbers or booleans")
        return {k: _number(v) for k, v in value.items()}
    return _number(value)


def _number(value: object) -> float | bool:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):
        if not (-MAX_INT <= value <= MAX_INT):  # also false for NaN; and no float(int)
            shown = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else value
            raise ValueError(f"a metric value must be finite and within +-2**63, got {shown}")
        # As the built-in type: a subclass's (numpy.float64's) JSON would differ between
        # the line written as the run answers and the one read back from the store.
        return float(value) if isinstance(value, float) else int(value)
    raise TypeError(f"a metric must return a number, a boolean or a flat dict, got {value!r}"[:200])


def _encodable(text: str) -> bool:
    return text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text)


# -- aggregation ---------------------------------------------------------------------


def columns(per_sample: Iterable[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Per-sample values as columns keyed by metric (a dict value becomes `name.key`)."""
    out: dict[str, list[Any]] = {}
    rows = list(per_sample)
    for name in names:
        keys: list[str] = []
        for row in rows:
            value = row.get(name)
            if isinstance(value, dict):
                keys.extend(k for k in value if k not in keys)
        if not keys:
            out[name] = [row.get(name) for row in rows]
        for key in keys:
            out[f"{name}.{key}"] = [
                (row.get(name) or {}).get(key) if isinstance(row.get(name), dict) else None
                for row in rows
            ]
    return out


def mean(values: Iterable[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None


def by_metric(
    per_sample: Iterable[dict[str, Any]], names: Sequence[str], reduce: Callable[[list[Any]], Any]
) -> dict[str, Any]:
    """Each metric's per-sample values reduced to one (`reduce` gets the column, None
    where a sample has no value); a metric that returned dicts gets one per key."""
    rows = list(per_sample)
    out: dict[str, Any] = {}
    for name in names:
        cols = columns(rows, [name])
        if list(cols) == [name]:
            out[name] = reduce(cols[name])
        else:
            out[name] = {key[len(name) + 1 :]: reduce(col) for key, col in cols.items()}
    return out


def summary_means(per_sample: Iterable[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """`summary.json`'s `metrics`: each metric's mean over the samples that have a value;
    a metric that returned dicts gets the mean of each key."""
    return by_metric(per_sample, names, mean)
