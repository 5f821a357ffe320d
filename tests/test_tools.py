"""Tools and multi-step samples: the config's tools, the loop that answers each tool_use
with a tool_result until Claude answers (or max_turns), every turn recorded, resumable
mid-trajectory, and scored on the path as well as the answer.

Live tests use the real SDK against the fake API (tests/fake_anthropic.py): given tools
and a prompt that says `CALL tool:arg ...`, it answers one tool_use per named call, turn
by turn, then a text that quotes the results; it answers 400 to a tool_result whose id
matches no tool_use of the turn before, as the API does."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from test_resume import crash_loop, exports, exprof, finish

from conftest import write_experiment
from exprof.config import load_config
from exprof.store.engine import Store, store_url
from exprof.store.events import TurnRecorded
from fake_anthropic import FakeAnthropic

TOOLS = [
    {
        "name": "lookup",
        "description": "Look a word up",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
    {
        "name": "add",
        "description": "Add two numbers",
        "input_schema": {"type": "object", "properties": {"a": {}, "b": {}}},
    },
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_json(invoke, config: Path, *extra: str):
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json", *extra)
    out = result.stdout
    return result, (json.loads(out[: out.rindex("}") + 1]) if out.startswith("{") else None)


# -- the config ----------------------------------------------------------------------


def tool_config(tmp_path: Path, **config) -> Path:
    samples = [{"dialogue_id": "a", "system": "s", "user": "hi"}]
    mocks = {"a": {"completion": "hello"}}
    config.setdefault("tools", TOOLS)
    return write_experiment(tmp_path / "e", samples, mocks, **config)


def test_tools_load_from_the_config_or_a_file(tmp_path):
    config = load_config(tool_config(tmp_path, tool_choice="any", max_turns=3))
    assert config.tools == TOOLS
    assert config.tool_choice == {"type": "any"}
    assert (config.max_turns, config.tool_timeout_s) == (3, 10.0)
    (tmp_path / "e" / "tools.json").write_text(json.dumps(TOOLS))
    from_file = load_config(tool_config(tmp_path, tools="tools.json"))
    assert from_file.tools == TOOLS and from_file.max_turns == 8


def test_a_config_without_tools_records_what_it_always_did(tmp_path):
    samples = [{"dialogue_id": "a", "system": "s", "user": "hi"}]
    path = write_experiment(tmp_path / "e", samples, {"a": {"completion": "x"}})
    recorded = load_config(path).to_dict()
    assert not {"tools", "tool_choice", "max_turns", "tool_timeout_s", "tool_runner"} & set(
        recorded
    )


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (
            {"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]},
            "tools[0]: name must be 1-64 letters, digits, '_' or '-', got 'bad name'",
        ),
        (
            {"tools": [{"name": "t", "input_schema": {"type": "string"}}]},
            "tools[0] (t): input_schema must be a JSON Schema with type: object",
        ),
        (
            {"tools": [{"name": "t", "input_schema": {"type": "object"}, "color": 1}]},
            "tools[0] (t): unknown key 'color'; a tool has name, description, input_schema",
        ),
        (
            {"tools": [TOOLS[0], TOOLS[0]]},
            "tools[1] (lookup): name is used twice",
        ),
        ({"tools": []}, "tools: must be a non-empty list"),
        (
            {"tool_choice": {"type": "tool", "name": "nope"}},
            "tool_choice: name 'nope' is not one of the tools",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice: must be one of auto, any, none, tool"),
        ({"max_turns": 0}, "max_turns: must be an integer in [1, 100], got 0"),
        ({"tool_timeout_s": -1}, "tool_timeout_s: must be a number in [0.001, 86400]"),
        ({"tool_runner": "nocolon"}, "tool_runner: must be 'module:function'"),
        ({"tool_runner": "missing_mod:run"}, "tool_runner: cannot import 'missing_mod'"),
        ({"tools": None, "max_turns": 3}, "max_turns: needs tools"),
        ({"batch": True}, "tools: a batch run sends each sample once"),
        ({"cache": True}, "cache: answers reused from the store carry no trajectory"),
    ],
)
def test_a_bad_tool_spec_is_one_error_line_and_nothing_written(tmp_path, invoke, settings, error):
    settings = dict(settings)
    if settings.get("tools", TOOLS) is None:
        settings.pop("tools")
        samples = [{"dialogue_id": "a", "system": "s", "user": "hi"}]
        path = write_experiment(tmp_path / "e", samples, {"a": {"completion": "x"}}, **settings)
    else:
        path = tool_config(tmp_path, **settings)
    result = invoke("run", "--config", str(path), "--quiet")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: "), result.output
    assert error in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ([{"name": "lookup"}], "tool_results[0] (lookup): result must be a string"),
        ([{"name": "lookup", "result": "x", "when": 1}], "tool_results[0]: unknown key 'when'"),
        ([{"name": "lookup", "input": 3, "result": "x"}], "input must be a mapping"),
        ({"name": "lookup"}, "tool_results: must be a list"),
    ],
)
def test_a_bad_script_names_the_sample_and_entry(tmp_path, invoke, script, error):
    samples = [{"dialogue_id": "a", "system": "s", "user": "hi", "tool_results": script}]
    path = write_experiment(tmp_path / "e", samples, {"a": {"completion": "x"}}, tools=TOOLS)
    result = invoke("run", "--config", str(path), "--quiet")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "index 0 (a)" in lines[0]
    assert error in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()


# -- the mock's loop -----------------------------------------------------------------


def mock_experiment(tmp_path: Path, **config) -> Path:
    samples = [
        {
            "dialogue_id": "a",
            "system": "s",
            "user": "weather in Paris?",
            "required_facts": ["sunny"],
            "tool_results": [
                {"name": "lookup", "input": {"q": "Paris"}, "result": "sunny, 21C"},
            ],
        },
        {"dialogue_id": "b", "system": "s", "user": "keep going"},
        {"dialogue_id": "c", "system": "s", "user": "no tools"},
    ]
    mocks = {
        "a": {
            "turns": [
                {"tool_use": {"name": "lookup", "input": {"q": "Paris", "lang": "fr"}}},
                "It is sunny.",
            ]
        },
        "b": {
            "turns": [
                {"tool_use": [{"name": "lookup", "input": {"q": "x"}}, {"name": "add"}]},
                {"tool_use": {"name": "lookup", "input": {"q": "y"}}},
                "done",
            ]
        },
        "c": {"turns": ["plain answer"]},
    }
    config.setdefault("tools", TOOLS)
    return write_experiment(tmp_path / "e", samples, mocks, **config)


def test_the_mock_plays_the_loop_turn_by_turn(tmp_path, invoke):
    result, summary = run_json(invoke, mock_experiment(tmp_path, max_turns=2))
    assert result.exit_code == 0, result.output
    responses = {r["dialogue_id"]: r for r in read_jsonl(tmp_path / "runs/exp/responses.jsonl")}
    a, b, c = responses["a"], responses["b"], responses["c"]
    assert (a["completion"], a["turns"], a["stop_reason"]) == ("It is sunny.", 2, "end_turn")
    assert a["tool_calls"] == [{"name": "lookup", "input": {"q": "Paris", "lang": "fr"}}]
    assert a["tool_errors"] == 0
    # b asked three calls in two turns: max_turns 2 cut it off, unanswered calls and all;
    # no script matched its calls, so each got an error result.
    assert (b["turns"], b["stop_reason"], b["tool_errors"]) == (2, "max_turns", 2)
    assert [t["name"] for t in b["tool_calls"]] == ["lookup", "add", "lookup"]
    assert (c["turns"], c["tool_calls"], c["tool_errors"]) == (1, [], 0)
    # the usage is the sum over the turns
    store = Store.open(store_url(None, tmp_path / "runs"), readonly=True)
    turns = [e.event for e in store.events("exp", types=(TurnRecorded,))]
    assert all(isinstance(t, TurnRecorded) for t in turns)
    of_a = [t for t in turns if t.dialogue_id == "a"]
    assert [t.turn for t in of_a] == [1, 2]
    assert a["input_tokens"] == sum(t.usage["input_tokens"] for t in of_a)
    assert a["output_tokens"] == sum(t.usage["output_tokens"] for t in of_a)
    assert of_a[0].tool_results == [
        {"type": "tool_result", "tool_use_id": "toolu_mock_1_1", "content": "sunny, 21C"}
    ]
    of_b = [t for t in turns if t.dialogue_id == "b"]
    assert of_b[0].tool_results[0]["is_error"] is True
    assert "no scripted result for tool lookup" in of_b[0].tool_results[0]["content"]
    assert summary["cut_off_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert (summary["mean_turns"], summary["tool_calls"]) == (pytest.approx(5 / 3, abs=1e-4), 4)
    assert summary["tool_error_rate"] == 0.5  # b's lookup and add: no script matched
    assert summary["max_turns_rate"] == pytest.approx(1 / 3, abs=1e-4)
    lines = read_jsonl(tmp_path / "runs/exp/trajectories.jsonl")
    assert [line["dialogue_id"] for line in lines] == ["a", "b", "c"]
    assert lines[0]["turns"] == [
        {
            "sent": [{"role": "user", "content": "weather in Paris?"}],
            "received": of_a[0].received,
            "tool_results": of_a[0].tool_results,
            "usage": of_a[0].usage,
            "stop_reason": "tool_use",
        },
        {
            "sent": [{"role": "user", "content": of_a[0].tool_results}],
            "received": [{"type": "text", "text": "It is sunny."}],
            "tool_results": [],
            "usage": of_a[1].usage,
            "stop_reason": "end_turn",
        },
    ]
    assert [len(line["turns"]) for line in lines] == [2, 2, 1]


# -- the live loop -------------------------------------------------------------------


def live_experiment(tmp_path: Path, plans: list[str], scripted: bool = True, **config) -> Path:
    """Samples whose prompts plan their calls for the fake (`CALL lookup:x add:y`)."""
    samples = [
        {
            "dialogue_id": f"t{i:03d}",
            "system": "s",
            "user": f"question {i} CALL {plan}" if plan else f"question {i}",
            "tool_results": [
                {
                    "name": "lookup",
                    "input": {"q": "boom"},
                    "result": "no such word",
                    "is_error": True,
                },
                {"name": "lookup", "result": f"word{i}"},
                {"name": "add", "result": "42"},
            ],
        }
        for i, plan in enumerate(plans)
    ]
    if not scripted:
        for sample in samples:
            del sample["tool_results"]
    config.setdefault("tools", TOOLS)
    config.setdefault("model", "claude-sonnet-5")
    config.setdefault("thinking", "disabled")
    config.setdefault("max_tokens", 200)
    return write_experiment(tmp_path / "e", samples, {}, **config)


def turns_planned(plan: str) -> int:
    return len(plan.split()) + 1


def test_live_runs_every_tool_use_and_sends_again_until_an_answer(tmp_path, invoke, fake):
    server = fake()
    plans = ["lookup:a", "lookup:b add:1", "", "lookup:boom+add:2"]
    result, summary = run_json(invoke, live_experiment(tmp_path, plans), "--live")
    assert result.exit_code == 0, result.output
    assert server.state.requests == sum(turns_planned(p) for p in plans)
    bodies = [seen["body"] for seen in server.state.seen]
    assert all(b["tools"] == TOOLS for b in bodies)
    responses = {r["dialogue_id"]: r for r in read_jsonl(tmp_path / "runs/exp/responses.jsonl")}
    assert (
        responses["t001"]["completion"] == "Answer: question 1 CALL lookup:b add:1 with word1 | 42"
    )
    assert responses["t001"]["tool_calls"] == [
        {"name": "lookup", "input": {"q": "b"}},
        {"name": "add", "input": {"q": "1"}},
    ]
    assert [responses[f"t00{i}"]["turns"] for i in range(4)] == [2, 3, 1, 2]
    # two calls in one turn: both answered in one user turn, the error one flagged
    three = responses["t003"]
    assert three["tool_errors"] == 1 and "ERROR no such word | 42" in three["completion"]
    last = [b for b in bodies if "lookup:boom" in json.dumps(b) and len(b["messages"]) == 3][0]
    results = last["messages"][2]["content"]
    assert [r["is_error"] for r in results if "is_error" in r] == [True]
    assert [r["tool_use_id"] for r in results] == [
        u["id"] for u in last["messages"][1]["content"] if u["type"] == "tool_use"
    ]
    # tokens and cost are summed over the turns
    server_out = sum(5 + 10 * len(p.split("+")) for p in ["lookup:a"])
    assert responses["t000"]["output_tokens"] > server_out


def test_the_fake_refuses_a_tool_result_that_answers_no_tool_use(fake):
    import anthropic

    server = fake()
    client = anthropic.Anthropic(base_url=server.url, max_retries=0)
    messages = [
        {"role": "user", "content": "hi CALL lookup:x"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "y"},
            ],
        },
    ]
    with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
        client.messages.create(
            model="claude-sonnet-5", max_tokens=50, messages=messages, tools=TOOLS
        )
    messages[2]["content"] = messages[2]["content"][1:]
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result` blocks"):
        client.messages.create(
            model="claude-sonnet-5", max_tokens=50, messages=messages, tools=TOOLS
        )
    answer = client.messages.create(
        model="claude-sonnet-5", max_tokens=50, messages=messages[:1], tools=TOOLS
    )
    assert answer.stop_reason == "tool_use"
    [use] = [b for b in answer.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("lookup", {"q": "x"})


# -- scored on the path --------------------------------------------------------------

PATH_METRICS = [
    {"type": "tool_called", "tool": "add"},
    {"name": "looked_up_a", "type": "tool_called", "tool": "lookup", "input": {"q": "a"}},
    {"name": "exact", "type": "tool_sequence", "tools": ["lookup", "add"], "order": "exact"},
    {"name": "sub", "type": "tool_sequence", "tools": ["lookup", "add"], "order": "subsequence"},
    {"name": "as_set", "type": "tool_sequence", "tools": ["add", "lookup"], "order": "set"},
    {"type": "turns"},
    {"type": "tool_errors"},
]
PATH_PLANS = [
    "lookup:a add:1",
    "add:1 lookup:a",
    "lookup:a lookup:b add:2",
    "",
    "lookup:boom",
    "add:3+lookup:a",
    "lookup:c",
]


def independent_scores(trajectory: dict) -> dict:
    """The path metrics computed from a trajectories.jsonl line alone."""
    calls = [
        (b["name"], b["input"])
        for turn in trajectory["turns"]
        for b in turn["received"]
        if b["type"] == "tool_use"
    ]
    names = [n for n, _ in calls]
    pos = [i for i, n in enumerate(names) if n == "lookup"]
    return {
        "called_add": "add" in names,
        "looked_up_a": ("lookup", {"q": "a"}) in calls,
        "exact": names == ["lookup", "add"],
        "sub": bool(pos) and "add" in names[pos[0] + 1 :],
        "as_set": set(names) == {"add", "lookup"},
        "turns": len(trajectory["turns"]),
        "tool_errors": sum(
            1 for t in trajectory["turns"] for r in t["tool_results"] if r.get("is_error")
        ),
    }


def test_path_metrics_agree_with_an_independent_reading_of_the_trajectories(tmp_path, invoke, fake):
    fake()
    config = live_experiment(tmp_path, PATH_PLANS, metrics=PATH_METRICS)
    result, summary = run_json(invoke, config, "--live")
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "exp"
    scores = read_jsonl(out / "scores.jsonl")
    trajectories = read_jsonl(out / "trajectories.jsonl")
    assert [s["dialogue_id"] for s in scores] == [t["dialogue_id"] for t in trajectories]
    names = list(independent_scores(trajectories[0]))
    got = [{k: s[k] for k in names} for s in scores]
    assert got == [independent_scores(t) for t in trajectories]
    assert [g["exact"] for g in got] == [True, False, False, False, False, False, False]
    assert summary["metrics"]["turns"] == pytest.approx(
        sum(len(t["turns"]) for t in trajectories) / len(trajectories), abs=1e-4
    )


def test_a_path_metric_naming_an_unknown_tool_is_refused(tmp_path, invoke):
    path = tool_config(tmp_path, metrics=[{"type": "tool_called", "tool": "search"}])
    result = invoke("run", "--config", str(path), "--quiet")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {path}: metrics[0] (called_search): tool 'search' is not one of the tools"
    )


# -- python tools --------------------------------------------------------------------

TOOL_MODULE = """
import time

