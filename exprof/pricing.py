"""Estimated cost from the list prices, in USD per million tokens.

The prices live in one data file, `exprof/prices.json`: each model's rate per token
class (input, output, 5-minute and 1-hour cache writes, cache reads), with the pricing
page they were read from and its date. Thinking tokens are part of a response's output
tokens and are priced as output. A `pricing:` block in the config extends or overrides
the table. A model that is in neither gives no estimate: the cost is reported as
unknown, never guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from exprof.errors import ExprofError

PRICE_FILE = Path(__file__).with_name("prices.json")
PRICE_TABLE = json.loads(PRICE_FILE.read_text(encoding="utf-8"))
PRICES_PER_MTOK: dict[str, dict[str, float]] = PRICE_TABLE["models"]
BATCH_DISCOUNT = 0.5  # the Message Batches API bills every token at half the list price
_DATED = re.compile(r"-(\d{8}|latest)$")


def price_for(model: str, overrides: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The config's price, else the table's, for the model or its undated alias."""
    table = {**PRICES_PER_MTOK, **overrides}
    return table.get(model) or table.get(_DATED.sub("", model))


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
    model: str, input_tokens: int, output_tokens: int, overrides: dict[str, dict[str, float]]
) -> float | None:
    price = price_for(model, overrides)
    if price is None:
        return None
    return round((input_tokens * price["input"] + output_tokens * price["output"]) / 1e6, 6)
