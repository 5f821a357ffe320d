"""The cost ledger (exprof.pricing.price_usage): every token class at its own rate, each
TTL, the batch discount on every class, fast-mode rates where prices.json has them, the
config's `pricing:` overrides; and the summary, `runs` and the budget reading it."""

from __future__ import annotations

import json

import pytest

from conftest import make_samples, write_experiment
from exprof.pricing import CLASSES, Rates, Usage, price_usage, rates_for

M = 1e6
SONNET = {"input": 3, "cache_write_5m": 3.75, "cache_write_1h": 6, "cache_read": 0.3, "output": 15}
OPUS_FAST = {
    "input": 30,
    "cache_write_5m": 37.5,
    "cache_write_1h": 60,
    "cache_read": 3,
    "output": 150,
}
PRIORITY = {"input": 4, "cache_write_5m": 5, "cache_write_1h": 8, "cache_read": 0.4, "output": 20}


def by_hand(rates: dict[str, float], tokens: dict[str, int], discount: float = 1.0) -> dict:
    return {c: tokens.get(c, 0) * rates[c] / M * discount for c in CLASSES}


ALL = {
    "input": 120,
    "cache_write_5m": 3000,
    "cache_write_1h": 1500,
    "cache_read": 9000,
    "output": 480,
}
# (model, usage, the rates it must be priced at, the discount)
SHAPES = [
    ("claude-sonnet-4-5", Usage(input=1234), SONNET, 1.0),
    ("claude-sonnet-4-5", Usage(output=777), SONNET, 1.0),  # thinking is in output
    ("claude-sonnet-4-5", Usage(cache_write_5m=3000), SONNET, 1.0),
    ("claude-sonnet-4-5", Usage(cache_write_1h=3000), SONNET, 1.0),
    ("claude-sonnet-4-5", Usage(cache_read=3000), SONNET, 1.0),
    ("claude-sonnet-4-5", Usage(**ALL), SONNET, 1.0),
    ("claude-sonnet-4-5", Usage(**ALL, batch=True), SONNET, 0.5),
    ("claude-sonnet-4-5", Usage(cache_write_5m=2048, output=9, batch=True), SONNET, 0.5),
    ("claude-sonnet-4-5", Usage(cache_write_1h=4096, cache_read=1, batch=True), SONNET, 0.5),
    ("claude-sonnet-4-5", Usage(**ALL, service_tier="batch"), SONNET, 0.5),
    ("claude-sonnet-4-5", Usage(**ALL, service_tier="standard", speed="standard"), SONNET, 1.0),
    # No fast rate for Sonnet 4.5 on the page: the list rates.
    ("claude-sonnet-4-5", Usage(**ALL, speed="fast"), SONNET, 1.0),
    ("claude-opus-4-6", Usage(**ALL, speed="fast"), OPUS_FAST, 1.0),
    ("claude-opus-4-6", Usage(**ALL, speed="fast", batch=True), OPUS_FAST, 0.5),
    ("claude-opus-4-6-20260101", Usage(cache_read=5, output=5, speed="fast"), OPUS_FAST, 1.0),
]


@pytest.mark.parametrize(("model", "usage", "rates", "discount"), SHAPES)
def test_ledger_prices_each_class_as_by_hand(model, usage, rates, discount):
    cost = price_usage(rates_for(model, {}), usage)
    expected = by_hand(rates, usage.tokens(), discount)
    assert cost.by_class == pytest.approx(expected, abs=1e-9, rel=0)
    assert cost.total == pytest.approx(sum(expected.values()), abs=1e-9, rel=0)
    cached = usage.cache_write_5m + usage.cache_write_1h + usage.cache_read
    plain = cached * rates["input"] / M * discount
    saving = (
        plain - expected["cache_write_5m"] - expected["cache_write_1h"] - expected["cache_read"]
    )
    assert cost.cache_saving == pytest.approx(saving, abs=1e-9, rel=0)


