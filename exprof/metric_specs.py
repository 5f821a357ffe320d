"""Metric specs: the `metrics:` entries of a config, validated and normalised when the
config is loaded. Nothing here evaluates an answer; exprof.scoring.custom builds the
callables from these specs.

A spec is normalised to a plain dict (paths made absolute, a JSON Schema's content
embedded) so that the run records it in its config and a resume or a rescore never needs
the original files. What can fail later is checked now, before anything is written: a
regex compiles, a JSON Schema is valid and refers to nothing outside itself, a python
metric's function imports.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import read_text
from exprof.strict_json import parse_json

BUILTIN = ("fact_coverage", "refusal_rate", "geometric_mean")
# The built-in metric a config with `output_schema` gets: does the answer hold to it?
SCHEMA_METRIC = "schema_valid"
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Keys a custom name may not take: they already mean something in summary.json and scores.jsonl.
RESERVED = frozenset(
    BUILTIN
    + ("dialogue_id", "refused", "facts_missing", "metrics", "metric_errors", "status")
    + (SCHEMA_METRIC,)
)
REGEX_FLAGS = {"i": "IGNORECASE", "m": "MULTILINE", "s": "DOTALL", "x": "VERBOSE"}
LENGTH_UNITS = ("words", "chars", "tokens")
JUDGE_MAX_TOKENS = 16
DEFAULT_METRIC_TIMEOUT_S = 10.0
REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")

# Options each type takes: name -> required?
OPTIONS: dict[str, dict[str, bool]] = {
    "contains_all": {"values": True},
    "contains_any": {"values": True},
    "regex": {"pattern": True, "flags": False, "match": False},
    "json": {"schema_path": False},
    "length": {"unit": False, "min": False, "max": False},
    "python": {"function": True},
    "judge": {"rubric": True, "judge_model": False, "judge_responses": False, "max_tokens": False},
    # The path a tool run took (exprof.scoring.tool_metrics); `name` is optional.
    "tool_called": {"tool": True, "input": False},
    "tool_sequence": {"tools": True, "order": False},
    "turns": {},
    "tool_errors": {},
}
TOOL_KINDS = ("tool_called", "tool_sequence", "turns", "tool_errors")
SEQUENCE_ORDERS = ("exact", "subsequence", "set")

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


def with_schema_metric(
    metrics: list[str | dict[str, Any]], output_schema: dict[str, Any] | None
) -> list[str | dict[str, Any]]:
    """The metrics, ending with SCHEMA_METRIC (a json metric on the output schema) when
    the config sends one: every answer is checked against the schema it was asked for."""
    kept = [m for m in metrics if not (isinstance(m, dict) and m["name"] == SCHEMA_METRIC)]
    if output_schema is None:
        return kept
    spec = {"name": SCHEMA_METRIC, "type": "json", "schema_path": output_schema["file"]}
    return [*kept, {**spec, "schema": output_schema["schema"]}]


def custom_specs(metrics: Iterable[object], kind: str | None = None) -> list[dict[str, Any]]:
    """The mapping entries of a recorded `metrics` list (optionally of one type)."""
    return [m for m in metrics if isinstance(m, dict) and (kind is None or m["type"] == kind)]


def _parse_spec(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    if "name" not in item and item.get("type") in TOOL_KINDS:
        item = {"name": _tool_metric_name(item), **item}
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
    _check(spec, where)  # compile once now, so a bad spec fails before anything is written
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


def _tool_metric_name(item: dict[Any, Any]) -> str:
    """A tool metric's default name: its type, or for tool_called `called_<tool>`."""
    tool = item.get("tool")
    if item["type"] == "tool_called" and isinstance(tool, str) and NAME_RE.fullmatch(tool):
        return f"called_{tool}"
    return str(item["type"])


