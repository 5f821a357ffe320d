"""`exprof run --dry-run`: what a run or an experiment would send and cost,
computed without writing anything.

Input tokens come from messages.count_tokens in live mode. Offline they are estimated
by a documented heuristic: one token per CHARS_PER_TOKEN characters of system and user
prompt (rounded up), plus MESSAGE_OVERHEAD_TOKENS for the message framing. That is
roughly right for English prose and undercounts code and non-Latin scripts. Output
tokens are not known before the answers: the cost shows the input part and, as an upper
bound, what every request would cost if it used all of max_tokens.

With `cache: true`, the requests the store would answer from a recorded identical
request (exprof.run.cache) are counted apart, as `reused`, and cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from exprof import __version__
from exprof.cells import cell_configs, cell_samples
from exprof.clients import caching
from exprof.clients.count import body_key, max_counts
from exprof.config import Config
from exprof.dataset import Sample, with_repeats
from exprof.pricing import Usage, cost_of
from exprof.run.cache import find_sources, request_identity
from exprof.scoring.builtin import percentile
from exprof.store.engine import Store
from exprof.store.events import RunStarted
from exprof.store.record import iter_samples, load_started

CHARS_PER_TOKEN = 4
# An answer's input, as its usage gives it: the uncached part, then the cached ones.
INPUT_PARTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
EARLIER_RUNS = 20  # the most recorded runs an output prediction reads
MESSAGE_OVERHEAD_TOKENS = 8

Counter = Callable[[Config, list[Sample]], list[int]]


def heuristic_tokens(config: Config, samples: list[Sample]) -> list[int]:
    return [
        math.ceil(len(s.transcript()) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS for s in samples
    ]


def dry_run(
    config: Config,
    samples: list[Sample],
    counter: Counter | None,
    store: Store | None = None,
) -> dict[str, Any]:
    """One row per cell (one for a plain run): requests, input tokens, costs; totals.
    With `cache: true` and a store, the requests the store would answer are counted as
    `reused` and priced at nothing: only the rest are requests, tokens and cost."""
    mode = "live" if counter else "mock"
    tally = {"calls": 0, "from_store": 0, "estimated": 0}  # how live input was counted
    cells = [(name or "-", cfg) for name, cfg in cell_configs(config)]
    rows = []
    counted: dict[tuple[str, str | None], list[int]] = {}  # cells differing only in sampling
    earlier: set[tuple[Any, tuple[str, str], int]] = set()  # requests the cells before will send
    for name, cfg in cells:
        key = (cfg.model, cfg.system)
        prompts = cell_samples(samples, cfg)
        if key not in counted:
            counted[key] = (
                _api_counts(cfg, prompts, counter, store, tally)
                if counter is not None
                else heuristic_tokens(cfg, prompts)
            )
        per_sample = counted[key]
        reused: set[tuple[str, int]] = set()
        if cfg.cache:
            pairs = with_repeats(prompts, cfg.repeats)
            started = _as_started(cfg, mode, prompts)
            if store is not None:
                reused = set(find_sources(store, started, pairs))
            # An earlier cell's identical requests will be in the store by then, too.
            request = request_identity(started)
            reused |= {
                (s.dialogue_id, s.repeat)
                for s in pairs
                if (request, s.identity(), s.repeat) in earlier
            }
            earlier.update((request, s.identity(), s.repeat) for s in pairs)
        requests = len(samples) * cfg.repeats - len(reused)
        tokens = sum(
            tokens
            for sample, tokens in zip(prompts, per_sample, strict=True)
            for repeat in range(cfg.repeats)
            if (sample.dialogue_id, repeat) not in reused
        )
        sent = [
            (sample, tokens)
            for sample, tokens in zip(prompts, per_sample, strict=True)
            for repeat in range(cfg.repeats)
            if (sample.dialogue_id, repeat) not in reused
        ]
        usages, writes = input_usages(cfg, sent)
        input_cost = cost_of(cfg.model, cfg.pricing, usages)
        most = Usage(output=requests * cfg.max_tokens, batch=cfg.batch)
        max_cost = cost_of(cfg.model, cfg.pricing, [*usages, most])
        row: dict[str, Any] = {
            "cell": name,
            "model": cfg.model,
            "requests": requests,
            "input_tokens": tokens,
            "input_cost_usd": None,
            "max_cost_usd": None,
        }
        if cfg.cache:
            row["reused"] = len(reused)
        if cfg.prompt_cache is not None:
            row["cache_writes"] = writes
        if input_cost is not None and max_cost is not None:
            row["input_cost_usd"] = round(input_cost.total, 6)
            row["max_cost_usd"] = round(max_cost.total, 6)
        row.update(predicted_costs(cfg, store, usages, requests, row["max_cost_usd"]))
        rows.append(row)
    known = all(r["input_cost_usd"] is not None for r in rows)
    out = {
        "experiment_id": config.experiment_id,
        "token_count": "messages.count_tokens" if counter else "heuristic",
        "requests": sum(r["requests"] for r in rows),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "input_cost_usd": round(sum(r["input_cost_usd"] for r in rows), 6) if known else None,
        "max_cost_usd": round(sum(r["max_cost_usd"] for r in rows), 6) if known else None,
        "cells": rows,
    }
    if counter is not None:
        out["token_counts"] = tally
    if config.cache:
        out["reused"] = sum(r["reused"] for r in rows)
    return out


def _api_counts(
    config: Config,
    samples: list[Sample],
    counter: Counter,
    store: Store | None,
    tally: dict[str, int],
) -> list[int]:
    """Each sample's input tokens: the store's count for an input it has recorded, else
    one count_tokens call per distinct body up to max_counts(), else the heuristic."""
    keys = [body_key(config.model, config.tools, s) for s in samples]
    known = recorded_counts(store, config, set(keys)) if store is not None else {}
    todo = {k: s for k, s in zip(keys, samples, strict=True) if k not in known}
    asked = dict(list(todo.items())[: max_counts()])
    found = {**known, **dict(zip(asked, counter(config, list(asked.values())), strict=True))}
    rest = [s for k, s in todo.items() if k not in asked]
    found.update(
        zip(
            (body_key(config.model, config.tools, s) for s in rest),
            heuristic_tokens(config, rest),
            strict=True,
        )
    )
    tally["calls"] += len(asked)
    tally["from_store"] += len(known)
    tally["estimated"] += len(rest)
    return [found[k] for k in keys]


def recorded_counts(store: Store, config: Config, wanted: set[str]) -> dict[str, int]:
    """The input tokens earlier live runs of this model recorded for these inputs (by
    body_key): what the API counted then, cache reads and writes included. Tool runs are
    passed over (their answers record the last turn's input, not the first)."""
    found: dict[str, int] = {}
    for run_id in store.runs_of_model(config.model, "live"):
        if len(found) == len(wanted):
            break
        recorded = load_started(store, run_id).config
        if recorded.get("tools"):
            continue
        slots = {pos: event for pos, repeat, event in store.answered_slots(run_id) if not repeat}
        for position, sample in enumerate(iter_samples(store, run_id)):
            key = body_key(config.model, None, sample) if position in slots else None
            if key is None or key not in wanted or key in found:
                continue
            meta = getattr(store.event_at(slots[position]), "metadata", {})
            parts = [meta.get(k) for k in INPUT_PARTS]
            if isinstance(parts[0], int):
                found[key] = sum(p for p in parts if isinstance(p, int))
    return found


def p95_cost(
    config: Config, samples: list[Sample], store: Store | None
) -> tuple[float, str] | None:
    """The run's P95 cost, over its cells, and what the output lengths were taken from;
    None when a model has no price. Counted offline: it costs nothing to ask."""
    cells = dry_run(config, samples, None, store)["cells"]
    costs = [cell["p95_cost_usd"] for cell in cells]
    if any(cost is None for cost in costs):
        return None
    return sum(costs), cells[0]["output_from"]


def predicted_costs(
    config: Config, store: Store | None, usages: list[Usage], requests: int, bound: float | None
) -> dict[str, Any]:
    """The expected and P95 cost: each answer at the median and the 95th percentile of
    the output tokens of earlier live runs in the store with the same model, effort and
    thinking; with none, every answer at max_tokens (the bound), as max_cost_usd."""
    counts: list[float] = (
        [float(c) for c in earlier_outputs(store, config)] if store is not None else []
    )
    if not counts:
        return {"output_from": "max_tokens", "expected_cost_usd": bound, "p95_cost_usd": bound}
    out: dict[str, Any] = {
        "output_from": f"{len(counts)} earlier answers",
        "output_tokens_p50": int(percentile(counts, 50)),
        "output_tokens_p95": int(percentile(counts, 95)),
    }
    for name, q in (("expected_cost_usd", 50), ("p95_cost_usd", 95)):
        answers = Usage(output=round(percentile(counts, q) * requests), batch=config.batch)
        cost = cost_of(config.model, config.pricing, [*usages, answers])
        out[name] = round(cost.total, 6) if cost is not None else None
    return out


def earlier_outputs(store: Store, config: Config) -> list[int]:
    """Output tokens per answer, ascending, of the newest EARLIER_RUNS live runs of this
    model, effort and thinking."""
    same = []
    for run in store.runs():
        if run.mode != "live" or run.model != config.model:
            continue
        recorded = load_started(store, run.run_id).config
        if (recorded.get("effort"), recorded.get("thinking")) == (config.effort, config.thinking):
            same.append(run.run_id)
        if len(same) == EARLIER_RUNS:
            break
    return store.output_token_counts(same)


def input_usages(config: Config, sent: list[tuple[Sample, int]]) -> tuple[list[Usage], int]:
    """The input side of each request to be sent, by class, and how many cache writes
    there will be. With prompt_cache, the first request of each prefix group writes its
    prefix and the rest read it; without scheduling, up to `concurrency` of a group go
    out before any answer, and each of those writes."""
    settings = config.prompt_cache
    if settings is None:
        return [Usage(input=tokens, batch=config.batch) for _, tokens in sent], 0
    writers = 1 if settings["schedule"] else config.concurrency
    seen: dict[str | None, int] = {}
    usages = []
    for sample, tokens in sent:
        where = caching.plan(config, sample)
        cached = min(where.tokens, tokens)
        if where.prefix_sha256 is None or not cached:
            usages.append(Usage(input=tokens, batch=config.batch))
            continue
        group = seen[where.prefix_sha256] = seen.get(where.prefix_sha256, 0) + 1
        usage = Usage(input=tokens - cached, batch=config.batch)
        if group > writers:
            usages.append(replace(usage, cache_read=cached))
        elif settings["ttl"] == "1h":
            usages.append(replace(usage, cache_write_1h=cached))
        else:
            usages.append(replace(usage, cache_write_5m=cached))
    writes = sum(min(n, writers) for n in seen.values())
    return usages, writes


def _as_started(config: Config, mode: str, samples: list[Sample]) -> RunStarted:
    """The RunStarted a run of `config` would record: what the cache matches requests
    on (model, sent parameters, max_tokens, API version, mode). It is never written."""
    return RunStarted(
        "",
        config.experiment_id,
        mode,
        config.to_dict(),
        "",
        len(samples),
        config.sent_params(mode),
        __version__,
    )