def run(name, tool_input, sample):
    q = tool_input.get("q")
    if q == "raise":
        raise ValueError("bad word")
    if q == "hang":
        time.sleep(30)
    if q == "int":
        return 42
    if q == "blocks":
        return [{"type": "text", "text": "block result"}]
    return f"{name} of {q} for {sample['dialogue_id']}"
"""


def test_a_python_tool_that_fails_gives_an_error_result_for_that_call_only(tmp_path, invoke, fake):
    fake()
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "mytools.py").write_text(TOOL_MODULE)
    plans = ["lookup:raise+lookup:ok", "lookup:hang lookup:x", "lookup:int", "lookup:blocks"]
    config = live_experiment(
        tmp_path, plans, scripted=False, tool_runner="mytools:run", tool_timeout_s=0.3
    )
    result, summary = run_json(invoke, config, "--live")
    assert result.exit_code == 0, result.output
    lines = read_jsonl(tmp_path / "runs/exp/trajectories.jsonl")
    results = {line["dialogue_id"]: [t["tool_results"] for t in line["turns"]] for line in lines}
    first = results["t000"][0]
    assert [r.get("is_error", False) for r in first] == [True, False]
    assert first[0]["content"] == "tool lookup raised ValueError: bad word"
    assert first[1]["content"] == "lookup of ok for t000"
    hung, after = results["t001"][0], results["t001"][1]
    assert hung == [
        {
            "type": "tool_result",
            "tool_use_id": hung[0]["tool_use_id"],
            "content": "tool lookup timed out after 0.3 s",
            "is_error": True,
        }
    ]
    assert after[0]["content"] == "lookup of x for t001" and "is_error" not in after[0]
    assert results["t002"][0][0]["content"] == (
        "tool lookup returned int, not a string or text blocks"
    )
    assert results["t003"][0][0]["content"] == [{"type": "text", "text": "block result"}]
    assert summary["samples_completed"] == 4
    assert summary["tool_error_rate"] == pytest.approx(3 / 6, abs=1e-4)


# -- acceptance: request count, exact resume, the kill loop --------------------------


def acceptance_plans(n: int, seed: int = 7) -> list[str]:
    """n prompts needing 1-3 tool calls each (some two in one turn)."""
    rng = random.Random(seed)
    plans = []
    for i in range(n):
        words = [f"lookup:w{i}-{k}" for k in range(rng.randint(1, 3))]
        if len(words) > 1 and rng.random() < 0.3:
            words[-2:] = ["+".join(words[-2:])]
        plans.append(" ".join(words))
    return plans


def test_200_samples_make_the_server_see_exactly_the_sum_of_their_turns(tmp_path, invoke, fake):
    server = fake()
    plans = acceptance_plans(200)
    result, summary = run_json(invoke, live_experiment(tmp_path, plans, concurrency=16), "--live")
    assert result.exit_code == 0, result.output
    expected = sum(turns_planned(p) for p in plans)
    assert server.state.requests == expected
    assert summary["mean_turns"] == pytest.approx(expected / 200, abs=1e-4)
    lines = read_jsonl(tmp_path / "runs/exp/trajectories.jsonl")
    assert sum(len(line["turns"]) for line in lines) == expected


SLOW_TOOL = """
import time

