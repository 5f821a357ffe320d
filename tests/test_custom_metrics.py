"""Custom metrics: each kind on crafted answers, bad specs, errors per sample,
the exports and summary they land in, and compare on them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_experiment
from exprof import metric_specs
from exprof.scoring import custom
from exprof.store.engine import Store, store_url
from exprof.store.events import SampleScored


def spec_for(tmp_path: Path, entry: dict) -> dict:
    ctx = metric_specs.SpecContext(tmp_path / "config.yaml", "claude-3-opus", tmp_path)
    return metric_specs.parse_metrics([entry], ctx)[0]  # type: ignore[return-value]


def score(tmp_path: Path, entry: dict, completion: str, metadata: dict | None = None):
    metrics = custom.build([spec_for(tmp_path, {"name": "m", **entry})])
    sample = {"dialogue_id": "d", "system": "", "user": "u", "required_facts": []}
    values, errors = custom.evaluate(metrics, sample, completion, metadata or {})
    return errors.get("m") or values["m"]


@pytest.mark.parametrize(
    "entry, completion, expected",
    [
        ({"type": "contains_all", "values": ["Source:", "WAL"]}, "source: the wal docs", True),
        ({"type": "contains_all", "values": ["Source:", "WAL"]}, "source: the docs", False),
        ({"type": "contains_any", "values": ["source:", "according to"]}, "ACCORDING TO x", True),
        ({"type": "contains_any", "values": ["source:", "according to"]}, "trust me", False),
        ({"type": "regex", "pattern": r"^\s*1\.", "flags": "m"}, "Steps:\n 1. do", True),
        ({"type": "regex", "pattern": r"^\s*1\."}, "Steps:\n 1. do", False),  # no m flag
        ({"type": "regex", "pattern": "yes|no", "match": "full"}, "yes", True),
        ({"type": "regex", "pattern": "yes|no", "match": "full"}, "yes!", False),
        ({"type": "regex", "pattern": "YES", "flags": "i"}, "oh yes!", True),
        ({"type": "json"}, '{"a": 1}', True),
        ({"type": "json"}, "{'a': 1}", False),
        ({"type": "length", "unit": "words", "max": 3}, "one two three", True),
        ({"type": "length", "unit": "words", "max": 3}, "one two three four", False),
        ({"type": "length", "unit": "chars", "min": 5}, "four", False),
        ({"type": "length", "unit": "chars", "min": 2, "max": 4}, "four", True),
    ],
)
def test_each_kind_on_crafted_answers(tmp_path, entry, completion, expected):
    assert score(tmp_path, entry, completion) is expected


def test_json_against_a_schema(tmp_path):
    schema = {
        "type": "object",
        "required": ["answer"],
        "properties": {"answer": {"type": "string"}},
    }
    (tmp_path / "answer.schema.json").write_text(json.dumps(schema))
    entry = {"type": "json", "schema_path": "answer.schema.json"}
    assert score(tmp_path, entry, '{"answer": "x"}') is True
    assert score(tmp_path, entry, '{"answer": 3}') is False
    assert score(tmp_path, entry, '{"other": "x"}') is False
    assert score(tmp_path, entry, "not json") is False


def test_length_in_tokens_reads_the_recorded_count(tmp_path):
    entry = {"type": "length", "unit": "tokens", "max": 10}
    assert score(tmp_path, entry, "x", {"output_tokens": 10}) is True
    assert score(tmp_path, entry, "x", {"token_count": 11}) is False
    assert score(tmp_path, entry, "x", {}).startswith("ValueError: no output_tokens")


def test_python_metric_gets_sample_completion_and_metadata(tmp_path):
    (tmp_path / "my_metrics.py").write_text(
        "def polite(sample, completion, metadata):\n"
        "    return {'please': 'please' in completion, 'user_len': len(sample['user']),\n"
        "            'tokens': metadata['token_count']}\n"
    )
    entry = {"type": "python", "function": "my_metrics:polite"}
    assert score(tmp_path, entry, "please", {"token_count": 4}) == {
        "please": True,
        "user_len": 1,
        "tokens": 4,
    }


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "x", "type": "bleu"}, "metrics[1] (x): unknown type 'bleu'"),
        ({"name": "x", "type": "regex", "pattern": "("}, "metrics[1] (x): bad regex '('"),
        ({"name": "x", "type": "regex", "pattern": "a", "flags": "q"}, "flags must be letters"),
        ({"name": "x", "type": "regex", "pattern": "a", "match": "all"}, "match must be search"),
        ({"name": "x", "type": "python", "function": "my_metrics:nope"}, "has no function 'nope'"),
        ({"name": "x", "type": "python", "function": "no_such_mod:f"}, "cannot import 'no_such"),
        ({"name": "x", "type": "json", "schema_path": "bad.schema.json"}, "invalid JSON Schema"),
        ({"name": "x", "type": "json", "schema_path": "nowhere.json"}, "'nowhere.json' not found"),
        ({"name": "x", "type": "length", "unit": "lines", "max": 3}, "unit must be one of"),
        ({"name": "x", "type": "length", "unit": "words"}, "needs min, max or both"),
        ({"name": "x", "type": "contains_any", "values": []}, "values must be a non-empty"),
        ({"name": "x", "type": "contains_any", "value": ["a"]}, "unknown option 'value'"),
        ({"name": "x", "type": "judge"}, "type judge needs option 'rubric'"),
        ({"name": "fact_coverage", "type": "json"}, "name 'fact_coverage' is reserved"),
        ({"name": "two words", "type": "json"}, "name must be an identifier"),
        ({"type": "json"}, "name must be an identifier"),
    ],
)
def test_bad_spec_is_one_line_naming_the_entry(tmp_path, invoke, entry, message):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "my_metrics.py").write_text("def polite(s, c, m):\n    return 1.0\n")
    (folder / "bad.schema.json").write_text('{"type": "no-such-type"}')
    samples = [{"dialogue_id": "a", "system": "", "user": "u", "required_facts": []}]
    config = write_experiment(
        folder, samples, {"a": {"completion": "x"}}, metrics=["fact_coverage", entry]
    )
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {config}: metrics[1]")
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_name_used_twice_is_refused(tmp_path, invoke):
    samples = [{"dialogue_id": "a", "system": "", "user": "u", "required_facts": []}]
    entry = {"name": "x", "type": "json"}
    config = write_experiment(tmp_path / "e", samples, {}, metrics=[entry, entry])
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {config}: metrics[1] (x): name is used twice\n"


ANSWERS = {
    "a": '{"answer": "per the docs"}',
    "b": "Steps:\n1. source: the manual",
    "c": "I'm sorry, I cannot comply.",
}


def custom_run(tmp_path: Path, invoke, run_id: str = "exp") -> Path:
    folder = tmp_path / "e"
    folder.mkdir(exist_ok=True)
    (folder / "my_metrics.py").write_text(
        "def polite(sample, completion, metadata):\n"
        "    if 'sorry' in completion.lower():\n"
        "        raise ValueError('no politeness for refusals')\n"
        "    return 'please' in completion or sample['dialogue_id'] == 'a'\n"
    )
    samples = [
        {"dialogue_id": d, "system": "", "user": f"q {d}", "required_facts": ["source"]}
        for d in ANSWERS
    ]
    mocks = {d: {"completion": text, "metadata": {"token_count": 7}} for d, text in ANSWERS.items()}
    metrics = [
        "fact_coverage",
        "refusal_rate",
        "geometric_mean",
        {"name": "cites", "type": "contains_any", "values": ["source:", "according to"]},
        {"name": "has_steps", "type": "regex", "pattern": "^\\s*1\\.", "flags": "m"},
        {"name": "valid_json", "type": "json"},
        {"name": "concise", "type": "length", "unit": "words", "max": 4},
        {"name": "polite", "type": "python", "function": "my_metrics:polite"},
    ]
    config = write_experiment(folder, samples, mocks, metrics=metrics)
    result = invoke("run", "--config", str(config), "--quiet", "--run-id", run_id)
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / run_id


def test_values_land_in_scores_and_summary_and_errors_never_crash(tmp_path, invoke):
    out = custom_run(tmp_path, invoke)
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert scores == [
        {
            "dialogue_id": "a",
            "fact_coverage": 0.0,
            "refused": False,
            "facts_missing": ["source"],
            "cites": False,
            "has_steps": False,
            "valid_json": True,
            "concise": True,
            "polite": True,
        },
        {
            "dialogue_id": "b",
            "fact_coverage": 1.0,
            "refused": False,
            "facts_missing": [],
            "cites": True,
            "has_steps": True,
            "valid_json": False,
            "concise": False,  # five words
            "polite": False,
        },
        {
            "dialogue_id": "c",
            "fact_coverage": 0.0,
            "refused": True,
            "facts_missing": ["source"],
            "cites": False,
            "has_steps": False,
            "valid_json": False,
            "concise": False,
            "polite": None,
            "metric_errors": {"polite": "ValueError: no politeness for refusals"},
        },
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == {
        "cites": 0.3333,
        "has_steps": 0.3333,
        "valid_json": 0.3333,
        "concise": 0.3333,
        "polite": 0.5,  # over the two samples where it returned a value
    }
    assert summary["metric_errors"] == {"polite": 1}
    assert summary["fact_coverage"] == 0.3333  # the seed's keys stay where they are
    assert list(summary)[:3] == ["fact_coverage", "refusal_rate", "geometric_mean"]


def test_summarize_and_runs_show_custom_means(tmp_path, invoke):
    custom_run(tmp_path, invoke)
    table = invoke("summarize", "exp").stdout
    assert re.search(r"^metrics\.concise +0\.3333$", table, re.M)
    assert re.search(r"^metric_errors +polite=1$", table, re.M)
    runs = json.loads(invoke("runs", "--format", "json").stdout)
    assert runs[0]["metrics"]["concise"] == 0.3333
    assert "concise=0.3333" in invoke("runs").stdout


def test_seed_only_config_records_no_metrics_key(sample_config, invoke, tmp_path):
    assert invoke("run", "--config", str(sample_config), "--quiet").exit_code == 0
    store = Store.open(store_url(None, tmp_path / "runs"))
    for ev in store.events("demo_run", types=(SampleScored,)):
        assert set(ev.payload) == {"dialogue_id", "fact_coverage", "refused", "facts_missing"}
    assert "metrics" not in json.loads(invoke("runs", "--format", "json").stdout)[0]


def write_bool_run(tmp_path: Path, invoke, run_id: str, hits: list[bool], lengths: list[int]):
    samples, mocks = [], {}
    for i, (hit, n) in enumerate(zip(hits, lengths, strict=True)):
        did = f"d{i:03d}"
        samples.append({"dialogue_id": did, "system": "", "user": did, "required_facts": []})
        text = ("source: " if hit else "") + " ".join(["w"] * n)
        mocks[did] = {"completion": text, "metadata": {}}
    (tmp_path / run_id).mkdir()
    (tmp_path / run_id / "m.py").write_text(
        "def words(sample, completion, metadata):\n    return len(completion.split())\n"
    )
    metrics = [
        {"name": "cites", "type": "contains_any", "values": ["source:"]},
        {"name": "words", "type": "python", "function": "m:words"},
    ]
    config = write_experiment(tmp_path / run_id, samples, mocks, metrics=metrics)
    result = invoke("run", "--config", str(config), "--run-id", run_id, "--quiet")
    assert result.exit_code == 0, result.output


def test_compare_uses_mcnemar_for_booleans_and_bootstrap_for_numbers(tmp_path, invoke):
    n = 30
    write_bool_run(tmp_path, invoke, "a", [False] * n, [5] * n)
    # B cites in 12 more samples (none fewer) and is 2-3 words longer everywhere.
    write_bool_run(
        tmp_path, invoke, "b", [True] * 12 + [False] * (n - 12), [3 + i % 2 for i in range(n)]
    )
    result = invoke("compare", "a", "b", "--format", "json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    cites = metrics["metrics.cites"]
    assert (cites["a"], cites["b"], cites["delta"]) == (0.0, 0.4, 0.4)
    assert cites["mcnemar_p"] == round(2 * 0.5**12, 6)
    assert cites["verdict"] == "improved"
    words = metrics["metrics.words"]
    assert "mcnemar_p" not in words
    assert words["a"] == 5.0 and words["delta"] < 0
    assert words["ci95"][1] < 0 and words["verdict"] == "regressed"
    table = invoke("compare", "a", "b").stdout
    assert "metrics.cites" in table and "metrics.words" in table
    # From the export directories, the same numbers.
    by_dir = json.loads(invoke("compare", "runs/a", "runs/b", "--format", "json").stdout)
    assert by_dir["metrics"]["metrics.cites"] == cites
    assert by_dir["metrics"]["metrics.words"] == words


def test_the_readme_examples_run(tmp_path, invoke):
    """Writing a metric: the metrics list and the python example, as the README shows them."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Writing a metric", 1)[1].split("\n## ", 1)[0]
    yaml_block, python_block = (
        section.split("```yaml\n", 1)[1].split("```", 1)[0],
        section.split("```python\n", 1)[1].split("```", 1)[0],
    )
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "my_metrics.py").write_text(python_block)
    (folder / "answer.schema.json").write_text('{"type": "object"}')
    (folder / "judge_responses.json").write_text(json.dumps({"a": "Score: 4"}))
    samples = [{"dialogue_id": "a", "system": "", "user": "u", "required_facts": ["wal"]}]
    mocks = {"a": {"completion": "Please:\n1. the WAL, according to the docs", "metadata": {}}}
    config = write_experiment(folder, samples, mocks, metrics=yaml.safe_load(yaml_block)["metrics"])
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"] == {
        "cites": 1.0,
        "covers_all": 0.0,
        "has_steps": 1.0,
        "valid_json": 0.0,
        "concise": 1.0,
        "polite": {"please": 1.0, "words_per_fact": 8.0},
        "helpful": 4.0,
    }
