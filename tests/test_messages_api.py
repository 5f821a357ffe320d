"""Today's Messages API: conversations, the knobs (effort, thinking, ...), the model
check before anything is sent, the record of everything an answer says, and the
outcomes that are not wrong answers (refusal and cut-off stop reasons).

Live tests use the real SDK against the fake API (tests/fake_anthropic.py, whose
catalogue and rules are tests/fake_models.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import write_experiment
from exprof.clients.mock import MockClient
from exprof.config import load_config
from exprof.dataset import Sample

OPUS, SONNET = "claude-opus-5", "claude-sonnet-5"


def conversations(n: int, prefill: bool = False) -> tuple[list[dict], dict]:
    """n two-turn conversations whose last user turn names the facts (the fake echoes it)."""
    samples, mocks = [], {}
    for i in range(n):
        facts = [f"fact{i}-a", f"fact{i}-b"]
        turns = [
            {"role": "user", "content": f"hello {i}"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi, how can I help?"}]},
            {"role": "user", "content": f"tell me about {' '.join(facts)}"},
        ]
        if prefill:
            turns.append({"role": "assistant", "content": "Sure:"})
        did = f"c{i:03d}"
        samples.append(
            {"dialogue_id": did, "system": "sys", "messages": turns, "required_facts": facts}
        )
        mocks[did] = {"completion": f"about {facts[0]}", "metadata": {"token_count": 5}}
    return samples, mocks


def setup(tmp_path: Path, n: int = 4, prefill: bool = False, **config) -> Path:
    samples, mocks = conversations(n, prefill)
    config.setdefault("model", SONNET)
    return write_experiment(tmp_path / "e", samples, mocks, **config)


def run_json(invoke, config: Path, *extra: str):
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json", *extra)
    return result, (json.loads(result.stdout) if result.stdout.strip().startswith("{") else None)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def messages_requests(server) -> list[dict]:
    return [seen["body"] for seen in server.state.seen]


# -- conversations -------------------------------------------------------------------


def test_a_conversation_is_sent_whole_and_exported_as_messages(tmp_path, invoke, fake):
    server = fake()
    config = setup(tmp_path, 3, thinking="disabled")
    result, summary = run_json(invoke, config)
    assert result.exit_code == 0, result.output
    bodies = messages_requests(server)
    assert len(bodies) == 3
    assert all(len(b["messages"]) == 3 and b["messages"][-1]["role"] == "user" for b in bodies)
    assert bodies[0]["messages"][1]["content"] == [{"type": "text", "text": "Hi, how can I help?"}]
    assert summary["fact_coverage"] == 1.0  # the fake answered the last user turn
    prompt = read_jsonl(tmp_path / "runs" / "exp" / "requests.jsonl")[0]["prompt"]
    assert set(prompt) == {"system", "messages"} and len(prompt["messages"]) == 3


def test_custom_metrics_and_the_judge_see_the_whole_conversation(tmp_path, invoke):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "turns.py").write_text(
        "def turns(sample, completion, metadata):\n    return len(sample['messages'])\n"
    )
    config = setup(
        tmp_path,
        2,
        model="claude-3-opus",
        metrics=["fact_coverage", {"name": "turns", "type": "python", "function": "turns:turns"}],
    )
    result, summary = run_json(invoke, config, "--mock")
    assert result.exit_code == 0, result.output
    assert summary["metrics"]["turns"] == 3
    sample = Sample.from_payload(conversations(1)[0][0])
    text = sample.transcript()
    assert "User: hello 0" in text and "Assistant: Hi, how can I help?" in text
    assert text.endswith("User: tell me about fact0-a fact0-b")


@pytest.mark.parametrize(
    ("turns", "fragment"),
    [
        ([{"role": "system", "content": "x"}], "messages[0].role: must be user or assistant"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "messages[1].role: two user turns",
        ),
        ([{"role": "assistant", "content": "a"}], "messages[0].role: the first turn"),
        ([{"role": "user", "content": "  "}], "messages[0].content: is empty"),
        ([{"role": "user", "content": []}], "messages[0].content: must be a string or"),
        ([{"role": "user", "content": [{"type": "image"}]}], "messages[0].content[0]: must be"),
        ([], "messages must be a non-empty list"),
        ([{"role": "user"}], "messages[0]: must be an object with exactly role and content"),
    ],
)
def test_a_malformed_conversation_is_one_error_and_nothing_written(
    tmp_path, invoke, turns, fragment
):
    samples, mocks = conversations(2)
    samples[1]["messages"] = turns
    config = write_experiment(tmp_path / "e", samples, mocks)
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "dialogues.json: index 1 (c001)" in lines[0] and fragment in lines[0]
    assert not (tmp_path / "runs").exists()


# -- knobs and cells ------------------------------------------------------------------


def test_every_knob_is_a_config_key_in_the_form_the_api_takes(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "answer.json").write_text('{"type": "object", "required": ["answer"]}')
    config = load_config(
        setup(
            tmp_path,
            effort="high",
            thinking={"budget_tokens": 2048},
            stop_sequences=["END"],
            output_schema="answer.json",
            service_tier="standard_only",
            speed="fast",
            top_k=5,
        )
    )
    assert config.wire_knobs() == {
        "output_config": {
            "effort": "high",
            "format": {
                "type": "json_schema",
                "schema": {"type": "object", "required": ["answer"]},
            },
        },
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "stop_sequences": ["END"],
        "service_tier": "standard_only",
        "speed": "fast",
    }  # sampling (temperature, top_k) only under an API version that takes it
    assert config.temperature == 0.5 and config.top_k == 5
    assert [m["name"] for m in config.metrics if isinstance(m, dict)] == ["schema_valid"]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("effort", "extreme", "effort: must be one of low, medium, high, xhigh, max"),
        ("thinking", "enabled", "thinking: must be one of adaptive, disabled, between_tools"),
        ("thinking", {"budget_tokens": 100}, "thinking.budget_tokens: must be an integer >= 1024"),
        ("stop_sequences", "END", "stop_sequences: must be a list"),
        ("service_tier", "priority", "service_tier: must be one of auto, standard_only"),
        ("speed", "warp", "speed: must be one of standard, fast"),
        ("top_p", 2, "top_p: must be a number in [0, 1]"),
    ],
)
def test_a_bad_knob_is_one_error_naming_the_key(tmp_path, invoke, key, value, fragment):
    config = setup(tmp_path, **{key: value})
    result = invoke("run", "--config", str(config), "--quiet", "--mock")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("Error: ") and fragment in result.stderr


def test_a_config_without_temperature_records_null_and_does_not_warn(tmp_path, invoke, fake):
    fake()
    samples, mocks = conversations(2)
    path = write_experiment(tmp_path / "e", samples, mocks, model=SONNET)
    data = json.loads(path.read_text())
    del data["temperature"]
    path.write_text(json.dumps(data))
    result, summary = run_json(invoke, path)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    assert summary["temperature"] is None
    first = read_jsonl(tmp_path / "runs" / "exp" / "requests.jsonl")[0]
    assert "temperature" in first and first["temperature"] is None


def test_cell_names_say_which_knobs_they_vary(tmp_path, invoke):
    config = setup(
        tmp_path,
        model="claude-3-opus",
        max_tokens=8000,
        matrix={
            "model": ["claude-sonnet-4-6"],
            "effort": ["high"],
            "thinking": ["adaptive", {"budget_tokens": 4096}],
        },
    )
    result = invoke("run", "--config", str(config), "--quiet", "--mock", "--format", "json")
    assert result.exit_code == 0, result.output
    runs = [c["run_id"] for c in json.loads(result.stdout)["cells"]]
    assert runs == [
        "exp.model-claude-sonnet-4-6.effort-high.think-adaptive",
        "exp.model-claude-sonnet-4-6.effort-high.think-budget-4096",
    ]


# -- the acceptance matrix against the fake ------------------------------------------


@pytest.mark.slow
def test_a_model_by_effort_by_thinking_matrix_sends_each_cell_exactly_its_knobs(
    tmp_path, invoke, fake
):
    server = fake()
    efforts, thinking = ["low", "medium", "high"], ["adaptive", "disabled"]
    config = setup(
        tmp_path,
        50,
        max_tokens=400,
        concurrency=8,
        matrix={"model": [OPUS, SONNET], "effort": efforts, "thinking": thinking},
    )
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json", "--yes")
    assert result.exit_code == 0, result.output
    bodies = messages_requests(server)
    assert len(bodies) == 12 * 50  # exactly, as the server saw them
    assert server.state.model_reads == 2  # each model's entry read once, before sending
    seen: dict[tuple, int] = {}
    for body in bodies:
        knobs = (body["model"], body["output_config"]["effort"], body["thinking"]["type"])
        assert set(body) == {
            "model",
            "max_tokens",
            "messages",
            "system",
            "output_config",
            "thinking",
        }
        assert body["output_config"] == {"effort": knobs[1]}
        seen[knobs] = seen.get(knobs, 0) + 1
    assert seen == {(m, e, t): 50 for m in (OPUS, SONNET) for e in efforts for t in thinking}
    cells = json.loads(result.stdout)["cells"]
    assert len(cells) == 12
    for cell in cells:
        summary = json.loads(invoke("summarize", cell["run_id"], "--format", "json").stdout)
        thinks = cell["run_id"].endswith("think-adaptive")
        assert (summary["thinking_tokens"] > 0) == thinks, cell["run_id"]
        assert summary["knobs"]["effort"] in efforts
        assert summary["sent_params"]["thinking"]["type"] in thinking
        assert summary["estimated_cost_usd"] > 0
        assert summary["cut_off_rate"] == 0.0  # max_tokens left room: none was cut off
    # thinking tokens grow with effort, and are priced as output
    low = json.loads(
        invoke(
            "summarize", f"exp.model-{OPUS}.effort-low.think-adaptive", "--format", "json"
        ).stdout
    )
    high = json.loads(
        invoke(
            "summarize", f"exp.model-{OPUS}.effort-high.think-adaptive", "--format", "json"
        ).stdout
    )
    assert high["thinking_tokens"] > low["thinking_tokens"]
    assert high["estimated_cost_usd"] > low["estimated_cost_usd"]


# -- checked before anything is sent -------------------------------------------------


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            {"model": "claude-haiku-5-5", "effort": "max"},
            "effort: claude-haiku-5-5 does not take effort 'max'; it takes low, medium, high",
        ),
        (
            {"model": OPUS, "thinking": {"budget_tokens": 2048}, "max_tokens": 4000},
            "thinking: claude-opus-5 does not take thinking {budget_tokens: N}",
        ),
        (
            {"model": "claude-fable-5-1", "thinking": "disabled"},
            "thinking: claude-fable-5-1 does not take thinking 'disabled'",
        ),
        (
            {"model": "claude-haiku-4-5", "effort": "low"},
            "effort: claude-haiku-4-5 does not take effort",
        ),
        (
            {"model": OPUS, "max_tokens": 200_000},
            "max_tokens: 200000 is above claude-opus-5's maximum of 128000",
        ),
        ({"model": "claude-nonesuch"}, "model: 'claude-nonesuch' is not a model the API knows"),
        ({"model": "claude-gone"}, "model: 'claude-gone' is retired"),
        (
            {"matrix": {"model": [OPUS, "claude-haiku-5-5"], "effort": ["high", "max"]}},
            "[model-claude-haiku-5-5.effort-max] effort: claude-haiku-5-5 does not take effort 'max'",
        ),
    ],
)
def test_a_knob_the_model_does_not_take_is_refused_before_anything_is_sent(
    tmp_path, invoke, fake, config, fragment
):
    server = fake(unknown_models={"claude-nonesuch"}, retired_models={"claude-gone"})
    (tmp_path / "runs").mkdir()
    db = tmp_path / "runs" / "exprof.db"
    sqlite3.connect(db).execute("CREATE TABLE untouched (x)").connection.commit()
    before = db.read_bytes()
    path = setup(tmp_path, **config)
    result = invoke("run", "--config", str(path), "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert str(path) in lines[0] and fragment in lines[0]
    assert server.state.requests == 0  # nothing to /v1/messages
    assert db.read_bytes() == before


def test_a_deprecated_model_gets_one_warning_with_its_retirement_and_the_entry_is_recorded(
    tmp_path, invoke, fake
):
    fake()
    result, summary = run_json(invoke, setup(tmp_path, 2, model="claude-opus-4-1"))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("deprecated and retires at 2027-01-05") == 1
    from exprof.store.engine import Store, store_url
    from exprof.store.record import load_started

    started = load_started(Store.open(store_url(None, str(tmp_path / "runs"))), "exp")
    assert started.model_info["lifecycle"] == "deprecated"
    assert started.model_info["capabilities"]["thinking"]["types"]["enabled"] == {"supported": True}


def test_a_prefill_the_model_does_not_take_stops_the_run_at_its_first_400(tmp_path, invoke, fake):
    server = fake()
    path = setup(tmp_path, 40, prefill=True, model=OPUS, concurrency=2)
    result = invoke("run", "--config", str(path), "--quiet")
    assert result.exit_code == 2, result.output
    assert "takes no prefill" in result.stderr and "end every conversation" in result.stderr
    assert server.state.requests <= 2  # at most the requests in flight


def test_a_mock_run_checks_against_the_shipped_table_and_only_warns_for_unknown(tmp_path, invoke):
    bad = invoke(
        "run",
        "--config",
        str(setup(tmp_path, 2, model="claude-haiku-5-5", effort="max")),
        "--mock",
        "--quiet",
    )
    assert bad.exit_code == 2 and "does not take effort 'max'" in bad.stderr
    other = tmp_path / "o"
    ok = invoke(
        "run",
        "--config",
        str(setup(other, 2, model="claude-local-x", effort="max")),
        "--mock",
        "--quiet",
        "--output-dir",
        str(other / "runs"),
    )
    assert ok.exit_code == 0, ok.output
    assert "not in exprof's capability table" in ok.stderr


# -- what the answer says, and outcomes that are not wrong answers ---------------------


def test_thinking_blocks_usage_classes_and_stop_reasons_are_recorded(tmp_path, invoke, fake):
    fake()
    result, _ = run_json(invoke, setup(tmp_path, 2, model=OPUS, effort="medium", speed="fast"))
    assert result.exit_code == 0, result.output
    row = read_jsonl(tmp_path / "runs" / "exp" / "responses.jsonl")[0]
    assert row["content"][0] == {"type": "thinking", "thinking": "Let me think."}
    assert "think" not in row["completion"]  # thinking goes to the record, not the answer
    assert row["thinking_tokens"] == 48 and row["output_tokens"] > 48
    assert row["stop_reason"] == "end_turn"
    assert row["cache_read_input_tokens"] == 0 and row["service_tier"] == "standard"
    assert row["speed"] == "fast"


def test_the_seed_shape_gets_none_of_the_new_fields(tmp_path, invoke, fake):
    fake()
    result, summary = run_json(invoke, setup(tmp_path, 2, model="claude-3-opus"))
    assert result.exit_code == 0, result.output
    row = read_jsonl(tmp_path / "runs" / "exp" / "responses.jsonl")[0]
    assert not {"content", "thinking_tokens", "service_tier", "stop_details"} & set(row)
    assert not {"thinking_tokens", "cut_off_rate", "refusal_by_category", "knobs"} & set(summary)


def test_a_refusal_stop_reason_is_a_refusal_whatever_the_text_says(tmp_path, invoke, fake):
    def sure(payload, headers):  # the answer reads like help; the stop reason says refusal
        if payload["stop_reason"] == "refusal":
            payload["content"] = [{"type": "text", "text": "Sure, here you go."}]
        return payload, headers

    fake(mangle=sure)
    samples, mocks = conversations(4)
    samples[0]["messages"][-1]["content"] = "REFUSE this CYBER thing"
    samples[1]["messages"][-1]["content"] = "REFUSE this too"
    path = write_experiment(tmp_path / "e", samples, mocks, model=SONNET, max_tokens=1000)
    result, summary = run_json(invoke, path)
    assert result.exit_code == 0, result.output
    assert summary["refusal_rate"] == 0.5
    assert summary["refusal_by_category"] == {"cyber": 1, "uncategorized": 1}


def test_cut_off_answers_are_kept_apart_with_bounds_and_compare_lists_them(tmp_path, invoke, fake):
    fake()
    samples, mocks = conversations(10)
    for i, s in enumerate(samples):  # half the answers are long
        if i % 2:
            s["messages"][-1]["content"] += " " + " ".join(["padding"] * 30)
    tight = write_experiment(
        tmp_path / "t", samples, mocks, model=SONNET, max_tokens=20, thinking="disabled"
    )
    roomy = write_experiment(
        tmp_path / "r", samples, mocks, model=SONNET, max_tokens=400, thinking="disabled"
    )
    result, a = run_json(invoke, tight, "--run-id", "tight")
    assert result.exit_code == 0, result.output
    result, b = run_json(invoke, roomy, "--run-id", "roomy")
    assert a["cut_off_rate"] == 0.5 and b["cut_off_rate"] == 0.0
    assert a["fact_coverage_complete"] == 1.0
    low, high = a["fact_coverage_bounds"]
    assert low == 0.5 and high == 1.0  # cut-offs scored 0, then 1
    compared = json.loads(invoke("compare", "tight", "roomy", "--format", "json").stdout)
    assert compared["cut_off_pairs"] == [
        {"dialogue_id": f"c{i:03d}", "cut_off": "a"} for i in range(1, 10, 2)
    ]


# -- the mock learns it too ----------------------------------------------------------


def test_the_mock_thinks_by_effort_refuses_by_stop_reason_and_cuts_off_at_max_tokens():
    answers = {
        "a": {"completion": "one two three four five", "metadata": {"token_count": 5}},
        "r": {"completion": "no", "metadata": {"token_count": 1, "type": "refusal"}},
    }
    sample = Sample("a", "", "q")
    plain = MockClient(answers, 100).complete(sample)
    assert plain.metadata == {"token_count": 5}  # no knob: verbatim, as the seed is
    low = MockClient(answers, 10_000, {"effort": "low"}).complete(sample).metadata
    high = MockClient(answers, 10_000, {"effort": "high"}).complete(sample).metadata
    assert 0 < low["thinking_tokens"] < high["thinking_tokens"]
    assert high["output_tokens"] == high["thinking_tokens"] + 5
    assert (
        MockClient(answers, 10_000, {"thinking": {"type": "disabled"}})
        .complete(sample)
        .metadata.get("thinking_tokens")
        is None
    )
    cut = MockClient(answers, 3).complete(sample)
    assert cut.completion == "one two three" and cut.metadata["stop_reason"] == "max_tokens"
    refused = MockClient(answers, 100, {"effort": "low"}).complete(Sample("r", "", "q"))
    assert refused.metadata["stop_reason"] == "refusal"


def test_the_mock_reports_cut_offs_and_thinking_in_the_summary(tmp_path, invoke):
    samples, mocks = conversations(4)
    mocks["c000"]["metadata"]["token_count"] = 500
    path = write_experiment(
        tmp_path / "e", samples, mocks, model=SONNET, max_tokens=100, effort="low"
    )
    result, summary = run_json(invoke, path, "--mock")
    assert result.exit_code == 0, result.output
    assert summary["cut_off_rate"] == 0.25 and summary["thinking_tokens"] > 0
    assert summary["sent_params"] == {"effort": "low"}


# -- a latency profile ---------------------------------------------------------------


def test_a_streamed_run_records_time_to_first_token_and_tokens_per_second(tmp_path, invoke, fake):
    server = fake(first_token_s=0.05, token_s=0.002)
    path = setup(tmp_path, 6, thinking="disabled", stream=True, max_tokens=400)
    result, summary = run_json(invoke, path)
    assert result.exit_code == 0, result.output
    assert all(seen["body"].get("stream") is True for seen in server.state.seen)
    assert summary["fact_coverage"] == 1.0  # the streamed text is the whole answer
    assert set(summary["ttft_ms"]) == {"p50", "p90", "p99"}
    assert summary["ttft_ms"]["p50"] >= 50
    assert summary["output_tokens_per_s"]["p50"] > 0
    assert summary["ttft_ms"]["p99"] <= summary["latency_ms"]["p99"]
    row = read_jsonl(tmp_path / "runs" / "exp" / "responses.jsonl")[0]
    assert row["completion"].startswith("Answer: tell me about")
    assert row["ttft_ms"] >= 50 and row["stop_reason"] == "end_turn"
    page = tmp_path / "report.html"
    assert invoke("report", "exp", "--out", str(page)).exit_code == 0
    html = page.read_text()
    assert "Time to first token (ms)" in html and "Output tokens per second" in html
    unstreamed, plain = run_json(
        invoke,
        setup(tmp_path / "p", 2, thinking="disabled"),
        "--output-dir",
        str(tmp_path / "p" / "runs"),
    )
    assert unstreamed.exit_code == 0 and "ttft_ms" not in plain


def test_stream_and_batch_do_not_combine(tmp_path, invoke):
    result = invoke("run", "--config", str(setup(tmp_path, stream=True, batch=True)), "--quiet")
    assert result.exit_code == 2 and "stream: a batch's answers are not streamed" in result.stderr
