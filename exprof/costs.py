"""A run's recorded cost: the store's usage totals, class by class, priced by the ledger
(exprof.pricing.price_usage). The summary, `runs`, `compare`, the report and
`budget_usd` all read it here, and so do `plan` (the cost of one answer) and the
frontier (the cost of each sample). Answers taken from the store (`cache: true`) were not
paid for again: their cost is kept apart, as what they avoided."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from exprof.pricing import (
    CLASSES,
    ZERO,
    Cost,
    Usage,
    cache_hit_rate,
    price_server_tools,
    price_usage,
    rates_for,
)
from exprof.store.engine import Store
from exprof.store.projections import cache_tokens, usage_tokens
from exprof.store.queries import Queries, SampleTotals
from exprof.store.record import load_started


@dataclass(frozen=True)
class RunCost:
    """None costs: the model has no known price."""

    paid: Cost | None  # the answers sent, at the rates they ran at (batch discount included)
    undiscounted: Cost | None  # the same answers at the list rates: what batch saved
    avoided: Cost | None  # the reused answers, as if they had been sent
    tokens: dict[str, int]  # the answers sent, by class
    server_tools_usd: float = 0.0  # the server tools' per-use fees (web searches)

    @property
    def total_usd(self) -> float | None:
        """Everything the answers sent cost: their tokens and their server tools."""
        return self.paid.total + self.server_tools_usd if self.paid is not None else None

    def fields(self, batch: bool) -> dict[str, Any]:
        """What a live run's summary says about its cost."""
        paid, total = self.paid, self.total_usd
        written = self.tokens["cache_write_5m"] + self.tokens["cache_write_1h"]
        read = self.tokens["cache_read"]
        out: dict[str, Any] = {
            "estimated_cost_usd": round(total, 6) if total is not None else "cost unknown",
            "cost_by_class": (
                {c: round(paid.by_class[c], 6) for c in CLASSES} if paid is not None else None
            ),
            "cache_write_tokens": written,
            "cache_read_tokens": read,
            "cache_hit_rate": cache_hit_rate(read, written),
            "cache_saving_usd": round(paid.cache_saving, 6) if paid is not None else None,
        }
        if batch:
            out["batch"] = True
            if paid is not None and self.undiscounted is not None:
                out["batch_saving_usd"] = round(self.undiscounted.total - paid.total, 6)
        if self.server_tools_usd and out["cost_by_class"] is not None:
            out["cost_by_class"]["server_tools"] = round(self.server_tools_usd, 6)
        return out


def run_cost(store: Queries, run_id: str, config: dict[str, Any]) -> RunCost:
    """The run's answers priced from their recorded usage, per service tier and speed."""
    rates = rates_for(config["model"], config.get("pricing") or {})
    batch = bool(config.get("batch"))
    paid, undiscounted, avoided = ZERO, ZERO, ZERO
    tokens = dict.fromkeys(CLASSES, 0)
    for row in store.usage_totals(run_id):
        usage = Usage(
            row.input,
            row.cache_write_5m,
            row.cache_write_1h,
            row.cache_read,
            row.output,
            batch=batch,
            service_tier=row.service_tier,
            speed=row.speed,
        )
        if row.reused:
            if rates is not None:
                avoided = avoided + price_usage(rates, usage)
            continue
        for name, count in usage.tokens().items():
            tokens[name] += count
        if rates is not None:
            paid = paid + price_usage(rates, usage)
            tier = None if usage.service_tier == "batch" else usage.service_tier
            listed = replace(usage, batch=False, service_tier=tier)
            undiscounted = undiscounted + price_usage(rates, listed)
    if rates is None:
        return RunCost(None, None, None, tokens)
    uses = store.server_tool_uses(run_id) if config.get("tools") else {}
    return RunCost(paid, undiscounted, avoided, tokens, price_server_tools(uses))


def answer_usage(meta: dict[str, Any], batch: bool = False) -> Usage:
    """One answer's usage record, from its metadata as recorded."""
    input_tokens, output_tokens = usage_tokens(meta)
    five, hour, read = cache_tokens(meta)
    return Usage(
        input_tokens or 0,
        five or 0,
        hour or 0,
        read or 0,
        output_tokens or 0,
        batch=batch,
        service_tier=meta.get("service_tier")
        if isinstance(meta.get("service_tier"), str)
        else None,
        speed=meta.get("speed") if isinstance(meta.get("speed"), str) else None,
    )


def cost_per_answer(store: Store, run_id: str) -> float | None:
    """The mean recorded cost of one answered request of the run; None when its model
    has no price or it paid for no answer (every one reused)."""
    ok = store.sample_stats(run_id).get("ok")
    if ok is None or ok.count - ok.reused <= 0:
        return None
    total = run_cost(store, run_id, load_started(store, run_id).config).total_usd
    return total / (ok.count - ok.reused) if total is not None else None


def sample_costs(config: dict[str, Any], totals: list[SampleTotals]) -> dict[str, float] | None:
    """dialogue_id -> what its answers (all its repeats) cost, from store.sample_totals's
    rows, at the list rates (and the batch discount); None when the model has no price."""
    rates = rates_for(config["model"], config.get("pricing") or {})
    if rates is None:
        return None
    batch = bool(config.get("batch"))
    return {
        row.dialogue_id: price_usage(
            rates,
            Usage(
                row.input, row.cache_write_5m, row.cache_write_1h, row.cache_read, row.output, batch
            ),
        ).total
        for row in totals
    }
