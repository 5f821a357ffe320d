"""Prompt caching (`prompt_cache:`): where a request's `cache_control` breakpoints go,
and the prefix they close, by which the live loop groups its samples.

The prefix is what requests share in front of each sample: the tool definitions, when
a request has any (the API reads them first; `upto: tools` stops there), the system
blocks, and with `upto: conversation` the turns before the last user turn. A breakpoint
closes each part whose cumulative prefix reaches the model's minimum cacheable length;
a shorter one would never be cached (the API ignores it), so it is left out and the run
says so once. Lengths are estimated before anything is sent, at CHARS_PER_TOKEN characters a token
(exprof.estimate's rule).

A prefix's hash is the sha256 of the model and the prefix up to its first breakpoint:
the part that samples share, and the key the live loop schedules by.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from exprof.config import Config
from exprof.dataset import Sample, text_of
from exprof.errors import ExprofError
from exprof.jsonio import dumps

CHARS_PER_TOKEN = 4
# The smallest prefix each model caches, in tokens (the prompt caching page). A model
# not listed is taken at the lowest, so its breakpoints are placed and the API decides.
MIN_CACHEABLE_TOKENS = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-sonnet-4": 1024,
    "claude-3-7-sonnet": 1024,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}
DEFAULT_MIN_CACHEABLE = 1024
TTL_S = {"5m": 300.0, "1h": 3600.0}
# Shortens every TTL the scheduler assumes (seconds), so tests can exercise re-warming.
TTL_ENV = "EXPROF_CACHE_TTL_S"


def min_cacheable(model: str) -> int:
    for name, tokens in MIN_CACHEABLE_TOKENS.items():
        if model == name or model.startswith(name + "-2"):  # the model or a dated id
            return tokens
    return DEFAULT_MIN_CACHEABLE


def ttl_s(settings: dict[str, Any]) -> float:
    """How long the scheduler takes a written prefix to stay warm."""
    shortened = os.environ.get(TTL_ENV)
    if shortened:
        try:
            value = float(shortened)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ExprofError(f"{TTL_ENV}: must be a positive number of seconds, got {shortened!r}")
        return value
    return TTL_S[settings["ttl"]]


def estimated_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Plan:
    """Where one request's breakpoints go: `system`, `messages[i]`."""

    breakpoints: tuple[str, ...]
    prefix_sha256: str | None  # the shared prefix's hash; None: nothing to cache
    short: bool  # it had a prefix, under the model's minimum: sent without a breakpoint
    tokens: int = 0  # the estimated tokens up to the last breakpoint: what is cached


NO_PLAN = Plan((), None, False)


def plan(config: Config, sample: Sample) -> Plan:
    settings = config.prompt_cache
    if settings is None:
        return NO_PLAN
    parts: list[tuple[str, Any, str]] = []  # (breakpoint, what it closes, its text)
    if config.tools:  # the API reads the tools first: the front of every prefix
        parts.append(("tools", config.tools, dumps(config.tools)))
    if sample.system and settings["upto"] != "tools":
        parts.append(("system", sample.system, text_of(sample.system)))
    if settings["upto"] == "conversation":
        turns = sample.turns()
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=0)
        if last_user > 0:
            earlier = turns[:last_user]
            text = "\n".join(text_of(t["content"]) for t in earlier)
            parts.append((f"messages[{last_user - 1}]", earlier, text))
    if not parts:
        return NO_PLAN
    least = min_cacheable(config.model)
    placed, shared, length, cached = [], None, 0, 0
    for at, (name, _, text) in enumerate(parts):
        length += estimated_tokens(text)
        if length < least:
            continue
        placed.append(name)
        cached = length
        if shared is None:
            upto = [closes for _, closes, _ in parts[: at + 1]]
            if len(upto) == 1 and isinstance(upto[0], str):  # a plain system prompt
                shared = _digest(config.model, upto[0])
            else:
                shared = hashlib.sha256(dumps([config.model, upto]).encode()).hexdigest()
    return Plan(tuple(placed), shared, not placed, cached)


@lru_cache(maxsize=256)
def _digest(model: str, system: str) -> str:
    """A plain system prompt's prefix hash, computed once per prompt: every sample of a
    large run asks for it several times."""
    return hashlib.sha256(dumps([model, [system]]).encode()).hexdigest()


def with_breakpoints(request: dict[str, Any], settings: dict[str, Any], where: Plan) -> None:
    """Put `cache_control` on the request's blocks that `where` names (in place)."""
    control = {"type": "ephemeral", "ttl": settings["ttl"]}
    for name in where.breakpoints:
        if name == "tools":
            tools = request["tools"] = copy.deepcopy(list(request["tools"]))
            tools[-1] = {**tools[-1], "cache_control": control}
        elif name == "system":
            request["system"] = _marked(request["system"], control)
        else:
            index = int(name.removeprefix("messages[").removesuffix("]"))
            turns = request["messages"] = list(request["messages"])
            turns[index] = {**turns[index], "content": _marked(turns[index]["content"], control)}


def record(config: Config, sample: Sample, where: Plan | None = None) -> dict[str, Any]:
    """What an answer's record says of its request's cache breakpoints: where they went
    and the hash of the prefix they share (nothing when prompt_cache is off)."""
    if config.prompt_cache is None:
        return {}
    where = where or plan(config, sample)
    return {"cache_breakpoints": list(where.breakpoints), "prefix_sha256": where.prefix_sha256}


def _marked(content: Any, control: dict[str, str]) -> list[dict[str, Any]]:
    """Text blocks with `control` on the last one."""
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    blocks = copy.deepcopy(list(blocks))
    blocks[-1] = {**blocks[-1], "cache_control": control}
    return blocks


def short_warning(config: Config, samples: list[Sample]) -> str | None:
    """The one warning a run gives for prefixes under the model's minimum, or None."""
    if config.prompt_cache is None:
        return None
    short = sum(1 for s in samples if plan(config, s).short)
    if not short:
        return None
    return (
        f"warning: prompt_cache: {short} of {len(samples)} request(s) have a prefix under "
        f"{config.model}'s minimum cacheable length ({min_cacheable(config.model)} tokens, "
        f"at {CHARS_PER_TOKEN} characters a token); they are sent without a breakpoint"
    )