def run(name, tool_input, sample):
    time.sleep(0.25)
    return f"{name} {tool_input['q']}"
"""


def peek_turns(db: Path) -> list[tuple[str, int]]:
    """The (dialogue_id, turn) pairs recorded in a store another process may hold."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT payload FROM events WHERE type = 'turn_recorded'").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [(json.loads(p)["dialogue_id"], json.loads(p)["turn"]) for (p,) in rows]


@pytest.mark.slow
def test_a_kill_mid_trajectory_resumes_from_the_last_recorded_turn(tmp_path):
    """SIGKILL while tools run: on resume no recorded turn's request is sent again."""
    n, concurrency = 12, 4
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "slowtools.py").write_text(SLOW_TOOL)
    plans = ["lookup:a lookup:b lookup:c"] * n
    config = live_experiment(
        tmp_path, plans, scripted=False, tool_runner="slowtools:run", concurrency=concurrency
    )
    db = tmp_path / "runs" / "exprof.db"
    with FakeAnthropic(latency=0.01) as server:
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-crash", "ANTHROPIC_BASE_URL": server.url}
        proc = exprof("run", "--config", str(config), "--run-id", "crash", cwd=tmp_path, env=env)
        deadline = time.monotonic() + 60
        while len(peek_turns(db)) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = set(peek_turns(db))
        assert 6 <= len(before) < 3 * n, before
        sent_before = dict(server.state.attempts)
        code, err = finish(exprof("resume", "crash", cwd=tmp_path, env=env))
        assert code == 0, err
        prompts = {f"t{i:03d}": f"question {i} CALL {plan}" for i, plan in enumerate(plans)}
        for dialogue_id, turn in before:
            # turn k's reply is recorded: requests 1..k were not sent again, whatever
            # the resume sent after them
            for k in range(1, turn + 1):
                key = prompts[dialogue_id] + (f" #turn{k}" if k > 1 else "")
                assert server.state.attempts[key] == sent_before[key] == 1, (dialogue_id, k)
        assert server.state.requests <= 4 * n + concurrency
    lines = read_jsonl(tmp_path / "runs" / "crash" / "trajectories.jsonl")
    assert [len(line["turns"]) for line in lines] == [4] * n
    assert all(
        [t["stop_reason"] for t in line["turns"]] == ["tool_use"] * 3 + ["end_turn"]
        for line in lines
    )


