"""The cost ledger: what a response's usage costs, class by class, in USD.

The prices live in one data file, `exprof/prices.json`: each model's rate per token
class (USD per million tokens), with the pricing page they were read from and its date.
A model's entry may add rates for a fast-mode `speed` or a `service_tier`, where the
page publishes them; a response that ran that way is priced at them. A `pricing:` block
in the config overrides any subset of a model's classes (exprof.config_sections checks it).

One function, `price_usage`, prices a usage record. Every figure exprof shows (the
summary, `runs`, `compare`, the report, `budget_usd`, `--dry-run`, the judge's
announcement) comes from it, so they cannot disagree. Thinking tokens are part of a
response's output tokens and are priced as output. The Message Batches API discount
applies to every class. A model that is in neither the table nor the config gives no
price: the cost is reported as unknown, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError

PRICE_FILE = Path(__file__).with_name("prices.json")
PRICE_TABLE = json.loads(PRICE_FILE.read_text(encoding="utf-8"))
PRICES_PER_MTOK: dict[str, dict[str, Any]] = PRICE_TABLE["models"]
# Server tools (web search, web fetch) are billed per use, beside their tokens.
SERVER_TOOL_USD: dict[str, float] = {
    k: float(v) for k, v in PRICE_TABLE["server_tools"].items() if isinstance(v, int | float)
}
BATCH_DISCOUNT = 0.5  # the Message Batches API bills every token at half the list price
# The token classes of a usage record, in the order the ledger lists them.
CLASSES = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
# A class left out of a price is this multiple of its input rate (the pricing page's rule).
INPUT_MULTIPLES = {"cache_write_5m": 1.25, "cache_write_1h": 2.0, "cache_read": 0.1}
VARIANTS = ("speed", "service_tier")  # what may carry rates of its own in an entry
_DATED = re.compile(r"-(\d{8}|latest)$")

Overrides = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Rates:
    """A model's rate per class, USD per million tokens, and the rates of the speeds and
    service tiers that have their own (by kind, then value: {"speed": {"fast": ...}})."""

    per_class: dict[str, float]
    variants: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def for_usage(self, usage: Usage) -> dict[str, float]:
        for kind in VARIANTS:
            chosen = getattr(usage, kind)
            found = self.variants.get(kind, {}).get(chosen) if chosen else None
            if found is not None:
                return found
        return self.per_class


@dataclass(frozen=True)
class Usage:
    """One response's tokens by class (or the sum of several that ran alike). `input` is
    the uncached input the API reports as input_tokens; `output` includes thinking."""

    input: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output: int = 0
    batch: bool = False
    service_tier: str | None = None
    speed: str | None = None

    def tokens(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in CLASSES}


@dataclass(frozen=True)
class Cost:
    """A usage record priced: USD per class, the total, and what its cached tokens
    would have cost as plain input (the same discount applied)."""

    by_class: dict[str, float]
    uncached_cache_usd: float

    @property
    def total(self) -> float:
        return sum(self.by_class.values())

    @property
    def cache_saving(self) -> float:
        cached = self.by_class["cache_write_5m"] + self.by_class["cache_write_1h"]
        return self.uncached_cache_usd - cached - self.by_class["cache_read"]

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            {c: self.by_class[c] + other.by_class[c] for c in CLASSES},
            self.uncached_cache_usd + other.uncached_cache_usd,
        )


ZERO = Cost(dict.fromkeys(CLASSES, 0.0), 0.0)


def price_usage(rates: Rates, usage: Usage) -> Cost:
    """The ledger: a usage record's cost, class by class. The rates are the speed's or
    service tier's where the model has its own for them, else the list rates; a batch
    answer (`usage.batch`, or a batch service tier) pays BATCH_DISCOUNT of every one."""
    rate = rates.for_usage(usage)
    discount = BATCH_DISCOUNT if usage.batch or usage.service_tier == "batch" else 1.0
    tokens = usage.tokens()
    by_class = {c: tokens[c] * rate[c] * discount / 1e6 for c in CLASSES}
    cached = usage.cache_write_5m + usage.cache_write_1h + usage.cache_read
    return Cost(by_class, cached * rate["input"] * discount / 1e6)


def rates_for(model: str, overrides: Overrides) -> Rates | None:
    """The model's rates (or its undated alias's): the table's entry with the config's
    classes laid over it. An override that sets `input` and leaves a cache class out
    gives that class its multiple of the new input rate."""
    table = PRICES_PER_MTOK.get(model) or PRICES_PER_MTOK.get(_DATED.sub("", model))
    override = overrides.get(model) or overrides.get(_DATED.sub("", model))
    if table is None and override is None:
        return None
    listed = {k: v for k, v in (table or {}).items() if k in CLASSES}
    if override is not None and "input" in override:
        listed = {k: v for k, v in listed.items() if k not in INPUT_MULTIPLES}
    merged = {**listed, **(override or {})}
    if "input" not in merged or "output" not in merged:
        return None
    variants: dict[str, dict[str, dict[str, float]]] = {}
    for kind in VARIANTS:
        for value, block in (table or {}).get(kind, {}).items():
            variants.setdefault(kind, {})[value] = complete(block)
    return Rates(complete(merged), variants)


def complete(price: dict[str, float]) -> dict[str, float]:
    """Every class's rate: a cache class left out is its multiple of the input rate."""
    out = {k: float(v) for k, v in price.items() if k in CLASSES}
    for name, multiple in INPUT_MULTIPLES.items():
        out.setdefault(name, out["input"] * multiple)
    return out


def price_for(model: str, overrides: Overrides) -> dict[str, float] | None:
    """The model's list rate per class, or None when it has no known price."""
    rates = rates_for(model, overrides)
    return rates.per_class if rates is not None else None


def cost_of(model: str, overrides: Overrides, usages: list[Usage]) -> Cost | None:
    """Several usage records of one model priced and summed; None when it has no price."""
    rates = rates_for(model, overrides)
    if rates is None:
        return None
    total = ZERO
    for usage in usages:
        total = total + price_usage(rates, usage)
    return total


def require_prices(models: list[str], overrides: dict[str, dict[str, float]], where: str) -> None:
    """A budget is kept by pricing what was spent: each model under it needs a price, or
    the budget could never be reached. One error names the first model without one."""
    for model in models:
        if price_for(model, overrides) is None:
            raise ExprofError(
                f"{where}: {model} has no price, so a budget cannot be kept; give its "
                f"prices per million tokens in the config: pricing: {{{model}: "
                "{input: X, output: Y}}"
            )


def estimate_cost(
    model: str, input_tokens: int, output_tokens: int, overrides: Overrides
) -> float | None:
    """Plain input and output tokens priced by the ledger, rounded to the micro-dollar."""
    cost = cost_of(model, overrides, [Usage(input=input_tokens, output=output_tokens)])
    return round(cost.total, 6) if cost is not None else None


def price_server_tools(uses: dict[str, int]) -> float:
    """What the server tools' uses cost, by the per-use fee (a use not priced: 0)."""
    return sum(count * SERVER_TOOL_USD.get(name, 0.0) for name, count in uses.items())


def cache_hit_rate(read: int, written: int) -> float | None:
    """The share of the cacheable-prefix tokens that were read, not written."""
    return round(read / (read + written), 4) if read + written else None
