"""What a run's answers cost, from the ledger: the tokens the store recorded as paid for,
priced by `pricing.py` (the config's `pricing:` block first), batch runs at the batch
discount. Mock answers carry usage too, so an offline run has a cost to plan with."""

from __future__ import annotations

from typing import Any

from exprof.pricing import BATCH_DISCOUNT, estimate_cost, price_for
from exprof.store.engine import Store
from exprof.store.record import load_started


def _discount(config: dict[str, Any]) -> float:
    return BATCH_DISCOUNT if config.get("batch") else 1.0


def cost_per_answer(store: Store, run_id: str) -> float | None:
    """The mean recorded cost of one answered request of the run; None when its model
    has no price or it paid for no answer (every one reused)."""
    config = load_started(store, run_id).config
    ok = store.sample_stats(run_id).get("ok")
    if ok is None or ok.count - ok.reused <= 0:
        return None
    cost = estimate_cost(config["model"], ok.input_tokens, ok.output_tokens, config["pricing"])
    if cost is None:
        return None
    return cost * _discount(config) / (ok.count - ok.reused)


def sample_costs(
    config: dict[str, Any], totals: list[tuple[str, int, float, int, int, int]]
) -> dict[str, float] | None:
    """dialogue_id -> what its answers (all its repeats) cost, from store.sample_totals's
    rows; None when the model has no price."""
    price = price_for(config["model"], config["pricing"])
    if price is None:
        return None
    scale = _discount(config) / 1e6
    return {row[0]: (row[4] * price["input"] + row[5] * price["output"]) * scale for row in totals}