def without_timing(folder: Path) -> dict:
    out = exports(folder, strip=True)
    out["trajectories.jsonl"] = read_jsonl(folder / "trajectories.jsonl")
    return out


@pytest.mark.slow
def test_the_kill_loop_gives_the_uninterrupted_exports_and_wastes_little(tmp_path):
    """SIGKILLs at random moments (benchmarks/bench_tools.py makes the full ten)."""
    n, concurrency, kills = 80, 8, 4
    plans = acceptance_plans(n)
    turns = sum(turns_planned(p) for p in plans)
    config = live_experiment(tmp_path, plans, concurrency=concurrency)
    with FakeAnthropic(latency=0.05, jitter=0.01) as server:
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-crash", "ANTHROPIC_BASE_URL": server.url}
        ref = exprof(
            "run",
            "--config",
            str(config),
            "--run-id",
            "crash",
            "--output-dir",
            "ref",
            cwd=tmp_path,
            env=env,
        )
        assert finish(ref)[0] == 0
        assert server.state.requests == turns
        made = crash_loop(
            tmp_path,
            config,
            n,
            kills=kills,
            seed=3,
            env=env,
            max_wait=20,
            db_url=store_url(None, tmp_path / "runs"),
        )
        wasted = server.state.requests - 2 * turns
    assert made >= kills
    assert 0 <= wasted <= made * concurrency, (wasted, made)
    assert without_timing(tmp_path / "runs" / "crash") == without_timing(tmp_path / "ref" / "crash")


