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
