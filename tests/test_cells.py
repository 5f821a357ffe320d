"""Matrix cells: every combination of values is its own run, under a name of its own."""

from __future__ import annotations

import json

import pytest

from conftest import make_samples, write_experiment
from exprof.store.engine import Store, store_url

# Values an id cannot hold as they are, each beside one that sanitizes the same way.
VARIANTS = {
    "slash-colon-space": ["m/a", "m:a", "m a", "m-a"],
    "unicode-look-alike": [
        "ma",
        "m\u0430",
        "m\u0251",
        "m\uff41",
    ],  # Latin, Cyrillic, IPA, fullwidth a
    "only-unsafe": ["x", "---", "///", "\u00e9"],
    "case": ["model-A", "model-a"],
}


@pytest.mark.parametrize("models", list(VARIANTS.values()), ids=list(VARIANTS))
def test_values_that_sanitize_alike_get_cells_of_their_own(tmp_path, invoke, models):
    samples, mocks = make_samples(6)
    for mock in mocks.values():
        del mock["metadata"]["model"]  # each answer then records the model its cell ran
    config = write_experiment(tmp_path, samples, mocks, matrix={"model": models})
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    cells = json.loads(result.stdout)["cells"]
    assert [c["params"]["model"] for c in cells] == models
    run_ids = [c["run_id"] for c in cells]
    assert len({r.casefold() for r in run_ids}) == len(models)  # folders differ on any disk
    store = Store.open(store_url(None, tmp_path / "runs"))
    for cell, model in zip(cells, models, strict=True):
        started = store.run_started(cell["run_id"])
        assert started is not None and started.config["model"] == model
        lines = (tmp_path / "runs" / cell["run_id"] / "responses.jsonl").read_text("utf-8")
        answers = [json.loads(line) for line in lines.splitlines()]
        # Each cell holds its own answers, once each, all given by its own model.
        assert [a["dialogue_id"] for a in answers] == [s["dialogue_id"] for s in samples]
        assert {a["model"] for a in answers} == {model}
        assert cell["status"] == "complete"


def test_values_an_id_can_hold_keep_their_plain_cell_names(tmp_path, invoke):
    samples, mocks = make_samples(3)
    matrix = {"model": ["claude-3-opus", "m-a"], "temperature": [0.0, 0.5]}
    config = write_experiment(tmp_path, samples, mocks, matrix=matrix)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [c["run_id"] for c in json.loads(result.stdout)["cells"]] == [
        "exp.model-claude-3-opus.t-0.0",
        "exp.model-claude-3-opus.t-0.5",
        "exp.model-m-a.t-0.0",
        "exp.model-m-a.t-0.5",
    ]


def test_a_matrix_over_mock_files_gives_cells_that_answer_differently(tmp_path, invoke):
    samples, mocks = make_samples(12)
    config = write_experiment(tmp_path, samples, mocks)
    full = {
        d: {**m, "completion": " ".join(s["required_facts"])}
        for d, m, s in zip(mocks, mocks.values(), samples, strict=True)
    }
    (tmp_path / "full.json").write_text(json.dumps(full))
    data = json.loads(config.read_text())
    data["matrix"] = {"mock_responses_path": {"base": "mock_responses.json", "best": "full.json"}}
    config.write_text(json.dumps(data))
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    cells = {c["cell"]: c for c in json.loads(result.stdout)["cells"]}
    assert set(cells) == {"mock-base", "mock-best"}
    assert cells["mock-best"]["fact_coverage"] == 1.0 > cells["mock-base"]["fact_coverage"]
    assert cells["mock-best"]["params"] == {"mock_responses_path": "best"}


def test_a_mock_file_cell_that_never_started_answers_from_its_own_file_on_resume(tmp_path, invoke):
    samples, mocks = make_samples(12)
    config = write_experiment(tmp_path, samples, mocks, budget_usd=0.0001)
    full = {
        d: {**m, "completion": " ".join(s["required_facts"])}
        for d, m, s in zip(mocks, mocks.values(), samples, strict=True)
    }
    (tmp_path / "full.json").write_text(json.dumps(full))
    data = json.loads(config.read_text())
    data["matrix"] = {"mock_responses_path": ["mock_responses.json", "full.json"]}
    config.write_text(json.dumps(data))
    stopped = invoke("run", "--config", str(config), "--yes", "--quiet")
    assert stopped.exit_code == 1 and "budget reached" in stopped.stderr
    store = Store.open(store_url(None, tmp_path / "runs"))
    assert not store.run_exists("exp.mock-full")
    resumed = invoke("resume", "exp", "--budget-usd", "100", "--quiet", "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    cells = {c["cell"]: c for c in json.loads(resumed.stdout)["cells"]}
    assert cells["mock-full"]["fact_coverage"] == 1.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["a/x.json", "b/x.json"], "two files share a name; give a mapping name -> path"),
        ({"no way": "x.json"}, "name 'no way' must be letters, digits, '_' or '-'"),
        ([], "must be a non-empty list of paths or a mapping name -> path"),
        ([3], "mock_responses_path[0]: must be a non-empty string, got 3"),
    ],
)
def test_bad_mock_file_matrices_are_one_error_line(tmp_path, invoke, value, message):
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path, samples, mocks, matrix={"mock_responses_path": value})
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