def test_the_budget_holds_per_turn_and_a_resume_sends_only_the_turns_left(tmp_path, invoke, fake):
    server = fake(latency=0.1)
    plans = ["", "lookup:a lookup:b lookup:c lookup:d lookup:e"]
    dear = {"claude-sonnet-5": {"input": 1e6, "output": 1e6}}  # a dollar a token
    config = live_experiment(tmp_path, plans, concurrency=2, budget_usd=1, pricing=dear)
    result, _ = run_json(invoke, config, "--live", "--yes")
    assert result.exit_code == 1, result.output
    assert "budget reached" in result.output
    sent = server.state.requests
    assert sent < 7  # the long sample stopped before its last turns
    result = invoke("resume", "exp", "--budget-usd", "100000", "--quiet")
    assert result.exit_code == 0, result.output
    assert server.state.requests == 7  # 1 + 6 turns: none sent twice
    lines = read_jsonl(tmp_path / "runs/exp/trajectories.jsonl")
    assert [len(line["turns"]) for line in lines] == [1, 6]


# -- the report ----------------------------------------------------------------------


def test_a_report_row_expands_to_its_trajectory(tmp_path, invoke):
    from test_report import rows_by_id, table_data

    result, _ = run_json(invoke, mock_experiment(tmp_path, max_turns=2))
    assert result.exit_code == 0, result.output
    page = invoke("report", "exp")
    assert page.exit_code == 0, page.output
    html = Path(page.stdout.strip()).read_text(encoding="utf-8")
    rows = rows_by_id(table_data(html))
    assert rows["a"]["trajectory"] == [
        {
            "text": "",
            "calls": [["lookup", '{"q":"Paris","lang":"fr"}', "sunny, 21C", False]],
            "stop": "tool_use",
        },
        {"text": "It is sunny.", "calls": [], "stop": "end_turn"},
    ]
    assert [len(c) for c in [rows["b"]["trajectory"][0]["calls"]]] == [2]
    assert rows["b"]["trajectory"][0]["calls"][0][3] is True
    # from the export directory, the same
    Path("runs/exp/report.html").unlink()
    again = invoke("report", "runs/exp")
    from_dir = rows_by_id(table_data(Path(again.stdout.strip()).read_text(encoding="utf-8")))
    assert from_dir["a"]["trajectory"] == rows["a"]["trajectory"]
    assert "r[C.trajectory]" in html