def _parse_tool_called(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    tool, subset = item["tool"], item.get("input")
    if not isinstance(tool, str) or not tool:
        raise ExprofError(f"{where}: tool must be a tool's name")
    if subset is not None and not isinstance(subset, dict):
        raise ExprofError(f"{where}: input must be a mapping (a subset of the call's input)")
    return {"tool": tool, **({"input": subset} if subset is not None else {})}


def _parse_tool_sequence(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    tools, order = item["tools"], item.get("order", "exact")
    if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
        raise ExprofError(f"{where}: tools must be a list of tool names")
    if order not in SEQUENCE_ORDERS:
        raise ExprofError(
            f"{where}: order must be one of {', '.join(SEQUENCE_ORDERS)}, got {order!r}"
        )
    return {"tools": list(tools), "order": order}


def _no_options(item: dict[Any, Any], where: str, ctx: SpecContext) -> dict[str, Any]:
    return {}


_PARSERS: dict[str, Callable[[dict[Any, Any], str, SpecContext], dict[str, Any]]] = {
    "contains_all": _parse_contains,
    "contains_any": _parse_contains,
    "regex": _parse_regex,
    "json": _parse_json,
    "length": _parse_length,
    "python": _parse_python,
    "judge": _parse_judge,
    "tool_called": _parse_tool_called,
    "tool_sequence": _parse_tool_sequence,
    "turns": _no_options,
    "tool_errors": _no_options,
}


def _resolve(value: str, config_dir: Path, where: str) -> Path:
    path = Path(value).expanduser()
    tried = [path] if path.is_absolute() else [config_dir / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise ExprofError(f"{where}: {value!r} not found; tried {' and '.join(map(str, tried))}")


def _check(spec: dict[str, Any], where: str) -> None:
    kind = spec["type"]
    if kind == "regex":
        compile_regex(spec, where)
    elif kind == "json" and "schema" in spec:
        schema_validator(spec, where)
    elif kind == "python":
        import_function(spec["function"], spec["search_path"], where)


def compile_regex(spec: dict[str, Any], where: str) -> Any:
    """A regex metric's pattern, on the `regex` package: its matching gives way to
    signals (see exprof.scoring.guard)."""
    import regex as user_regex

    flags = 0
    for letter in spec["flags"]:
        flags |= getattr(user_regex, REGEX_FLAGS[letter])
    try:
        return user_regex.compile(spec["pattern"], flags)
    except user_regex.error as exc:
        raise ExprofError(f"{where}: bad regex {spec['pattern']!r}: {exc}") from None


def schema_validator(spec: dict[str, Any], where: str) -> Any:
    """A validator for a json spec's embedded schema, which resolves only references
    inside the schema (and to the bundled meta-schemas): nothing is fetched."""
    import jsonschema

    schema, at = spec["schema"], f"{where}: {spec['schema_path']}"
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ExprofError(f"{at}: invalid JSON Schema: {exc.message}") from None
    return cls(schema, registry=_local_registry(schema, at))


def _refuse(uri: str) -> Any:
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


def _local_registry(schema: Any, at: str) -> Any:
    """The schema's own resources (by `$id` too), each of its references checked to
    resolve among them, so that a remote `$ref` is refused before anything is written."""
    from jsonschema_specifications import REGISTRY as META_SCHEMAS
    from referencing import Registry, Resource
    from referencing.exceptions import InvalidAnchor, NoSuchAnchor, PointerToNowhere, Unresolvable
    from referencing.jsonschema import DRAFT202012

    root = Resource.from_contents(schema, default_specification=DRAFT202012)
    uri = root.id() or ""
    registry = Registry(retrieve=_refuse)  # type: ignore[call-arg]
    registry = registry.with_resource(uri, root).crawl().combine(META_SCHEMAS)
    stack = [(registry.resolver(base_uri=uri), root)]
    while stack:  # a loop, not recursion: a schema may nest deeper than Python's stack
        resolver, resource = stack.pop()
        contents = resource.contents
        for key in REF_KEYS if isinstance(contents, dict) else ():
            ref = contents.get(key)
            if not isinstance(ref, str):
                continue
            try:
                resolver.lookup(ref)
            except (PointerToNowhere, NoSuchAnchor, InvalidAnchor):
                raise ExprofError(f"{at}: {key} {ref!r} points to nothing in the schema") from None
            except Unresolvable:
                raise ExprofError(
                    f"{at}: {key} {ref!r} is outside the schema; only references within it "
                    "(such as '#/$defs/name') are resolved, and nothing is fetched"
                ) from None
        stack.extend((resolver.in_subresource(sub), sub) for sub in resource.subresources())
    return registry


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
