"""The config's sections that hold more than one value: the tools (and the keys that
only mean something with them), pricing, rate_limit; and the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from exprof.config_values import check_integer, check_number, resolve_path
from exprof.config_yaml import StrictLoader
from exprof.errors import ExprofError
from exprof.files import MAX_CONFIG_BYTES, read_text
from exprof.pricing import CLASSES, PRICES_PER_MTOK
from exprof.tool_specs import parse_tool_choice, parse_tool_runner, parse_tools

TOOL_KEYS = ("tools", "tool_choice", "max_turns", "tool_timeout_s", "tool_runner")
# An answer reused from the store comes without its trajectory, and the identity of a
# request (system and turns) does not cover the tools it offered.
CACHE_WITH_TOOLS = "answers reused from the store carry no trajectory; set one of cache, tools"
RATE_LIMIT_KEYS = ("rpm", "itpm", "otpm")


def check_budget(value: object, where: str) -> float:
    """A budget in USD: a finite number >= 0 (NaN would never be reached)."""
    return float(check_number(value, where, 0.0, None))


def parse_tools_section(raw: dict[Any, Any], path: Path) -> dict[str, Any]:
    """`tools` (a list, or a JSON/YAML file of one) and the keys that only mean something
    with it: tool_choice, max_turns, tool_timeout_s, tool_runner."""
    out: dict[str, Any] = {}
    if "tools" not in raw:
        for key in TOOL_KEYS:
            if key in raw:
                raise ExprofError(f"{path}: {key}: needs tools (the list of tool definitions)")
        return out
    value, where = raw["tools"], f"{path}: tools"
    if raw.get("batch") is True:
        # A batch answers each request once, within hours: a tool loop would need a batch
        # per turn, each round waiting on the slowest sample of the last.
        raise ExprofError(
            f"{where}: a batch run sends each sample once and cannot answer its tool "
            "calls; run tools live (batch: false)"
        )
    if isinstance(value, str):
        file = resolve_path(value, path.parent, where)
        text = read_text(file, "tools file", limit=MAX_CONFIG_BYTES)
        try:
            value = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ExprofError(f"{where}: {file}: not JSON or YAML: {exc}") from None
        where = f"{where} ({file})"
    out["tools"] = tools = parse_tools(value, where)
    if raw.get("cache") is True:
        raise ExprofError(f"{path}: cache: {CACHE_WITH_TOOLS}")
    if "tool_choice" in raw:
        out["tool_choice"] = parse_tool_choice(raw["tool_choice"], tools, f"{path}: tool_choice")
    if "max_turns" in raw:
        out["max_turns"] = check_integer(raw["max_turns"], f"{path}: max_turns", 1, 100)
    if "tool_timeout_s" in raw:
        limit = check_number(raw["tool_timeout_s"], f"{path}: tool_timeout_s", 0.001, 86400.0)
        out["tool_timeout_s"] = float(limit)
    if "tool_runner" in raw:
        out["tool_runner"] = parse_tool_runner(
            raw["tool_runner"], path.parent, f"{path}: tool_runner"
        )
    return out


def parse_rate_limit(value: object, where: str) -> dict[str, int]:
    """{rpm, itpm, otpm}: requests, input and output tokens per minute, each optional."""
    keys = ", ".join(RATE_LIMIT_KEYS)
    if not isinstance(value, dict) or not value:
        raise ExprofError(f"{where}: must be a mapping of {keys} to a per-minute limit")
    out = {}
    for key, limit in value.items():
        if key not in RATE_LIMIT_KEYS:
            raise ExprofError(f"{where}: unknown key {str(key)!r}; the keys are {keys}")
        out[key] = check_integer(limit, f"{where}.{key}", minimum=1)
    return out


def parse_pricing(value: object, where: str) -> dict[str, dict[str, float]]:
    """{MODEL: {input, output, cache_write_5m, cache_write_1h, cache_read}}, any subset;
    a model the price table lacks needs at least input and output."""
    classes = ", ".join(CLASSES)
    if not isinstance(value, dict):
        raise ExprofError(f"{where}: must be a mapping of model to prices per class ({classes})")
    out: dict[str, dict[str, float]] = {}
    for model, prices in value.items():
        if not isinstance(prices, dict) or not prices:
            raise ExprofError(
                f"{where}.{model}: must be a mapping of one or more of {classes} to USD per MTok"
            )
        for key in prices:
            if key not in CLASSES:
                raise ExprofError(
                    f"{where}.{model}: unknown price class {str(key)!r}; the classes are {classes}"
                )
        if str(model) not in PRICES_PER_MTOK and not {"input", "output"} <= set(prices):
            raise ExprofError(
                f"{where}.{model}: not in exprof's price table, so both input and output are needed"
            )
        out[str(model)] = {
            k: float(check_number(prices[k], f"{where}.{model}.{k}", 0.0, None)) for k in prices
        }
    return out
