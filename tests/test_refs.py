"""What a reference names (exprof/refs.py): one order for summarize, compare, report and
rescore, against a real SQLite store and real export folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from exprof.errors import ExprofError
from exprof.refs import ExperimentRef, ExportRef, RunRef, resolve, run_id_of
from exprof.store.engine import Store, store_url


@pytest.fixture
def exported_pair(sample_config, invoke) -> Store:
    """Two runs of experiment demo_run, r1 then r2, exported to runs/r1 and runs/r2."""
    for run_id in ("r1", "r2"):
        args = ("run", "--config", str(sample_config), "--quiet", "--run-id", run_id)
        assert invoke(*args).exit_code == 0
    return Store.open(store_url(None, "runs"), readonly=True)


def no_store() -> Store:
    raise AssertionError("an export folder needs no store")


def test_each_kind_in_order(exported_pair):
    assert resolve("r1", lambda: exported_pair) == RunRef(exported_pair, "r1")
    assert resolve("demo_run", lambda: exported_pair) == RunRef(exported_pair, "r2")  # the latest
    assert resolve("runs/r1", no_store) == ExportRef(Path("runs/r1"))
    assert run_id_of("r1", exported_pair) == "r1"


def test_an_export_folder_named_like_a_run_is_the_folder(exported_pair, tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "summary.json").write_text("{}", encoding="utf-8")
    assert resolve("r1", no_store) == ExportRef(Path("r1"))
    assert resolve("r1", lambda: exported_pair, exports=False) == RunRef(exported_pair, "r1")


def test_a_matrix_experiment(tmp_path, invoke, sample_config):
    text = sample_config.read_text(encoding="utf-8")
    sample_config.write_text(text + "\nmatrix:\n  max_tokens: [50, 60]\n", encoding="utf-8")
    assert invoke("run", "--config", str(sample_config), "--quiet").exit_code == 0
    store = Store.open(store_url(None, "runs"), readonly=True)
    assert resolve("demo_run", lambda: store) == ExperimentRef(store, "demo_run")
    assert isinstance(resolve("demo_run", lambda: store, experiments=False), RunRef)


@pytest.mark.parametrize(
    "kinds, message",
    [
        ({}, "no run, experiment or export directory named 'nope'"),
        ({"exports": False, "latest": False}, "no run 'nope'"),
    ],
)
def test_unknown_names_say_what_was_accepted(exported_pair, kinds, message):
    with pytest.raises(ExprofError, match=message):
        resolve("nope", lambda: exported_pair, **kinds)
    with pytest.raises(ExprofError, match="no run 'demo_run'"):
        run_id_of("demo_run", exported_pair)  # rescore takes a run id, not an experiment's


@pytest.mark.parametrize(
    "name",
    ["x" * 5000, "runs/" + "y" * 300, "runs/r1/summary.json"],
    ids=["too-long", "part-too-long", "a-file"],
)
@pytest.mark.parametrize(
    "command",
    [
        ["compare", "{}", "r1"],
        ["compare", "r1", "{}"],
        ["report", "{}"],
        ["summarize", "{}"],
        ["rescore", "{}", "--config", "{config}"],
    ],
)
def test_a_name_that_is_no_path_is_one_error_line(
    exported_pair, sample_config, invoke, name, command
):
    args = [a.format(name, config=sample_config) for a in command]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and "no run" in line
