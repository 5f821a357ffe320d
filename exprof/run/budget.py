"""`budget_usd`: stop dispatching once the recorded cost reaches a limit.

The cost is what the store says was spent: the tokens of the answers recorded for the
runs under the budget (all the cells of an experiment), each class of token priced by
the ledger (exprof.pricing), so a cache write counts at its rate as soon as it lands;
reused answers cost nothing. Mock answers carry usage too (their `token_count`), so a
mock run is held to its budget the same way, which makes budgets testable offline.
Requests already in flight when the limit is reached still land, so a run may end a few
requests past it; none is dispatched after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from exprof import hints
from exprof.costs import answer_usage, run_cost
from exprof.pricing import cost_of
from exprof.store.engine import Store
from exprof.store.queries import StatusStats
from exprof.store.record import load_started

CHECK_EVERY_S = 0.05  # far from the limit, the cost is read from the store at most this often
NEAR_LIMIT = 0.5  # from this share of the limit on, it is read before every dispatch
T = TypeVar("T")
NONE_DONE = StatusStats(0, 0.0, 0, 0, 0, 0, 0)


class Budget:
    def __init__(self, store: Store, run_ids: list[str], limit_usd: float) -> None:
        self.store = store
        self.run_ids = run_ids
        self.limit_usd = limit_usd
        self.reached = False
        self._checked = 0.0
        self._spent = 0.0
        self._configs: dict[str, dict[str, Any]] = {}

    def _config(self, run_id: str) -> dict[str, Any]:
        if run_id not in self._configs:
            self._configs[run_id] = load_started(self.store, run_id).config
        return self._configs[run_id]

    def spent(self) -> float:
        total = 0.0
        for run_id in self.run_ids:
            if not self.store.run_exists(run_id):
                continue
            spent = run_cost(self.store, run_id, self._config(run_id)).total_usd
            total += spent or 0.0  # an unpriced model is refused at load (require_prices)
        return total

    def affordable(
        self, run_id: str, items: list[T], metadata: Callable[[T], dict[str, Any]]
    ) -> list[T]:
        """The items dispatched before the limit is reached, when each answer's usage is
        known before it is sent (the mock's `metadata(item)`): the same rule as live,
        the store's spending read once and each answer's cost added as it is taken, so
        a mock run that commits thousands of answers per transaction stops on time."""
        self._spent = self.spent()
        out = []
        for item in items:
            if self._spent >= self.limit_usd:
                self.reached = True
                break
            out.append(item)
            config = self._config(run_id)
            cost = cost_of(
                config["model"],
                config["pricing"],
                [answer_usage(metadata(item), bool(config.get("batch")))],
            )
            self._spent += cost.total if cost is not None else 0.0  # as in spent()
        return out

    def check(self) -> bool:
        """True once the limit is reached. Far from it the store is read at most every
        CHECK_EVERY_S; near it, before every dispatch, so that fast answers (a whole cell
        can finish within one interval) never carry a run past the limit."""
        now = time.monotonic()
        near = self._spent >= self.limit_usd * NEAR_LIMIT
        if not self.reached and (near or now - self._checked >= CHECK_EVERY_S):
            self._checked = now
            self._spent = self.spent()
            self.reached = self._spent >= self.limit_usd
        return self.reached

    def within(self, items: Iterable[T]) -> Iterator[T]:
        """The items, until the limit is reached."""
        for item in items:
            if self.check():
                return
            yield item

    def message(self, resume_id: str) -> str:
        spent = self.spent()
        begun = [r for r in self.run_ids if self.store.run_exists(r)]
        done = sum(self.store.sample_stats(r).get("ok", NONE_DONE).count for r in begun)
        owed = [row.samples_total * row.repeats for row in map(self.store.run_row, begun)]
        # The cells not begun yet owe as much as those begun: the same dataset and repeats.
        total = sum(owed) * len(self.run_ids) // max(1, len(owed))
        more = hints.budget_to_finish(spent, self.limit_usd, done, total)
        return (
            f"budget reached: ${spent:.4f} recorded of ${self.limit_usd:g}; continue with a "
            f"larger one: {hints.command('resume', resume_id, '--budget-usd', hints.amount(more))}"
        )
