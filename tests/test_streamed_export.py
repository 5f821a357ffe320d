"""A whole mock run writes its export as it answers (export.StreamedExport) instead of
reading it back from the store at the end: the files must be byte for byte what
`exprof export` writes from the store, and anything less than a whole run must still be
exported from the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import exprof.export
import exprof.run.runner
from conftest import make_samples, write_experiment
from exprof.export import FILES, MARKER

REAL_EXPORT = exprof.run.runner.export_run

# A metric that fails on some answers, so scores.jsonl carries metric_errors too.
FLAKY = """
import numpy

def longish(sample, completion, metadata):
    if sample["dialogue_id"].endswith("3"):
        raise ValueError("no")
    return len(completion) > 12

def tiny(sample, completion, metadata):
    return numpy.float64(len(completion) * 1e-7)  # a float subclass, written as a float

def meddle(sample, completion, metadata):
    metadata["seen"] = metadata.get("seen", 0) + 1  # must not reach what is recorded
    return 1
"""

CASES = {
    "plain": {},
    "repeats_and_metrics": {
        "repeats": 3,
        "metrics": [
            "fact_coverage",
            {"name": "cites", "type": "contains_any", "values": ["fact1-"]},
            {"name": "longish", "type": "python", "function": "flaky:longish"},
            {"name": "tiny", "type": "python", "function": "flaky:tiny"},
            {"name": "meddle", "type": "python", "function": "flaky:meddle"},
        ],
    },
    "completion_only": {"output_fields": ["completion"]},
}


def exported(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in (*FILES, MARKER)}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def from_store_refused(monkeypatch):
    """The export from the store made to fail: a run that does not stream cannot finish."""

    def refuse(*args, **kwargs):
        raise AssertionError("exported from the store")

    monkeypatch.setattr(exprof.run.runner, "export_run", refuse)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_whole_mock_run_streams_the_export_the_store_gives(tmp_path, invoke, case, monkeypatch):
    samples, mocks = make_samples(40, facts=3, refuse_every=7, missing_every=11)
    config = write_experiment(tmp_path / "e", samples, mocks, **CASES[case])
    (tmp_path / "e" / "flaky.py").write_text(FLAKY, encoding="utf-8")
    calls = []
    monkeypatch.setattr(
        exprof.run.runner, "export_run", lambda *a, **k: calls.append(a) or REAL_EXPORT(*a, **k)
    )
    run = invoke("run", "--config", str(config), "--quiet")
    assert run.exit_code == 1, run.output  # the samples without a mock answer failed
    assert calls == []  # written as it answered, not read back
    streamed = tmp_path / "runs" / "exp"
    assert leftovers(streamed) == []
    again = invoke("export", "exp", "--to", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert exported(streamed) == exported(tmp_path / "again")
    lines = (streamed / "responses.jsonl").read_text().splitlines()
    repeats = CASES[case].get("repeats", 1)
    assert len(lines) == (40 - 4) * repeats  # 4 of the 40 have no mock answer
    if case == "repeats_and_metrics":
        scores = [json.loads(line) for line in (streamed / "scores.jsonl").read_text().splitlines()]
        assert any("metric_errors" in s for s in scores) and any(s["longish"] for s in scores)
        assert "e-" in (streamed / "scores.jsonl").read_text()  # 1e-06: tiny's small floats
        assert all("seen" not in json.loads(line) for line in lines)


def test_a_run_stopped_by_its_budget_exports_from_the_store(tmp_path, invoke):
    config = write_experiment(tmp_path, *make_samples(30), budget_usd=0.01)
    first = invoke("run", "--config", str(config), "--yes", "--quiet")
    assert first.exit_code == 1 and "budget reached" in first.stderr
    out = tmp_path / "runs" / "exp"
    assert leftovers(out) == []
    answered = (out / "responses.jsonl").read_text().splitlines()
    assert 0 < len(answered) < 30
    assert invoke("export", "exp", "--to", str(tmp_path / "again")).exit_code == 0
    assert exported(out) == exported(tmp_path / "again")


def test_a_resumed_run_exports_from_the_store(tmp_path, invoke, from_store_refused):
    """The resume answers only the rest: its export needs the store (refused here)."""
    config = write_experiment(tmp_path, *make_samples(30), budget_usd=0.01)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exprof.run.runner, "export_run", REAL_EXPORT)
        assert invoke("run", "--config", str(config), "--yes", "--quiet").exit_code == 1
    with pytest.raises(AssertionError, match="exported from the store"):
        invoke("resume", "exp", "--quiet", "--budget-usd", "10")


def test_a_whole_run_streams_with_the_store_export_refused(tmp_path, invoke, from_store_refused):
    config = write_experiment(tmp_path, *make_samples(30))
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "runs" / "exp" / "responses.jsonl").read_text().splitlines()) == 30


HELPFUL = {"name": "helpful", "type": "judge", "rubric": "Rate 1-5 how helpful it is."}


@pytest.mark.parametrize("case", ["judge", "cache"])
def test_answers_the_loop_did_not_make_export_from_the_store(tmp_path, invoke, monkeypatch, case):
    """Judge grades come after the loop; reused answers come before it."""
    samples, mocks = make_samples(20)
    grades = {s["dialogue_id"]: "Score: 4" for s in samples}
    (tmp_path / "grades.json").write_text(json.dumps(grades), encoding="utf-8")
    judged = {**HELPFUL, "judge_model": "claude-haiku-4-5", "judge_responses": "grades.json"}
    extra = {"metrics": [judged]} if case == "judge" else {"cache": True}
    config = write_experiment(tmp_path, samples, mocks, **extra)
    if case == "cache":  # a first run whose answers the second reuses
        assert invoke("run", "--config", str(config), "--quiet", "--run-id", "one").exit_code == 0
    calls = []
    monkeypatch.setattr(
        exprof.run.runner, "export_run", lambda *a, **k: calls.append(a[1]) or REAL_EXPORT(*a, **k)
    )
    result = invoke("run", "--config", str(config), "--quiet", "--run-id", "two")
    assert result.exit_code == 0, result.output
    assert calls == ["two"]
    out = tmp_path / "runs" / "two"
    assert leftovers(out) == []
    if case == "judge":
        scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
        assert [s["helpful"] for s in scores] == [4] * 20  # graded after the loop


def test_a_folder_taken_meanwhile_is_refused_at_the_end(tmp_path, invoke, monkeypatch):
    """Someone writes into the run's export folder while it runs: the streamed files are
    not put beside theirs, exactly as the export from the store refuses the folder."""
    config = write_experiment(tmp_path, *make_samples(30))
    out = tmp_path / "runs" / "exp"
    add = exprof.export.StreamedExport.add

    def add_then_intrude(self, sample, events):
        (out / "notes.txt").write_text("mine", encoding="utf-8")
        add(self, sample, events)

    monkeypatch.setattr(exprof.export.StreamedExport, "add", add_then_intrude)
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 1
    assert "not empty and not an export of run 'exp'" in result.stderr
    assert "the run is recorded" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
