"""The fake API's model catalogue: ModelInfo entries as the Models API returns them
(`GET /v1/models/{model_id}`), and the rules a model applies to a request.

Field names follow the SDK's types (anthropic/types/model_info.py, model_capabilities.py,
thinking_types.py, effort_capability.py). The catalogue's current models take what their
documentation says; any other `claude-*` id or test id is an older, permissive model, so
that the fake's other tests may name any model.
"""

from __future__ import annotations

EFFORTS = ("low", "medium", "high", "xhigh", "max")
THINKING_TYPES = ("adaptive", "between_tools", "disabled", "enabled")
# Thinking tokens the fake spends per answer at each effort (adaptive thinking).
THINKING_TOKENS = {"low": 16, "medium": 48, "high": 120, "xhigh": 240, "max": 480}


def _support(on: bool) -> dict:
    return {"supported": on}


def entry(
    model: str,
    max_tokens: int = 128_000,
    efforts: tuple[str, ...] = EFFORTS,
    thinking: tuple[str, ...] = ("adaptive", "between_tools", "disabled"),
    structured: bool = True,
    lifecycle: str = "active",
    retires_at: str | None = None,
) -> dict:
    return {
        "type": "model",
        "id": model,
        "display_name": model,
        "created_at": "2026-07-24T00:00:00Z",
        "lifecycle": lifecycle,
        "deprecated_at": None if lifecycle == "active" else "2026-09-01T00:00:00Z",
        "retires_at": retires_at,
        "max_input_tokens": 1_000_000,
        "max_tokens": max_tokens,
        "capabilities": {
            "batch": _support(True),
            "citations": _support(True),
            "code_execution": _support(False),
            "context_management": {"supported": False},
            "effort": {"supported": bool(efforts), **{e: _support(e in efforts) for e in EFFORTS}},
            "image_input": _support(True),
            "pdf_input": _support(True),
            "server_tools": {"supported": False},
            "structured_outputs": _support(structured),
            "thinking": {
                "supported": thinking != ("disabled",),
                "types": {t: _support(t in thinking) for t in THINKING_TYPES},
            },
        },
    }


CATALOGUE = {
    "claude-opus-5": entry("claude-opus-5"),
    "claude-sonnet-5": entry("claude-sonnet-5"),
    "claude-opus-5-5": entry("claude-opus-5-5"),
    "claude-sonnet-5-5": entry("claude-sonnet-5-5"),
    "claude-haiku-5-5": entry("claude-haiku-5-5", efforts=("low", "medium", "high")),
    "claude-fable-5-1": entry("claude-fable-5-1", thinking=("adaptive", "between_tools")),
    "claude-haiku-4-5": entry(
        "claude-haiku-4-5", 64_000, efforts=(), thinking=("disabled", "enabled"), structured=False
    ),
    "claude-sonnet-4-5": entry(
        "claude-sonnet-4-5", 64_000, efforts=(), thinking=("disabled", "enabled"), structured=False
    ),
    "claude-opus-4-1": entry(
        "claude-opus-4-1",
        32_000,
        efforts=(),
        thinking=("disabled", "enabled"),
        lifecycle="deprecated",
        retires_at="2027-01-05T00:00:00Z",
    ),
}
# Models that think unless told not to, take no prefill, and refuse to turn thinking
# off at an effort above high.
THINK_BY_DEFAULT = {m for m in CATALOGUE if "-5" in m} - {"claude-sonnet-4-5"}
# The smallest prefix each model caches, in tokens (the prompt caching page); any other
# model takes the lowest.
MIN_CACHEABLE = {
    "claude-sonnet-4-5": 1024,
    "claude-opus-4-1": 1024,
    "claude-haiku-4-5": 4096,
    "claude-opus-4-5": 4096,
    "claude-opus-4-6": 4096,
    "claude-sonnet-4-6": 2048,
}


def min_cacheable(model: str) -> int:
    return MIN_CACHEABLE.get(model, 1024)


def lookup(model: str, retired: set[str], unknown: set[str]) -> dict | None:
    if model in unknown:
        return None
    if model in retired:
        return entry(model, lifecycle="retired")
    return CATALOGUE.get(model) or entry(model, efforts=(), thinking=THINKING_TYPES)


def rejects(body: dict, info: dict) -> str | None:
    """The 400 message the API gives a request this model cannot take, or None."""
    model, caps = info["id"], info["capabilities"]
    max_tokens = body.get("max_tokens", 0)
    if max_tokens > info["max_tokens"]:
        return (
            f"max_tokens: {max_tokens} > {info['max_tokens']}, which is the maximum allowed "
            f"number of output tokens for {model}"
        )
    output = body.get("output_config") or {}
    effort = output.get("effort")
    if effort is not None and not caps["effort"].get(effort, {}).get("supported"):
        return f"output_config.effort: {model} does not support effort {effort!r}"
    if output.get("format") is not None and not caps["structured_outputs"]["supported"]:
        return f"output_config.format: structured outputs are not supported on {model}"
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type")
        if not caps["thinking"]["types"].get(kind, {}).get("supported"):
            return f"thinking.type: {kind!r} is not supported on {model}"
        budget = thinking.get("budget_tokens")
        if kind == "enabled" and (budget is None or budget < 1024 or budget >= max_tokens):
            return "thinking.budget_tokens: must be >= 1024 and less than max_tokens"
        if model in THINK_BY_DEFAULT and kind == "disabled" and effort in ("xhigh", "max"):
            return f"thinking: thinking can be disabled on {model} only at effort high or lower"
    messages = body.get("messages") or []
    if model in THINK_BY_DEFAULT and messages and messages[-1].get("role") == "assistant":
        return (
            "This model does not support assistant message prefill. "
            "The conversation must end with a user message."
        )
    return None


def thinks(body: dict, model: str) -> int:
    """Thinking tokens this answer spends: by effort (high when unset) where thinking is
    on, which on a 5.x model is unless it is disabled."""
    thinking = body.get("thinking")
    kind = thinking.get("type") if thinking else ("adaptive" if model in THINK_BY_DEFAULT else None)
    if kind not in ("adaptive", "enabled"):
        return 0
    effort = (body.get("output_config") or {}).get("effort") or "high"
    spent = THINKING_TOKENS[effort]
    if kind == "enabled":
        spent = min(spent, thinking["budget_tokens"])
    return spent
