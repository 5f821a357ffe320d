"""What a model takes, checked before anything is sent or recorded.

A live run reads each model's entry from the Models API (`models.retrieve`, in
exprof.clients.models) once, before the first request; a mock run reads the small
table below. An entry is the API's ModelInfo as JSON: `lifecycle`, `max_tokens`,
`retires_at` and `capabilities` (effort and its levels, thinking and its types,
structured outputs). The check turns what a config asks and a model cannot do into one
error naming the config key, the model and what it takes. What the entry does not
describe (a prefill, an effort a model refuses with thinking off) is left to the API's
first 400, which stops the run (exprof.clients.fatal).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from exprof.config import Config
from exprof.errors import ExprofError
from exprof.knobs import EFFORTS, SAMPLING

ModelInfo = dict[str, Any]
Fetch = Callable[[str], ModelInfo | None]  # None: no such model


def _entry(
    max_tokens: int,
    efforts: Sequence[str] = (),
    thinking: Sequence[str] = ("disabled",),
    structured: bool = True,
) -> ModelInfo:
    def support(on: bool) -> dict[str, bool]:
        return {"supported": on}

    return {
        "type": "model",
        "lifecycle": "active",
        "max_tokens": max_tokens,
        "capabilities": {
            "effort": {"supported": bool(efforts), **{e: support(e in efforts) for e in EFFORTS}},
            "thinking": {
                "supported": thinking != ("disabled",),
                "types": {
                    t: support(t in thinking)
                    for t in ("adaptive", "between_tools", "disabled", "enabled")
                },
            },
            "structured_outputs": support(structured),
        },
    }


_ALL = EFFORTS
_ADAPTIVE = ("adaptive", "between_tools", "disabled")
_BOTH = ("adaptive", "disabled", "enabled")
_TO_HIGH = ("low", "medium", "high")
# The mock's table: current models as their documentation describes them.
MOCK_MODELS: dict[str, ModelInfo] = {
    "claude-fable-5-1": _entry(128_000, _ALL, ("adaptive", "between_tools")),
    "claude-opus-5-5": _entry(128_000, _ALL, _ADAPTIVE),
    "claude-opus-5": _entry(128_000, _ALL, _ADAPTIVE),
    "claude-sonnet-5-5": _entry(128_000, _ALL, _ADAPTIVE),
    "claude-sonnet-5": _entry(128_000, _ALL, _ADAPTIVE),
    "claude-haiku-5-5": _entry(128_000, _TO_HIGH, _ADAPTIVE),
    "claude-opus-4-8": _entry(128_000, _ALL, ("adaptive", "disabled")),
    "claude-opus-4-7": _entry(128_000, _ALL, ("adaptive", "disabled")),
    "claude-opus-4-6": _entry(
        128_000, ("low", "medium", "high", "max"), ("adaptive", "disabled", "enabled")
    ),
    "claude-sonnet-4-6": _entry(64_000, _TO_HIGH, ("adaptive", "disabled", "enabled")),
    "claude-opus-4-5": _entry(64_000, _TO_HIGH, ("disabled", "enabled")),
    "claude-sonnet-4-5": _entry(64_000, (), ("disabled", "enabled")),
    "claude-haiku-4-5": _entry(64_000, (), ("disabled", "enabled")),
}


def mock_fetch(model: str) -> ModelInfo | None:
    return MOCK_MODELS.get(model)


def preflight(
    cells: Sequence[tuple[str | None, Config]], source: str, live: bool
) -> dict[str, ModelInfo]:
    """Check every cell before the first starts (the Models API live, the table in a
    mock run), print the warnings, and give the entries read, by model."""
    if live:
        from exprof.clients.models import ModelsClient

        client = ModelsClient(cells[0][1].timeout_s)
        try:
            infos, warnings = check_models(cells, client.fetch, source, live=True)
        finally:
            client.close()
    else:
        infos, warnings = check_models(cells, mock_fetch, source, live=False)
    for warning in warnings:
        print(warning, file=sys.stderr)
    return infos


def check_models(
    configs: Sequence[tuple[str | None, Config]], fetch: Fetch, source: str, live: bool
) -> tuple[dict[str, ModelInfo], list[str]]:
    """Every (cell name, config) checked against its model's entry, each model fetched
    once: the entries read, by model, and the warnings to print. Raises one ExprofError
    for the first thing a model cannot do. A model with no entry is an error live; in a
    mock run it is a warning where the config sets a knob (the seed's model, which the
    table does not hold, sets none)."""
    infos: dict[str, ModelInfo] = {}
    warnings: list[str] = []
    missing: set[str] = set()
    for cell, config in configs:
        model = config.model
        if model not in infos and model not in missing:
            info = fetch(model)
            if info is None:
                if live:
                    raise ExprofError(
                        f"{source}: model: {model!r} is not a model the API knows; "
                        "check the id (the Models API lists them)"
                    )
                missing.add(model)
                if any(_checked_knobs(cfg) for _, cfg in configs if cfg.model == model):
                    warnings.append(
                        f"warning: model {model!r} is not in exprof's capability table; "
                        "its knobs are not checked in this mock run"
                    )
                continue
            infos[model] = info
            warnings.extend(_lifecycle(info, model, source))
        if model in infos:
            _check(config, infos[model], f"{source}: " if cell is None else f"{source}: [{cell}] ")
    return infos, warnings


def _checked_knobs(config: Config) -> list[str]:
    """The knobs set that a model entry rules on (sampling parameters it does not)."""
    return [k for k in config.knobs if k not in SAMPLING and k != "prompt_cache"]


def _lifecycle(info: ModelInfo, model: str, source: str) -> list[str]:
    stage = info.get("lifecycle")
    if stage == "retired":
        raise ExprofError(
            f"{source}: model: {model!r} is retired (deprecated {info.get('deprecated_at')}); "
            "choose a current model"
        )
    if stage == "deprecated":
        when = info.get("retires_at") or "a date not yet set"
        return [f"warning: model {model!r} is deprecated and retires at {when}"]
    return []


def _check(config: Config, info: ModelInfo, at: str) -> None:
    model = config.model
    caps = info.get("capabilities") or {}
    limit = info.get("max_tokens")
    if isinstance(limit, int) and config.max_tokens > limit:
        raise ExprofError(
            f"{at}max_tokens: {config.max_tokens} is above {model}'s maximum of {limit}"
        )
    if config.effort is not None and "effort" in caps:
        effort = caps["effort"]
        levels = [e for e in EFFORTS if (effort.get(e) or {}).get("supported")]
        if not effort.get("supported"):
            raise ExprofError(f"{at}effort: {model} does not take effort; remove effort")
        if config.effort not in levels:
            raise ExprofError(
                f"{at}effort: {model} does not take effort {config.effort!r}; "
                f"it takes {', '.join(levels)}"
            )
    if config.thinking is not None and "thinking" in caps:
        types = caps["thinking"].get("types") or {}
        taken = [t for t, v in types.items() if (v or {}).get("supported")]
        kind = config.thinking["type"]
        if kind not in taken:
            said = "{budget_tokens: N}" if kind == "enabled" else repr(kind)
            offered = ", ".join("{budget_tokens: N}" if t == "enabled" else t for t in taken)
            raise ExprofError(
                f"{at}thinking: {model} does not take thinking {said}; it takes {offered}"
            )
        if kind == "enabled" and config.thinking["budget_tokens"] >= config.max_tokens:
            raise ExprofError(
                f"{at}thinking.budget_tokens: {config.thinking['budget_tokens']} must be "
                f"below max_tokens ({config.max_tokens})"
            )
    structured = caps.get("structured_outputs") or {}
    if config.output_schema is not None and structured and not structured.get("supported"):
        raise ExprofError(f"{at}output_schema: {model} does not take structured outputs")
