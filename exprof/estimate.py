"""`exprof run --dry-run` (issue 12): what a run or an experiment would send and cost,
computed without writing anything.

Input tokens come from messages.count_tokens in live mode. Offline they are estimated
by a documented heuristic: one token per CHARS_PER_TOKEN characters of system and user
prompt (rounded up), plus MESSAGE_OVERHEAD_TOKENS for the message framing. That is
roughly right for English prose and undercounts code and non-Latin scripts. Output
tokens are not known before the answers: the cost shows the input part and, as an upper
bound, what every request would cost if it used all of max_tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from exprof.config import Config
from exprof.dataset import Sample
from exprof.experiment import cell_config, cell_samples, plan_cells
from exprof.pricing import price_for

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 8

Counter = Callable[[Config, list[Sample]], list[int]]


def heuristic_tokens(config: Config, samples: list[Sample]) -> list[int]:
    return [
        math.ceil((len(s.system) + len(s.user)) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS
        for s in samples
    ]


def dry_run(config: Config, samples: list[Sample], counter: Counter | None) -> dict[str, Any]:
    """One row per cell (one for a plain run): requests, input tokens, costs; totals."""
    count = counter or heuristic_tokens
    cells: list[tuple[str, Config]] = [("-", config)]
    if config.matrix:
        cells = [(c.name, cell_config(config, c.params)) for c in plan_cells(config, "x")]
    rows = []
    counted: dict[tuple[str, str | None], int] = {}  # cells differing only in sampling
    for name, cfg in cells:
        requests = len(samples) * cfg.repeats
        key = (cfg.model, cfg.system)
        if key not in counted:
            counted[key] = sum(count(cfg, cell_samples(samples, cfg)))
        tokens = counted[key] * cfg.repeats
        price = price_for(cfg.model, cfg.pricing)
        row: dict[str, Any] = {
            "cell": name,
            "model": cfg.model,
            "requests": requests,
            "input_tokens": tokens,
            "input_cost_usd": None,
            "max_cost_usd": None,
        }
        if price is not None:
            row["input_cost_usd"] = round(tokens * price["input"] / 1e6, 6)
            output = requests * cfg.max_tokens * price["output"] / 1e6
            row["max_cost_usd"] = round(row["input_cost_usd"] + output, 6)
        rows.append(row)
    known = all(r["input_cost_usd"] is not None for r in rows)
    return {
        "experiment_id": config.experiment_id,
        "token_count": "messages.count_tokens" if counter else "heuristic",
        "requests": sum(r["requests"] for r in rows),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "input_cost_usd": round(sum(r["input_cost_usd"] for r in rows), 6) if known else None,
        "max_cost_usd": round(sum(r["max_cost_usd"] for r in rows), 6) if known else None,
        "cells": rows,
    }
