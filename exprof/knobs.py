"""The request knobs an experimenter varies beside the model and the prompt: what each
config key accepts, the field it becomes on the wire, and its short name in a cell.

Every knob is a config key and a matrix axis. Its value is kept in the config in the
form the Messages API takes it (`thinking: adaptive` becomes `{"type": "adaptive"}`), so
the request, the recorded config and the capability check all read the same value.
Sampling parameters (temperature, top_p, top_k) go only to an API version that takes
them; the others always go when set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError

EFFORTS = ("low", "medium", "high", "xhigh", "max")
THINKING_TYPES = ("adaptive", "disabled", "between_tools")
MIN_BUDGET_TOKENS = 1024  # the API's floor for thinking.budget_tokens
SERVICE_TIERS = ("auto", "standard_only")
SPEEDS = ("standard", "fast")
SAMPLING = ("temperature", "top_p", "top_k")
MAX_STOP_SEQUENCES = 8
# What the offline mock honours: it thinks by effort and thinking, and sends nothing.
MOCK_KNOBS = ("effort", "thinking")
# Each knob's key, in the order requests, tables and cell names list them.
KNOBS = (
    "effort",
    "thinking",
    "stop_sequences",
    "output_schema",
    "service_tier",
    "speed",
    "temperature",
    "top_p",
    "top_k",
    "prompt_cache",
)
CACHE_TTLS = ("5m", "1h")
CACHE_UPTO = ("system", "tools", "conversation")
# The prefix of a knob's value in a cell's name (`effort-high`, `think-adaptive`).
SHORT = {
    "thinking": "think",
    "service_tier": "tier",
    "output_schema": "schema",
    "temperature": "t",
    "prompt_cache": "cache",
}


def parse(key: str, value: object, where: str, base: Path) -> Any:
    """A knob's value from the config, in its API form; one error naming `where`."""
    return _PARSERS[key](value, where, base)


def wire(config_knobs: dict[str, Any], sends_sampling: bool) -> dict[str, Any]:
    """The request fields the knobs set: `output_config` gathers effort and the output
    schema, as the API takes them. Knobs left unset send nothing."""
    fields: dict[str, Any] = {}
    output: dict[str, Any] = {}
    if config_knobs.get("effort") is not None:
        output["effort"] = config_knobs["effort"]
    schema = config_knobs.get("output_schema")
    if schema is not None:
        output["format"] = {"type": "json_schema", "schema": schema["schema"]}
    if output:
        fields["output_config"] = output
    for key in ("thinking", "stop_sequences", "service_tier", "speed"):
        if config_knobs.get(key) is not None:
            fields[key] = config_knobs[key]
    if sends_sampling:
        fields.update((k, config_knobs[k]) for k in SAMPLING if config_knobs.get(k) is not None)
    return fields


def label(key: str, value: Any) -> str:
    """A knob value as a cell name shows it: `think-adaptive`, `think-budget-4096`,
    `schema-answer` (the schema file's stem)."""
    return f"{SHORT.get(key, key)}-{describe(key, value)}"


def describe(key: str, value: Any) -> Any:
    """A knob value in a word, for cell names and tables; a plain value as it is."""
    if key == "thinking":
        kind = value["type"]
        return f"budget-{value['budget_tokens']}" if kind == "enabled" else kind
    if key == "output_schema":
        return Path(value["file"]).stem
    if key == "stop_sequences":
        return "+".join(value)
    if key == "prompt_cache":
        if value is None:
            return "off"
        return f"{value['ttl']}-{value['upto']}" + ("" if value["schedule"] else "-unscheduled")
    return value


def in_words(params: dict[str, Any]) -> dict[str, Any]:
    """A cell's parameters as tables show them: each knob in a word."""
    return {k: describe(k, v) if k in KNOBS else v for k, v in params.items()}