def test_a_service_tier_with_rates_of_its_own_is_priced_at_them():
    rates = Rates(SONNET, {"service_tier": {"priority": PRIORITY}})
    usage = Usage(**ALL, service_tier="priority")
    assert price_usage(rates, usage).by_class == pytest.approx(
        by_hand(PRIORITY, ALL), abs=1e-9, rel=0
    )
    standard = Usage(**ALL, service_tier="standard")
    assert price_usage(rates, standard).by_class == pytest.approx(
        by_hand(SONNET, ALL), abs=1e-9, rel=0
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # input alone: the cache classes follow it (1.25x, 2x, 0.1x), output stays listed
        (
            {"input": 4},
            {"input": 4, "cache_write_5m": 5, "cache_write_1h": 8, "cache_read": 0.4, "output": 15},
        ),
        ({"cache_read": 0.25}, {**SONNET, "cache_read": 0.25}),
        ({"output": 10, "cache_write_1h": 7}, {**SONNET, "output": 10, "cache_write_1h": 7}),
    ],
)
def test_pricing_overrides_any_subset_of_classes(overrides, expected):
    rates = rates_for("claude-sonnet-4-5", {"claude-sonnet-4-5": overrides})
    assert rates.per_class == pytest.approx(expected, abs=1e-12, rel=0)
    cost = price_usage(rates, Usage(**ALL))
    assert cost.total == pytest.approx(sum(by_hand(expected, ALL).values()), abs=1e-9, rel=0)


def test_a_model_not_in_the_table_is_priced_by_its_override_or_not_at_all():
    rates = rates_for("mine", {"mine": {"input": 2, "output": 8}})
    assert rates.per_class == {
        "input": 2.0,
        "output": 8.0,
        "cache_write_5m": 2.5,
        "cache_write_1h": 4.0,
        "cache_read": pytest.approx(0.2),
    }
    assert rates_for("mine", {}) is None


@pytest.mark.parametrize(
    ("pricing", "message"),
    [
        (
            {"claude-sonnet-4-5": {"cache_write": 1}},
            "pricing.claude-sonnet-4-5: unknown price class 'cache_write'; the classes are "
            "input, cache_write_5m, cache_write_1h, cache_read, output",
        ),
        (
            {"mine": {"input": 1}},
            "pricing.mine: not in exprof's price table, so both input and output are needed",
        ),
        ({"claude-sonnet-4-5": {"cache_read": -1}}, "pricing.claude-sonnet-4-5.cache_read:"),
    ],
)
def test_bad_pricing_is_one_error_naming_the_field(tmp_path, invoke, pricing, message):
    samples, mocks = make_samples(2)
    config = write_experiment(tmp_path / "e", samples, mocks, pricing=pricing)
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and str(config) in line and message in line


def with_cache_usage(payload: dict, headers: dict) -> tuple[dict, dict]:
    """The fake's answer, reporting cache writes at both TTLs and a cache read."""
    payload["usage"].update(
        cache_creation_input_tokens=1500,
        cache_read_input_tokens=6000,
        cache_creation={"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
    )
    return payload, headers


def test_summary_and_runs_price_every_class_from_the_recorded_usage(tmp_path, invoke, fake):
    fake(mangle=with_cache_usage)
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path / "e", samples, mocks, model="claude-sonnet-4-5")
    result = invoke("run", "--config", str(config), "--live", "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    tokens = {
        "input": summary["input_tokens"],
        "cache_write_5m": 3 * 1000,
        "cache_write_1h": 3 * 500,
        "cache_read": 3 * 6000,
        "output": summary["output_tokens"],
    }
    expected = by_hand(SONNET, tokens)
    assert summary["cost_by_class"] == pytest.approx(expected, abs=1e-6, rel=0)
    assert summary["estimated_cost_usd"] == round(sum(expected.values()), 6)
    assert summary["cache_write_tokens"] == 4500 and summary["cache_read_tokens"] == 18000
    assert summary["cache_hit_rate"] == round(18000 / 22500, 4)
    uncached = 22500 * 3 / M
    paid = expected["cache_write_5m"] + expected["cache_write_1h"] + expected["cache_read"]
    assert summary["cache_saving_usd"] == pytest.approx(uncached - paid, abs=1e-6, rel=0)
    runs = json.loads(invoke("runs", "--format", "json").stdout)
    assert runs[0]["cost_usd"] == summary["estimated_cost_usd"]


def test_the_budget_counts_cache_writes_as_they_land(tmp_path, invoke, fake):
    """Each answer costs ~$0.0086 in cache classes and ~$0.0003 in input and output: a
    $0.02 budget stops the run after a few answers, where input and output alone
    would let all 20 through."""
    fake(mangle=with_cache_usage)
    samples, mocks = make_samples(20)
    config = write_experiment(
        tmp_path / "e", samples, mocks, model="claude-sonnet-4-5", budget_usd=0.02, concurrency=1
    )
    result = invoke(
        "run", "--config", str(config), "--yes", "--live", "--quiet", "--format", "json"
    )
    summary = json.loads(result.stdout)
    # The store is read at most every 50 ms far from the limit (exprof.run.budget), so a
    # fast server lands a few answers past it; never the whole run.
    assert 2 <= summary["samples_completed"] <= 10, summary["samples_completed"]
