"""The commands end to end through click's CliRunner, on the shipped sample and variants."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, make_samples, write_experiment
from exprof.export import FILES
from exprof.store.events import SampleFailed

GOLDEN = REPO / "tests" / "golden" / "demo_run"


def test_sample_run_matches_golden_exports(sample_config, invoke, tmp_path):
    result = invoke("run", "--config", str(sample_config), "--quiet")
    assert result.exit_code == 0, result.output
    assert "run id: demo_run" in result.stdout
    assert result.stderr == "run demo_run complete\n"
    for name in FILES:
        assert (tmp_path / "runs" / "demo_run" / name).read_bytes() == (GOLDEN / name).read_bytes()


def test_export_again_gives_the_same_bytes(sample_config, invoke, tmp_path):
    invoke("run", "--config", str(sample_config), "--quiet")
    assert invoke("export", "demo_run", "--to", "again").exit_code == 0
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (GOLDEN / name).read_bytes()


def test_second_run_of_an_experiment_gets_a_suffix(sample_config, invoke):
    ids = []
    for _ in range(3):
        result = invoke("run", "--config", str(sample_config), "--quiet", "--format", "json")
        ids.append(json.loads(result.stdout)["run_id"])
    assert ids == ["demo_run", "demo_run-2", "demo_run-3"]
    assert (
        invoke("run", "--config", str(sample_config), "--run-id", "mine", "--quiet").exit_code == 0
    )


def test_summarize_from_store_and_from_export_agree(sample_config, invoke):
    invoke("run", "--config", str(sample_config), "--quiet")
    from_store = json.loads(invoke("summarize", "demo_run", "--format", "json").stdout)
    from_dir = json.loads(
        invoke("summarize", "--log-dir", "runs/demo_run", "--format", "json").stdout
    )
    assert from_store == from_dir == json.loads((GOLDEN / "summary.json").read_text())


def test_every_format_parses(sample_config, invoke):
    invoke("run", "--config", str(sample_config), "--quiet")
    table = invoke("summarize", "demo_run").stdout.splitlines()
    assert table[0].split() == ["metric", "value"]
    assert table[2].split() == ["fact_coverage", "0.8889"]
    markdown = invoke("summarize", "demo_run", "--format", "markdown").stdout.splitlines()
    assert markdown[0].startswith("| metric") and set(markdown[1]) <= set("|-: ")
    assert all(line.startswith("|") and line.endswith("|") for line in markdown)
    rows = list(csv.reader(io.StringIO(invoke("summarize", "demo_run", "--format", "csv").stdout)))
    assert rows[:4] == [
        ["metric", "value"],
        ["fact_coverage", "0.8889"],
        ["refusal_rate", "0.3333"],
        ["geometric_mean", "0.7698"],
    ]


def test_metrics_key_orders_the_table(tmp_path, invoke):
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path / "e", samples, mocks, metrics=["geometric_mean"])
    table = invoke("run", "--config", str(config), "--quiet").stdout.splitlines()
    assert table[2].split()[0] == "geometric_mean"
    assert table[3].split()[0] == "fact_coverage"


def test_runs_lists_status_and_headline_metrics(sample_config, invoke):
    invoke("run", "--config", str(sample_config), "--quiet")
    rows = json.loads(invoke("runs", "--format", "json").stdout)
    assert len(rows) == 1
    row = rows[0]
    del row["created"]
    assert row == {
        "run_id": "demo_run",
        "experiment": "demo_run",
        "model": "claude-3-opus",
        "mode": "mock",
        "status": "complete",
        "done": "3/3",
        "fact_coverage": 0.8889,
        "refusal_rate": 0.3333,
        "geometric_mean": 0.7698,
        "next step": "",
    }


def test_missing_mock_entry_is_a_failed_sample_not_a_crash(tmp_path, invoke):
    samples, mocks = make_samples(5, missing_every=4)  # d00000 and d00004 have no answer
    config = write_experiment(tmp_path / "e", samples, mocks)
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 1
    assert result.stderr == "2 sample(s) failed; retry them with: exprof resume exp\n"
    summary = json.loads(result.stdout)
    assert (summary["samples_completed"], summary["samples_failed"]) == (3, 2)
    assert summary["status"] == "incomplete"
    assert summary["failures_by_class"] == {"MockResponseMissing": 2}
    responses = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text().splitlines()
    assert [json.loads(r)["dialogue_id"] for r in responses] == ["d00001", "d00002", "d00003"]
    from exprof.store.engine import Store, store_url

    store = Store.open(store_url(None, "runs"))
    failures = [e.payload for e in store.events("exp", types=(SampleFailed,))]
    assert failures[0]["message"] == (
        "no mock response for dialogue_id 'd00000' in mock_responses.json"
    )


def test_unicode_round_trips_into_the_logs(tmp_path, invoke):
    text = 'Grüße, 東京 🚀 — \u2028 "quoted" \\ back'
    samples = [{"dialogue_id": "ü-1", "system": text, "user": text, "required_facts": ["東京"]}]
    mocks = {"ü-1": {"completion": text, "metadata": {"note": text}}}
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    request = json.loads((tmp_path / "runs" / "exp" / "requests.jsonl").read_text("utf-8"))
    response = json.loads((tmp_path / "runs" / "exp" / "responses.jsonl").read_text("utf-8"))
    assert request["prompt"] == {"system": text, "user": text}
    assert response == {
        "dialogue_id": "ü-1",
        "completion": text,
        "model": "claude-3-opus",  # from the config: the mock answer has none
        "temperature": 0.5,
        "note": text,
    }


def test_jsonl_dataset(tmp_path, invoke):
    samples, mocks = make_samples(4)
    folder = tmp_path / "e"
    config = write_experiment(folder, samples, mocks, dataset_path="d.jsonl")
    (folder / "d.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n\n")
    (folder / "mock_responses.json").replace(folder / "mock_responses.json")
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert json.loads(result.stdout)["samples_completed"] == 4


def test_relative_paths_fall_back_to_the_current_directory(tmp_path, invoke):
    samples, mocks = make_samples(2)
    write_experiment(tmp_path / "data", samples, mocks)
    config = tmp_path / "configs" / "c.yaml"
    config.parent.mkdir()
    config.write_text(
        "experiment_id: x\nmodel: m\nmax_tokens: 5\ntemperature: 0\n"
        "dataset_path: data/dialogues.json\n"
    )
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0


def test_summary_json_on_stdout_only(sample_config, invoke):
    result = invoke("run", "--config", str(sample_config), "--quiet", "--format", "json")
    assert json.loads(result.stdout)["geometric_mean"] == 0.7698


@pytest.mark.parametrize("argv", [["--help"], ["summarize", "--help"]])
def test_python_dash_m_works(argv):
    result = subprocess.run([sys.executable, "-m", "exprof", *argv], capture_output=True, text=True)
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def _modules_after(argv: list[str], cwd) -> set[str]:
    script = (
        "import sys\nfrom exprof.cli import main\n"
        f"sys.argv = ['exprof', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MODULES', *(m for m in ('anthropic', 'alembic', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd)
    marker = [line for line in result.stdout.splitlines() if line.startswith("MODULES")]
    return set(marker[-1].split()[1:])


def test_mock_paths_import_neither_the_sdk_nor_alembic_nor_numpy_once_at_head(
    sample_config, tmp_path
):
    assert "anthropic" not in _modules_after(
        ["run", "--config", str(sample_config), "--quiet"], tmp_path
    )
    for argv in (
        ["summarize", "demo_run"],
        ["runs"],
        ["export", "demo_run"],
        ["--help"],
        ["run", "--config", str(sample_config), "--quiet"],
    ):
        assert _modules_after(argv, tmp_path) == set(), argv


def test_grader_passes_on_the_sample():
    result = subprocess.run(
        [sys.executable, str(REPO / "grader" / "grade.py")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["status"] == "pass"
    assert len(report["checks"]) == 13


def test_grader_fails_a_tampered_export(sample_config, invoke, tmp_path):
    invoke("run", "--config", str(sample_config), "--quiet")
    summary_path = tmp_path / "runs" / "demo_run" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["fact_coverage"] = 0.95
    summary_path.write_text(json.dumps(summary))
    result = subprocess.run(
        [sys.executable, str(REPO / "grader" / "grade.py"), "--log-dir", "runs/demo_run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["status"] == "fail"
    assert [c["check"] for c in report["checks"] if not c["ok"]] == ["summary equals recomputation"]


def test_grader_runs_and_grades_the_config_it_is_given(sample_config, tmp_path):
    """--config X without --log-dir runs X, not the sample, and grades against X."""
    other = sample_config.parent / "other.yaml"
    text = sample_config.read_text().replace("temperature: 0.2", "temperature: 0.5")
    other.write_text(text.replace("experiment_id: demo_run", "experiment_id: other"))
    result = subprocess.run(
        [sys.executable, str(REPO / "grader" / "grade.py"), "--config", str(other)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "pass" and len(report["checks"]) == 12  # the sample: 13


def test_the_spec_the_code_cites_is_shipped():
    spec = REPO / "docs" / "SPEC.md"
    assert spec.is_file()
    headings = set(re.findall(r"^## (.+)$", spec.read_text(encoding="utf-8"), re.M))
    for path in [*(REPO / "exprof").rglob("*.py"), REPO / "grader" / "grade.py"]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?<!docs/)SPEC\.md", text), (
            f"{path}: cites SPEC.md, not docs/SPEC.md"
        )
        for section in re.findall(r'docs/SPEC\.md, "([^"]+)"', text):
            assert any(h.startswith(section) for h in headings), (path, section)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_done_total_errors_and_rate_on_a_terminal():
    from exprof.render import Progress

    stream = _Terminal()
    progress = Progress(10, stream=stream)
    progress.update(5, 1, "in-flight limit 8")
    progress.close()
    lines = stream.getvalue().split("\r")[1:]
    assert lines[0].startswith("[###############...............] 5/10 errors 1 ")
    assert lines[0].endswith("/s in-flight limit 8")
    assert lines[-1].endswith("\n")
    quiet, piped = _Terminal(), io.StringIO()
    for stream_, kwargs in ((quiet, {"quiet": True}), (piped, {})):
        bar = Progress(10, stream=stream_, **kwargs)
        bar.update(5, 0)
        bar.close()
    assert quiet.getvalue() == piped.getvalue() == ""  # --quiet, or not a terminal


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv"])
def test_runs_never_prints_none(tmp_path, invoke, fmt):
    """A run without custom metrics beside one with them, and a run stopped before any
    answer: every empty cell is the tables' one marker, in every format."""
    samples, mocks = make_samples(3)
    plain = write_experiment(tmp_path / "a", samples, mocks, experiment_id="plain")
    custom = write_experiment(
        tmp_path / "b",
        samples,
        mocks,
        experiment_id="custom",
        metrics=["fact_coverage", {"name": "n", "type": "length", "unit": "words", "max": 9}],
    )
    empty = write_experiment(tmp_path / "c", samples, {}, experiment_id="empty")
    for config in (plain, custom, empty):
        invoke("run", "--config", str(config), "--quiet")
    shown = invoke("runs", "--format", fmt)
    assert shown.exit_code == 0, shown.output
    assert "None" not in shown.stdout
    assert "n=" in shown.stdout  # the custom run's mean is there; the others are "-"
