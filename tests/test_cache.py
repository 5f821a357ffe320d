"""Prompt caching: `prompt_cache:` in the config and as a matrix axis, the breakpoints on
the shared prefix (and in the record), the one warning for a prefix under the model's
minimum, and the fake API that caches as the real one does (tests/fake_cache.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import write_experiment
from exprof.clients.caching import plan
from exprof.config import load_config
from exprof.dataset import Sample

SONNET = "claude-sonnet-4-5"  # minimum cacheable prompt: 1,024 tokens
LONG = "You are a careful assistant. " * 200  # 5,800 characters: ~1,450 tokens
SHORT = "You are terse."


def dataset(n: int, systems: list[str], conversation: bool = False) -> list[dict]:
    samples = []
    for i in range(n):
        item = {
            "dialogue_id": f"d{i:04d}",
            "system": systems[i % len(systems)],
            "required_facts": [f"fact{i}"],
        }
        if conversation:
            item["messages"] = [
                {"role": "user", "content": "Here is a long document. " * 200},
                {"role": "assistant", "content": "I have read it."},
                {"role": "user", "content": f"what about fact{i}"},
            ]
        else:
            item["user"] = f"what about fact{i}"
        samples.append(item)
    return samples


def setup(tmp_path: Path, samples: list[dict], **config) -> Path:
    """A config on `samples` for Sonnet 4.5, with no temperature (today's API takes none)."""
    settings = {"model": SONNET, "max_tokens": 50, "concurrency": 1, **config}
    path = write_experiment(tmp_path / "e", samples, {}, **settings)
    written = json.loads(path.read_text())
    del written["temperature"]
    path.write_text(json.dumps(written))
    return path


def run(invoke, config: Path, *extra: str):
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return result, json.loads(result.stdout)


def bodies(server) -> list[dict]:
    return [seen["body"] for seen in server.state.seen]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the config --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", None),
        (False, None),
        ({}, {"ttl": "5m", "upto": "system", "schedule": True}),
        (
            {"ttl": "1h", "upto": "conversation", "schedule": False},
            {"ttl": "1h", "upto": "conversation", "schedule": False},
        ),
    ],
)
def test_prompt_cache_is_off_or_a_mapping(tmp_path, value, expected):
    config = setup(tmp_path, dataset(1, [LONG]), prompt_cache=value)
    assert load_config(config).prompt_cache == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ttl": "10m"}, "prompt_cache.ttl: must be one of 5m, 1h, got '10m'"),
        ({"upto": "everything"}, "prompt_cache.upto: must be one of system, tools, conversation"),
        ({"schedule": "yes"}, "prompt_cache.schedule: must be true or false"),
        ({"ttl": "5m", "size": 3}, "prompt_cache: unknown key 'size'"),
        ("always", "prompt_cache: must be off, or a mapping of ttl, upto, schedule"),
    ],
)
def test_a_bad_prompt_cache_is_one_error_naming_the_file_and_field(
    tmp_path, invoke, value, message
):
    config = setup(tmp_path, dataset(1, [LONG]), prompt_cache=value)
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {config}: ") and message in line


def test_breakpoints_close_the_system_and_the_earlier_turns(tmp_path):
    config = load_config(setup(tmp_path, dataset(1, [LONG]), prompt_cache={"upto": "conversation"}))
    sample = Sample.from_payload(dataset(1, [LONG], conversation=True)[0])
    where = plan(config, sample)
    assert where.breakpoints == ("system", "messages[1]") and not where.short
    single = Sample.from_payload(dataset(1, [LONG])[0])
    assert plan(config, single).breakpoints == ("system",)
    # Samples that share a system prompt share the prefix hash, whatever their turns.
    assert plan(config, single).prefix_sha256 == where.prefix_sha256


# -- against the fake --------------------------------------------------------------