def test_server_tool_use_in_the_usage_is_recorded_and_summed_over_turns(tmp_path, invoke, fake):
    def searched(payload, headers):
        payload["usage"]["server_tool_use"] = {"web_search_requests": 2}
        return payload, headers

    fake(mangle=searched)
    result, summary = run_json(invoke, live_experiment(tmp_path, ["lookup:a add:1"]), "--live")
    assert result.exit_code == 0, result.output
    [line] = read_jsonl(tmp_path / "runs/exp/responses.jsonl")
    assert line["server_tool_use"] == {"web_search_requests": 6}  # 2 in each of 3 turns
    # ...and priced: six searches at the published $10 per 1,000, beside the tokens
    by_class = summary["cost_by_class"]
    assert by_class["server_tools"] == pytest.approx(0.06)
    tokens = sum(v for k, v in by_class.items() if k != "server_tools")
    assert summary["estimated_cost_usd"] == pytest.approx(tokens + 0.06, abs=2e-6)
    [path] = read_jsonl(tmp_path / "runs/exp/trajectories.jsonl")
    assert [t["usage"]["server_tool_use"] for t in path["turns"]] == [
        {"web_search_requests": 2}
    ] * 3


def test_a_rescore_scores_the_recorded_path_and_runs_no_tool(tmp_path, invoke):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "gone.py").write_text("def run(name, tool_input, sample):\n    return 'x'\n")
    config = mock_experiment(tmp_path, max_turns=2, tool_runner="gone:run")
    assert run_json(invoke, config)[0].exit_code == 0
    (tmp_path / "e" / "gone.py").unlink()
    sys.modules.pop("gone", None)  # as a new process finds it: gone
    settings = json.loads(config.read_text())
    settings.pop("tool_runner")
    settings["metrics"] = [{"type": "turns"}, {"type": "tool_called", "tool": "add"}]
    rescore = config.with_name("rescore.yaml")
    rescore.write_text(json.dumps(settings))
    result = invoke("rescore", "exp", "--config", str(rescore), "--quiet", "--run-id", "again")
    assert result.exit_code == 0, result.output
    scores = {s["dialogue_id"]: s for s in read_jsonl(tmp_path / "runs/again/scores.jsonl")}
    assert {d: (s["turns"], s["called_add"]) for d, s in scores.items()} == {
        "a": (2, False),
        "b": (2, True),
        "c": (1, False),
    }