def _choice(allowed: tuple[str, ...]) -> Callable[[object, str, Path], str]:
    def parse_choice(value: object, where: str, base: Path) -> str:
        if value not in allowed:
            raise ExprofError(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    return parse_choice


def _thinking(value: object, where: str, base: Path) -> dict[str, Any]:
    """`adaptive`, `disabled`, `between_tools`, or `{budget_tokens: N}` (manual extended
    thinking, the API's `{"type": "enabled", "budget_tokens": N}`)."""
    if isinstance(value, str) and value in THINKING_TYPES:
        return {"type": value}
    if isinstance(value, dict) and set(value) == {"budget_tokens"}:
        budget = value["budget_tokens"]
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < MIN_BUDGET_TOKENS:
            raise ExprofError(
                f"{where}.budget_tokens: must be an integer >= {MIN_BUDGET_TOKENS}, got {budget!r}"
            )
        if budget >= 2**31:
            raise ExprofError(f"{where}.budget_tokens: must be below 2**31, got {budget}")
        return {"type": "enabled", "budget_tokens": budget}
    raise ExprofError(
        f"{where}: must be one of {', '.join(THINKING_TYPES)} or {{budget_tokens: N}}, "
        f"got {value!r}"
    )


def _stop_sequences(value: object, where: str, base: Path) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s.strip() for s in value)
    ):
        raise ExprofError(
            f"{where}: must be a list of 1 to {MAX_STOP_SEQUENCES} non-blank strings, got {value!r}"
        )
    return list(value)


def _output_schema(value: object, where: str, base: Path) -> dict[str, Any]:
    """A JSON Schema file, read now: the config records the schema it sent."""
    from exprof.files import read_text
    from exprof.metric_specs import schema_validator
    from exprof.strict_json import parse_json

    if not isinstance(value, str) or not value.strip():
        raise ExprofError(f"{where}: must be the path of a JSON Schema file, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    schema = parse_json(read_text(path, "output schema (output_schema)"), str(path))
    schema_validator({"schema": schema, "schema_path": str(path)}, where)
    return {"file": path.name, "schema": schema}


def _prompt_cache(value: object, where: str, base: Path) -> dict[str, Any] | None:
    """`off` (None: nothing is cached), or {ttl: 5m|1h, upto: system|tools|conversation,
    schedule: bool}, each optional (5m, system, true); `on` takes the defaults. YAML reads
    a bare off/on as false/true, which mean the same."""
    if value in ("off", False):
        return None
    if value in ("on", True):
        value = {}
    keys = ("ttl", "upto", "schedule")
    if not isinstance(value, dict):
        raise ExprofError(f"{where}: must be off, or a mapping of {', '.join(keys)}, got {value!r}")
    for key in value:
        if key not in keys:
            raise ExprofError(f"{where}: unknown key {str(key)!r}; the keys are {', '.join(keys)}")
    ttl = _choice(CACHE_TTLS)(value.get("ttl", "5m"), f"{where}.ttl", base)
    upto = _choice(CACHE_UPTO)(value.get("upto", "system"), f"{where}.upto", base)
    schedule = value.get("schedule", True)
    if not isinstance(schedule, bool):
        raise ExprofError(f"{where}.schedule: must be true or false, got {schedule!r}")
    return {"ttl": ttl, "upto": upto, "schedule": schedule}


def _unit(value: object, where: str, base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExprofError(f"{where}: must be a number in [0, 1], got {value!r}")
    if not math.isfinite(value):
        raise ExprofError(f"{where}: must be a finite number in [0, 1], got {value}")
    if not 0.0 <= value <= 1.0:
        raise ExprofError(f"{where}: must be a number in [0, 1], got {value}")
    return float(value) if isinstance(value, float) else value


def _top_k(value: object, where: str, base: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        raise ExprofError(f"{where}: must be an integer >= 1, got {value!r}")
    return value


_PARSERS: dict[str, Callable[[object, str, Path], Any]] = {
    "effort": _choice(EFFORTS),
    "thinking": _thinking,
    "stop_sequences": _stop_sequences,
    "output_schema": _output_schema,
    "service_tier": _choice(SERVICE_TIERS),
    "speed": _choice(SPEEDS),
    "temperature": _unit,
    "top_p": _unit,
    "top_k": _top_k,
    "prompt_cache": _prompt_cache,
}