def test_the_prefix_is_written_once_and_read_after(tmp_path, invoke, fake):
    server = fake()
    config = setup(tmp_path, dataset(10, [LONG]), prompt_cache={"ttl": "1h"})
    _, summary = run(invoke, config)
    sent = bodies(server)
    for body in sent:  # the breakpoint closes the system block, with its TTL
        assert body["system"] == [
            {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ]
    assert server.state.cache.writes == 1 and server.state.cache.reads == 9
    prefix = -(-len(LONG) // 4)
    assert summary["cache_write_tokens"] == prefix
    assert summary["cache_read_tokens"] == 9 * prefix
    assert summary["cache_hit_rate"] == 0.9
    assert summary["cost_by_class"]["cache_write_1h"] == pytest.approx(prefix * 6 / 1e6)
    assert summary["cost_by_class"]["cache_write_5m"] == 0
    assert summary["knobs"]["prompt_cache"] == "1h-system"
    # The record says where the breakpoints went and which prefix they close.
    requests = read_jsonl(tmp_path / "runs" / "exp" / "requests.jsonl")
    responses = read_jsonl(tmp_path / "runs" / "exp" / "responses.jsonl")
    hashes = {line["prefix_sha256"] for line in requests + responses}
    assert len(hashes) == 1 and None not in hashes
    assert all(line["cache_breakpoints"] == ["system"] for line in requests + responses)
    assert responses[0]["cache_write_1h_tokens"] == prefix
    assert responses[1]["cache_read_input_tokens"] == prefix
    # Every answer covers its fact: a correct answer costs the run's cost over ten.
    assert summary["cost_per_correct_usd"] == round(summary["estimated_cost_usd"] / 10, 6)
    page = tmp_path / "page.html"
    assert invoke("report", "exp", "--out", str(page)).exit_code == 0
    html = page.read_text()
    assert "cache hit rate" in html and "90.0%" in html and "cost per correct answer" in html
    assert "1h writes $" in html


def test_a_prefix_under_the_minimum_gets_one_warning_and_no_breakpoint(tmp_path, invoke, fake):
    server = fake()
    config = setup(tmp_path, dataset(6, [SHORT, LONG]), prompt_cache={})
    result, summary = run(invoke, config)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"warning: prompt_cache: 3 of 6 request(s) have a prefix under {SONNET}'s minimum "
        "cacheable length (1024 tokens, at 4 characters a token); they are sent without a "
        "breakpoint"
    ]
    short = [b for b in bodies(server) if "terse" in json.dumps(b["system"])]
    assert len(short) == 3 and all(b["system"] == SHORT for b in short)
    assert server.state.cache.writes == 1 and summary["cache_read_tokens"] > 0


def test_the_fake_never_caches_a_prefix_under_the_minimum(tmp_path):
    from fake_cache import PromptCache

    cache = PromptCache()
    body = {
        "system": [{"type": "text", "text": SHORT, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    for _ in range(3):
        found = cache.lookup(body, SONNET)
        cache.commit(found)
        assert found.read == 0 and found.write == 0
    assert cache.writes == 0


def test_concurrent_misses_each_write_without_scheduling(tmp_path, invoke, fake):
    server = fake(latency=0.2)
    config = setup(tmp_path, dataset(8, [LONG]), prompt_cache={"schedule": False}, concurrency=8)
    run(invoke, config)
    assert server.state.cache.writes == 8 and server.state.cache.reads == 0


def test_the_earlier_turns_are_cached_upto_conversation(tmp_path, invoke, fake):
    server = fake()
    config = setup(
        tmp_path, dataset(4, [SHORT], conversation=True), prompt_cache={"upto": "conversation"}
    )
    result, _ = run(invoke, config)
    body = bodies(server)[0]
    assert body["system"] == SHORT  # alone it is under the minimum: no breakpoint on it
    assert body["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    assert server.state.cache.writes == 1 and server.state.cache.reads == 3
    assert "warning" not in result.stderr


def test_prompt_cache_is_a_matrix_axis(tmp_path, invoke, fake):
    server = fake()
    config = setup(tmp_path, dataset(4, [LONG]), matrix={"prompt_cache": ["off", {"ttl": "5m"}]})
    result, found = run(invoke, config)
    assert [c["run_id"] for c in found["cells"]] == ["exp.cache-off", "exp.cache-5m-system"]
    marked = [b for b in bodies(server) if isinstance(b["system"], list)]
    assert len(marked) == 4 and server.state.cache.writes == 1
    off = json.loads(invoke("summarize", "exp.cache-off", "--format", "json").stdout)
    on = json.loads(invoke("summarize", "exp.cache-5m-system", "--format", "json").stdout)
    assert off["cache_hit_rate"] is None and on["cache_hit_rate"] == 0.75


# -- cache-aware scheduling --------------------------------------------------------


def systems(k: int) -> list[str]:
    return [f"Persona {j}. " + LONG for j in range(k)]


def test_scheduling_writes_each_prefix_once_while_other_groups_fill_the_slots(
    tmp_path, invoke, fake
):
    server = fake(latency=0.05)
    config = setup(tmp_path, dataset(40, systems(4)), prompt_cache={}, concurrency=8)
    _, summary = run(invoke, config)
    assert server.state.cache.writes == 4 and server.state.cache.reads == 36
    assert summary["cache_hit_rate"] == round(36 / 40, 4)
    # The four warm-ups went out together, and the fan-out filled every slot.
    assert [seen["in_flight"] for seen in server.state.seen[:4]] == [1, 2, 3, 4]
    assert server.state.peak_in_flight == 8


def test_without_scheduling_every_slot_that_misses_writes(tmp_path, invoke, fake):
    server = fake(latency=0.05)
    config = setup(
        tmp_path, dataset(40, systems(4)), prompt_cache={"schedule": False}, concurrency=8
    )
    run(invoke, config)
    assert server.state.cache.writes >= 8  # the first eight all missed


def test_a_group_is_warmed_again_after_the_ttl(tmp_path, invoke, fake, monkeypatch):
    monkeypatch.setenv("EXPROF_CACHE_TTL_S", "0.3")
    server = fake(latency=0.05)
    server.state.cache.ttl_s = {"5m": 0.3, "1h": 0.3}
    config = setup(tmp_path, dataset(16, [LONG]), prompt_cache={}, concurrency=8)
    run(invoke, config)
    assert server.state.cache.writes == 1
    time.sleep(0.5)  # a pause longer than the TTL: the next run warms the prefix again
    run(invoke, config, "--run-id", "again")
    assert server.state.cache.writes == 2 and server.state.cache.reads == 30


def test_a_bad_ttl_override_is_one_error(tmp_path, invoke, fake, monkeypatch):
    fake()
    monkeypatch.setenv("EXPROF_CACHE_TTL_S", "soon")
    config = setup(tmp_path, dataset(2, [LONG]), prompt_cache={})
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: EXPROF_CACHE_TTL_S: must be a positive number of seconds, got 'soon'"
    ]


# -- the dry run -------------------------------------------------------------------


def test_the_dry_run_prices_each_group_as_one_write_and_reads(tmp_path, invoke):
    config = setup(tmp_path, dataset(40, systems(4)), prompt_cache={})
    result = invoke("run", "--config", str(config), "--dry-run", "--mock", "--format", "json")
    assert result.exit_code == 0, result.output
    (cell,) = json.loads(result.stdout)["cells"]
    assert cell["cache_writes"] == 4
    rates = {"input": 3, "cache_write_5m": 3.75, "cache_read": 0.3}
    expected = 0.0
    for i, item in enumerate(dataset(40, systems(4))):
        total = -(-len(f"{item['system']}\n\n{item['user']}") // 4) + 8
        prefix = -(-len(item["system"]) // 4)
        kind = "cache_write_5m" if i < 4 else "cache_read"
        expected += (prefix * rates[kind] + (total - prefix) * rates["input"]) / 1e6
    assert cell["input_cost_usd"] == pytest.approx(expected, abs=1e-6)
    naive = setup(
        tmp_path, dataset(40, systems(4)), prompt_cache={"schedule": False}, concurrency=8
    )
    result = invoke("run", "--config", str(naive), "--dry-run", "--mock", "--format", "json")
    assert json.loads(result.stdout)["cells"][0]["cache_writes"] == 32  # 8 slots x 4 prefixes


def test_the_dry_runs_input_cost_is_within_10_percent_of_the_runs(tmp_path, invoke, fake):
    fake(latency=0.02)
    config = setup(tmp_path, dataset(40, systems(4)), prompt_cache={}, concurrency=8)
    result = invoke("run", "--config", str(config), "--dry-run", "--mock", "--format", "json")
    estimate = json.loads(result.stdout)["input_cost_usd"]
    _, summary = run(invoke, config)
    spent = summary["cost_by_class"]
    actual = sum(v for k, v in spent.items() if k != "output")
    assert abs(estimate - actual) <= 0.1 * actual, (estimate, actual)


def test_a_failed_warm_up_hands_the_role_to_the_groups_next_sample():
    import asyncio

    from exprof.run.warmup import Scheduler

    samples = [Sample(f"d{i}", LONG, f"q{i}") for i in range(5)]

    async def scenario() -> list[str]:
        halt = asyncio.Event()
        scheduler = Scheduler(samples, lambda s: f"fail-test-{id(samples)}", 60.0, 4)
        order = []
        first = await scheduler.next(halt)
        order.append(first.dialogue_id)
        waiting = asyncio.ensure_future(scheduler.next(halt))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # the rest of the group waits on the warm-up
        scheduler.answered(first, ok=False)
        second = await waiting
        order.append(second.dialogue_id)
        assert scheduler.warmups == 2
        scheduler.answered(second, ok=True)
        while (found := await scheduler.next(halt)) is not None:
            order.append(found.dialogue_id)
        return order

    assert asyncio.run(scenario()) == ["d0", "d1", "d2", "d3", "d4"]


def test_cached_and_uncached_runs_compare_cost_beside_quality(tmp_path, invoke, fake):
    fake(latency=0.01, count_prefix=True)  # the plain run's system prompts are input too
    config = setup(tmp_path, dataset(12, systems(2)), concurrency=4)
    run(invoke, config, "--run-id", "plain")
    cached = setup(tmp_path, dataset(12, systems(2)), prompt_cache={}, concurrency=4)
    run(invoke, cached, "--run-id", "cached")
    found = json.loads(invoke("compare", "plain", "cached", "--format", "json").stdout)
    metrics = found["metrics"]
    assert metrics["fact_coverage"]["delta"] == 0
    cost = metrics["estimated_cost_usd"]
    assert cost["b"] < cost["a"] and cost["delta"] == round(cost["b"] - cost["a"], 6)
    assert metrics["cost_per_correct_usd"]["delta"] < 0
    assert found["config_diff"]["fields"]["prompt_cache"]["b"]["ttl"] == "5m"


def test_the_dry_run_learns_output_lengths_from_earlier_runs(tmp_path, invoke, fake):
    """With caching on and an earlier run in the store, the expected cost is within 10%
    of what the run then costs; with none, answers are bounded at max_tokens."""
    fake(latency=0.01)
    config = setup(tmp_path, dataset(40, systems(4)), prompt_cache={}, concurrency=8)
    dry = ("run", "--config", str(config), "--dry-run", "--mock", "--format", "json")
    before = json.loads(invoke(*dry).stdout)["cells"][0]
    assert before["output_from"] == "max_tokens"
    assert before["expected_cost_usd"] == before["max_cost_usd"]
    run(invoke, config, "--run-id", "first")
    after = json.loads(invoke(*dry).stdout)["cells"][0]
    assert after["output_from"] == "40 earlier answers"
    assert after["output_tokens_p50"] <= after["output_tokens_p95"] < 50
    fake(latency=0.01)  # a cold cache, as the dry run assumes
    _, summary = run(invoke, config, "--run-id", "second")
    actual = summary["estimated_cost_usd"]
    assert abs(after["expected_cost_usd"] - actual) <= 0.1 * actual, (after, actual)
    assert after["p95_cost_usd"] >= after["expected_cost_usd"]


def test_batch_requests_carry_the_same_breakpoints(tmp_path):
    from exprof.clients.batch import batch_params

    config = load_config(setup(tmp_path, dataset(1, [LONG]), prompt_cache={"ttl": "1h"}))
    params = batch_params(config, Sample.from_payload(dataset(1, [LONG])[0]))
    assert params["system"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


TOOLS = [
    {
        "name": "lookup",
        "description": "Look a term up in the reference. " * 200,  # ~1,650 tokens
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
]


def test_the_tool_definitions_are_the_front_of_the_cached_prefix(tmp_path, invoke, fake):
    """With tools, the prefix starts with their definitions (the
    API reads them first). `upto: tools` puts the one breakpoint on the last tool, so
    samples with different system prompts share it; `upto: system` closes both."""
    samples = dataset(8, [SHORT + " one", SHORT + " two"])
    server = fake()
    config = setup(tmp_path, samples, tools=TOOLS, prompt_cache={"upto": "tools"})
    _, summary = run(invoke, config)
    for body in bodies(server):
        assert body["tools"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
        assert isinstance(body["system"], str)  # no breakpoint of its own
    assert server.state.cache.writes == 1 and server.state.cache.reads == 7
    assert summary["cache_hit_rate"] == 0.875
    loaded = load_config(config)
    both = load_config(setup(tmp_path / "b", samples, tools=TOOLS, prompt_cache={}))
    one, two = (Sample.from_payload(s) for s in samples[:2])
    assert plan(loaded, one).prefix_sha256 == plan(loaded, two).prefix_sha256
    assert plan(both, one).breakpoints == ("tools", "system")
    assert plan(both, one).prefix_sha256 == plan(loaded, one).prefix_sha256  # tools first