def test_with_thinking_on_a_tool_loop_sends_its_signed_thinking_back(tmp_path, invoke, fake):
    server = fake()
    config = live_experiment(
        tmp_path, ["lookup:a add:1"], thinking="adaptive", effort="low", max_tokens=2000
    )
    result, _ = run_json(invoke, config, "--live")
    assert result.exit_code == 0, result.output
    assert server.state.requests == 3  # the fake 400s a tool loop whose thinking is unsigned
    last = server.state.seen[-1]["body"]["messages"]
    assert [m["content"][0]["type"] for m in last[1::2]] == ["thinking", "thinking"]
    assert all(m["content"][0]["signature"] == "c2ln" for m in last[1::2])
    [line] = read_jsonl(tmp_path / "runs/exp/responses.jsonl")
    assert line["completion"].startswith("Answer: question 0")


def test_a_streamed_tool_loop_reads_each_tool_use_from_its_deltas(tmp_path, invoke, fake):
    server = fake()
    plans = ["lookup:a add:1", "lookup:b+add:2"]
    result, _ = run_json(invoke, live_experiment(tmp_path, plans, stream=True), "--live")
    assert result.exit_code == 0, result.output
    assert server.state.requests == 5
    responses = read_jsonl(tmp_path / "runs/exp/responses.jsonl")
    assert [r["tool_calls"] for r in responses] == [
        [{"name": "lookup", "input": {"q": "a"}}, {"name": "add", "input": {"q": "1"}}],
        [{"name": "lookup", "input": {"q": "b"}}, {"name": "add", "input": {"q": "2"}}],
    ]
    assert all("ttft_ms" in r for r in responses)


