"""Estimated cost from a small table of list prices, in USD per million tokens.

A `pricing:` block in the config extends or overrides the table. A model that is in
neither gives no estimate: the cost is reported as unknown, never guessed.
"""

from __future__ import annotations

import re

PRICES_PER_MTOK: dict[str, dict[str, float]] = {
    "claude-opus-4-5": {"input": 5.0, "output": 25.0},
    "claude-opus-4-1": {"input": 15.0, "output": 75.0},
    "claude-opus-4": {"input": 15.0, "output": 75.0},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0},
    "claude-sonnet-4": {"input": 3.0, "output": 15.0},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0},
    "claude-3-7-sonnet": {"input": 3.0, "output": 15.0},
    "claude-3-5-haiku": {"input": 0.8, "output": 4.0},
    "claude-3-opus": {"input": 15.0, "output": 75.0},
    "claude-3-haiku": {"input": 0.25, "output": 1.25},
}
BATCH_DISCOUNT = 0.5  # the Message Batches API bills every token at half the list price
_DATED = re.compile(r"-(\d{8}|latest)$")


def price_for(model: str, overrides: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The config's price, else the table's, for the model or its undated alias."""
    table = {**PRICES_PER_MTOK, **overrides}
    return table.get(model) or table.get(_DATED.sub("", model))


def estimate_cost(
    model: str, input_tokens: int, output_tokens: int, overrides: dict[str, dict[str, float]]
) -> float | None:
    price = price_for(model, overrides)
    if price is None:
        return None
    return round((input_tokens * price["input"] + output_tokens * price["output"]) / 1e6, 6)
