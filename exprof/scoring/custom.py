"""Custom metrics: the `metrics:` entries that are mappings, validated once when
the config is loaded and evaluated on every answer as it is recorded.

A spec is normalised to a plain dict (paths made absolute, a JSON Schema's content
embedded) so that the run records it in its config and a resume or a rescore never needs
the original files. `build` turns the specs back into callables; model-graded (`judge`)
specs are validated here but evaluated by exprof.scoring.judge, since they need a client.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import MAX_INT, parse_json, read_text

BUILTIN = ("fact_coverage", "refusal_rate", "geometric_mean")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Keys a custom name may not take: they already mean something in summary.json and scores.jsonl.
RESERVED = frozenset(
    BUILTIN + ("dialogue_id", "refused", "facts_missing", "metrics", "metric_errors", "status")
)
REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
LENGTH_UNITS = ("words", "chars", "tokens")
JUDGE_MAX_TOKENS = 16

# Options each type takes: name -> required?
OPTIONS: dict[str, dict[str, bool]] = {
    "contains_all": {"values": True},
    "contains_any": {"values": True},
    "regex": {"pattern": True, "flags": False, "match": False},
    "json": {"schema_path": False},
    "length": {"unit": False, "min": False, "max": False},
    "python": {"function": True},
    "judge": {"rubric": True, "judge_model": False, "judge_responses": False, "max_tokens": False},
}

Value = float | int | bool | dict[str, float | int | bool]
MetricFn = Callable[[dict[str, Any], str, dict[str, Any]], Any]


@dataclass(frozen=True)
class SpecContext:
    """What validating a spec needs to know about its config."""

    config_path: Path
    model: str
    dataset_dir: Path


def parse_metrics(value: object, ctx: SpecContext) -> list[str | dict[str, Any]]:
    """The config's `metrics:` list: built-in names kept as they are, mappings validated
    and normalised. Every error names the entry: `config.yaml: metrics[3] (valid_json): ...`."""
    where = f"{ctx.config_path}: metrics"
    if not isinstance(value, list) or not value:
        raise ExprofError(
            f"{where}: must be a non-empty list of {', '.join(BUILTIN)} or metric mappings"
        )
    out: list[str | dict[str, Any]] = []
    names: set[str] = set()
    for i, item in enumerate(value):
        if isinstance(item, dict):
            spec = _parse_spec(item, f"{where}[{i}]", ctx)
            if spec["name"] in names:
                raise ExprofError(f"{where}[{i}] ({spec['name']}): name is used twice")
            names.add(spec["name"])
            out.append(spec)
        elif item in BUILTIN:
            out.append(item)  # type: ignore[arg-type]
        else:
            raise ExprofError(
                f"{where}: {item!r} is not one of {', '.join(BUILTIN)} "
                "(a custom metric is a mapping with name and type)"
            )
    return out


def custom_specs(metrics: Iterable[object], kind: str | None = None) -> list[dict[str, Any]]:
    """The mapping entries of a recorded `metrics` list (optionally of one type)."""
    return [m for m in metrics if isinstance(m, dict) and (kind is None or m["type"] == kind)]


def _parse_spec(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ExprofError(
            f"{where}: name must be an identifier (letters, digits, '_'), got {name!r}"
        )
    where = f"{where} ({name})"
    if name in RESERVED:
        raise ExprofError(f"{where}: name {name!r} is reserved")
    kind = item.get("type")
    if kind not in OPTIONS:
        raise ExprofError(f"{where}: unknown type {kind!r}; one of {', '.join(OPTIONS)}")
    options = OPTIONS[kind]
    for key in item:
        if key not in ("name", "type") and key not in options:
            raise ExprofError(
                f"{where}: unknown option {str(key)!r} for type {kind} "
                f"(takes {', '.join(options) or 'none'})"
            )
    for key, required in options.items():
        if required and key not in item:
            raise ExprofError(f"{where}: type {kind} needs option {key!r}")
    spec: dict[str, Any] = {"name": name, "type": kind}
    spec.update(_PARSERS[kind](item, where, ctx))
    build_one(spec, where)  # compile once now, so a bad spec fails before anything is written
    return spec


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ExprofError(f"{where}: values must be a non-empty list of non-empty strings")
    return list(value)


def _parse_contains(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    return {"values": _strings(item["values"], where)}


def _parse_regex(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    pattern, flags, match = item["pattern"], item.get("flags", ""), item.get("match", "search")
    if not isinstance(pattern, str) or not pattern:
        raise ExprofError(f"{where}: pattern must be a non-empty string")
    if not isinstance(flags, str) or any(f not in REGEX_FLAGS for f in flags):
        raise ExprofError(f"{where}: flags must be letters from {''.join(REGEX_FLAGS)}")
    if match not in ("search", "full"):
        raise ExprofError(f"{where}: match must be search or full, got {match!r}")
    return {"pattern": pattern, "flags": flags, "match": match}


def _parse_json(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    if "schema_path" not in item:
        return {}
    raw = item["schema_path"]
    if not isinstance(raw, str) or not raw:
        raise ExprofError(f"{where}: schema_path must be a path")
    path = _resolve(raw, ctx.config_path.parent, f"{where}: schema_path")
    schema = parse_json(read_text(path, "JSON Schema"), f"{where}: {path}")
    # The schema's content is recorded with the run: rescoring never needs the file again.
    return {"schema_path": str(path), "schema": schema}


def _parse_length(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    unit = item.get("unit", "words")
    if unit not in LENGTH_UNITS:
        raise ExprofError(f"{where}: unit must be one of {', '.join(LENGTH_UNITS)}, got {unit!r}")
    bounds = {}
    for key in ("min", "max"):
        if key in item:
            v = item[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ExprofError(f"{where}: {key} must be an integer >= 0, got {v!r}")
            bounds[key] = v
    if not bounds:
        raise ExprofError(f"{where}: type length needs min, max or both")
    if bounds.get("min", 0) > bounds.get("max", math.inf):
        raise ExprofError(f"{where}: min {bounds['min']} is above max {bounds['max']}")
    return {"unit": unit, **bounds}


def _parse_python(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    function = item["function"]
    if not isinstance(function, str) or function.count(":") != 1:
        raise ExprofError(f"{where}: function must be 'module:function', got {function!r}")
    return {"function": function, "search_path": str(ctx.config_path.parent.resolve())}


def _parse_judge(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    rubric = item["rubric"]
    if not isinstance(rubric, str) or not rubric.strip():
        raise ExprofError(f"{where}: rubric must be a non-empty string")
    model = item.get("judge_model", ctx.model)
    if not isinstance(model, str) or not model.strip():
        raise ExprofError(f"{where}: judge_model must be a non-empty string")
    max_tokens = item.get("max_tokens", JUDGE_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ExprofError(f"{where}: max_tokens must be an integer >= 1, got {max_tokens!r}")
    responses = item.get("judge_responses", "judge_responses.json")
    if not isinstance(responses, str) or not responses:
        raise ExprofError(f"{where}: judge_responses must be a path")
    # Only the mock reads it, so a missing file is reported when a mock run needs it.
    base = ctx.config_path.parent if "judge_responses" in item else ctx.dataset_dir
    path = Path(responses).expanduser()
    if not path.is_absolute():
        path = next(
            (p for p in (base / path, Path.cwd() / path) if p.exists()), base / path
        ).resolve()
    spec: dict[str, Any] = {
        "rubric": rubric,
        "judge_model": model,
        "max_tokens": max_tokens,
        "judge_responses": str(path),
    }
    if path.is_file():  # recorded with the run, as the mock's answers are
        replies = parse_json(read_text(path, "judge responses"), f"{where}: {path}")
        if not isinstance(replies, dict):
            raise ExprofError(f"{where}: {path}: must be an object keyed by dialogue_id")
        spec["mock_replies"] = replies
    return spec


_PARSERS: dict[str, Callable[[dict[Any, Any], str, SpecContext], dict[str, Any]]] = {
    "contains_all": _parse_contains,
    "contains_any": _parse_contains,
    "regex": _parse_regex,
    "json": _parse_json,
    "length": _parse_length,
    "python": _parse_python,
    "judge": _parse_judge,
}


def _resolve(value: str, config_dir: Path, where: str) -> Path:
    path = Path(value).expanduser()
    tried = [path] if path.is_absolute() else [config_dir / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise ExprofError(f"{where}: {value!r} not found; tried {' and '.join(map(str, tried))}")


# -- evaluation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn


def build(metrics: Iterable[object]) -> list[Metric]:
    """Callables for a recorded `metrics` list's non-judge custom entries, in order."""
    return [
        Metric(spec["name"], build_one(spec, f"metrics ({spec['name']})"))
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
        flags = 0
        for letter in spec["flags"]:
            flags |= REGEX_FLAGS[letter]
        try:
            compiled = re.compile(spec["pattern"], flags)
        except re.error as exc:
            raise ExprofError(f"{where}: bad regex {spec['pattern']!r}: {exc}") from None
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
    raise ExprofError(f"{where}: unknown type {kind!r}")


def _not_local(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> None:
    raise RuntimeError("judge metrics are scored by exprof.scoring.judge")


def _json_metric(spec: dict[str, Any], where: str) -> MetricFn:
    validator = None
    if "schema" in spec:
        import jsonschema

        cls = jsonschema.validators.validator_for(spec["schema"])
        try:
            cls.check_schema(spec["schema"])
        except jsonschema.SchemaError as exc:
            raise ExprofError(
                f"{where}: {spec['schema_path']}: invalid JSON Schema: {exc.message}"
            ) from None
        validator = cls(spec["schema"])

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


def import_function(target: str, search_path: str, where: str) -> MetricFn:
    """`module:function`, from the config's folder first, then the installed packages."""
    module_name, _, attr = target.partition(":")
    local = Path(search_path, *module_name.split("."))
    cached = sys.modules.get(module_name)
    if cached is not None and (local.with_suffix(".py").is_file() or local.is_dir()):
        # A same-named module from another config's folder (in one Python process, e.g.
        # a library user running two experiments) must not stand in for this one.
        if not str(getattr(cached, "__file__", "") or "").startswith(str(local.parent)):
            del sys.modules[module_name]
    importlib.invalidate_caches()
    sys.path.insert(0, search_path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user module may raise anything on import
        raise ExprofError(
            f"{where}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        sys.path.remove(search_path)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ExprofError(f"{where}: module {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def evaluate(
    metrics: Sequence[Metric], sample: dict[str, Any], completion: str, metadata: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each metric's value for one answer, and the errors of those that failed. A metric
    that raises (user code may) gets None and its error; the run goes on."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for metric in metrics:
        try:
            values[metric.name] = check_value(metric.fn(sample, completion, metadata))
        except Exception as exc:
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