def test_join_is_refused_for_a_tool_run(tmp_path, invoke, fake):
    fake()
    result, _ = run_json(invoke, live_experiment(tmp_path, ["lookup:a"]), "--live")
    assert result.exit_code == 0, result.output
    result = invoke("resume", "exp", "--join", "--quiet")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: run exp calls tools: --join is for runs without them (a worker would not "
        "see the turns another records for a sample it takes over)"
    )


def test_a_prefilled_sample_sends_its_prefill_within_the_first_reply(tmp_path, invoke, fake):
    server = fake()
    samples = [
        {
            "dialogue_id": "p",
            "system": "s",
            "messages": [
                {"role": "user", "content": "question CALL lookup:a"},
                {"role": "assistant", "content": "Let me look."},
            ],
            "tool_results": [{"name": "lookup", "result": "found"}],
        }
    ]
    config = write_experiment(
        tmp_path / "e",
        samples,
        {},
        tools=TOOLS,
        model="claude-opus-4-1",  # takes a prefill
        max_tokens=200,
    )
    result, _ = run_json(invoke, config, "--live")
    assert result.exit_code == 0, result.output
    last = server.state.seen[-1]["body"]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user"]
    assert last[1]["content"][0] == {"type": "text", "text": "Let me look."}
    assert [b["type"] for b in last[1]["content"]][-1] == "tool_use"


def test_compare_pairs_the_path_metrics_like_any_metric(tmp_path, invoke):
    metrics = [{"type": "turns"}, {"type": "tool_called", "tool": "add"}]
    config = mock_experiment(tmp_path, max_turns=2, metrics=metrics)
    assert run_json(invoke, config, "--run-id", "two")[0].exit_code == 0
    settings = json.loads(config.read_text())
    settings["max_turns"] = 3
    longer = config.with_name("longer.yaml")
    longer.write_text(json.dumps(settings))
    assert run_json(invoke, longer, "--run-id", "three")[0].exit_code == 0
    result = invoke("compare", "two", "three", "--format", "json")
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)["metrics"]
    assert compared["metrics.turns"]["a"] == pytest.approx(5 / 3, abs=1e-4)
    assert compared["metrics.turns"]["b"] == pytest.approx(2.0, abs=1e-4)  # b: 3 turns
    assert "metrics.called_add" in compared
