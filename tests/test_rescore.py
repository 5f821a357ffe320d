"""exprof rescore: recorded responses scored again with new metrics, with no API
call (the fake server counts), its source and config difference recorded, resumable."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from test_cli import _modules_after
from test_live import experiment
from test_resume import done_count, exprof, finish

from conftest import make_samples, write_experiment
from exprof.scoring import judge
from exprof.store.engine import Store, store_url
from exprof.store.events import (
    JudgeRequestSent,
    JudgeScored,
    RequestSent,
    RescoreStarted,
    ResponseReceived,
)
from exprof.store.record import iter_samples
from fake_anthropic import judge_score

CITES = {"name": "cites", "type": "contains_any", "values": ["fact1-", "fact3-"]}
SHORT = {"name": "short", "type": "length", "unit": "words", "max": 2}


def with_metrics(config: Path, name: str, metrics: list) -> Path:
    """A copy of `config` beside it with another metrics list."""
    settings = yaml.safe_load(config.read_text())
    settings["metrics"] = metrics
    path = config.parent / name
    path.write_text(json.dumps(settings))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rescore_of_a_live_run_makes_no_request(tmp_path, invoke, fake):
    server = fake()
    config = experiment(tmp_path, 20)
    result = invoke("run", "--config", str(config), "--quiet", "--run-id", "live")
    assert result.exit_code == 0, result.output
    sent = server.state.requests
    assert sent == 20
    rescored = with_metrics(config, "rescore.yaml", ["fact_coverage", CITES, SHORT])
    result = invoke("rescore", "live", "--config", str(rescored), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert server.state.requests == sent  # not one request
    summary = json.loads(result.stdout)
    assert summary["run_id"] == "exp" and summary["mode"] == "rescore"
    assert summary["rescore_of"] == "live"
    assert summary["metrics"] == {"cites": 0.1, "short": 0.0}  # d00001 and d00003 cite
    old, new = tmp_path / "runs" / "live", tmp_path / "runs" / "exp"
    # The same answers, metadata and all; the same summary but for the new scores.
    assert (new / "responses.jsonl").read_bytes() == (old / "responses.jsonl").read_bytes()
    assert (new / "requests.jsonl").read_bytes() == (old / "requests.jsonl").read_bytes()
    old_scores, new_scores = read_lines(old / "scores.jsonl"), read_lines(new / "scores.jsonl")
    assert [{k: s[k] for k in s if k not in ("cites", "short")} for s in new_scores] == old_scores
    assert [s["cites"] for s in new_scores] == [i in (1, 3) for i in range(20)]
    old_summary = json.loads((old / "summary.json").read_text())
    assert old_summary["input_tokens"] == summary["input_tokens"] > 0
    # The new run records its source and how its config differs.
    store = Store.open(store_url(None, tmp_path / "runs"))
    (event,) = list(store.events("exp", types=(RescoreStarted,)))
    assert event.payload["source_run_id"] == "live"
    assert list(event.payload["config_diff"]) == ["metrics"]
    assert event.payload["config_diff"]["metrics"]["a"] == [
        "fact_coverage",
        "refusal_rate",
        "geometric_mean",
    ]
    assert [
        m if isinstance(m, str) else m["name"] for m in event.payload["config_diff"]["metrics"]["b"]
    ] == [
        "fact_coverage",
        "cites",
        "short",
    ]
    sent_events = list(store.events("exp", types=(RequestSent,)))
    assert len(sent_events) == 20 and {e.payload["attempts"] for e in sent_events} == {0}


def test_compare_shows_what_the_new_scoring_changes(tmp_path, invoke):
    samples, mocks = make_samples(30)
    narrow = {**CITES, "values": ["no such words"]}
    config = write_experiment(tmp_path / "e", samples, mocks, metrics=[narrow])
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    wider = {**CITES, "values": ["no such words", "answer"]}
    rescored = with_metrics(config, "wider.yaml", [wider])
    result = invoke("rescore", "exp", "--config", str(rescored), "--quiet", "--run-id", "wide")
    assert result.exit_code == 0, result.output
    result = invoke("compare", "exp", "wide", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    cites = out["metrics"]["metrics.cites"]
    assert (cites["a"], cites["b"]) == (0.0, 1.0)  # "answer" is in every completion
    assert cites["verdict"] == "improved" and cites["mcnemar_p"] < 1e-6
    assert out["metrics"]["fact_coverage"]["delta"] == 0
    assert out["config_diff"]["fields"] == {}
    assert out["config_diff"]["notes"] == [
        "wide rescores exp's recorded responses with other metrics"
    ]


def test_unanswered_samples_stay_failed_and_unknown_runs_are_refused(tmp_path, invoke):
    samples, mocks = make_samples(12, missing_every=4)  # 3 samples without a mock answer
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 1
    result = invoke("rescore", "exp", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["samples_failed"] == 3
    assert json.loads(result.stdout)["failures_by_class"] == {"NoRecordedResponse": 3}
    result = invoke("rescore", "nope", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and "no run 'nope'" in result.stderr


def test_bad_metric_spec_in_rescore_writes_nothing(tmp_path, invoke):
    samples, mocks = make_samples(3)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    bad = with_metrics(config, "bad.yaml", [{"name": "x", "type": "regex", "pattern": "["}])
    result = invoke("rescore", "exp", "--config", str(bad), "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {bad}: metrics[0] (x): bad regex '['")
    assert [r["run_id"] for r in json.loads(invoke("runs", "--format", "json").stdout)] == ["exp"]


@pytest.mark.slow
def test_killed_rescore_resumes_to_the_uninterrupted_result(tmp_path, invoke):
    samples, mocks = make_samples(40_000, refuse_every=7)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet", "--run-id", "src").exit_code == 0
    rescored = with_metrics(config, "rescore.yaml", ["fact_coverage", CITES, SHORT])
    ref = invoke("rescore", "src", "--config", str(rescored), "--quiet", "--run-id", "ref")
    assert ref.exit_code == 0, ref.output
    db = tmp_path / "runs" / "exprof.db"
    before = done_count(db)
    proc = exprof("rescore", "src", "--config", str(rescored), "--run-id", "new", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while done_count(db) == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the rescore finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done_count(db) - before < 40_000  # caught mid-way
    code, err = finish(exprof("resume", "new", cwd=tmp_path))
    assert code == 0, err
    for name in ("requests.jsonl", "responses.jsonl", "scores.jsonl"):
        assert (tmp_path / "runs" / "new" / name).read_bytes() == (
            tmp_path / "runs" / "ref" / name
        ).read_bytes()
    new = json.loads((tmp_path / "runs" / "new" / "summary.json").read_text())
    ref_summary = json.loads((tmp_path / "runs" / "ref" / "summary.json").read_text())
    assert {**new, "run_id": "ref"} == ref_summary


def test_rescore_without_a_judge_never_imports_the_sdk(sample_config, tmp_path, invoke):
    assert invoke("run", "--config", str(sample_config), "--quiet").exit_code == 0
    argv = ["rescore", "demo_run", "--config", str(sample_config), "--quiet"]
    assert "anthropic" not in _modules_after(argv, tmp_path)
    assert (tmp_path / "runs" / "demo_run-2" / "scores.jsonl").read_bytes() == (
        tmp_path / "runs" / "demo_run" / "scores.jsonl"
    ).read_bytes()


# -- judge metrics ----------------------------------------------------------------------


def test_grader_replies_parse_to_scores():
    assert judge.parse_score("Score: 4") == 4.0
    assert judge.parse_score("The answer is fine.\nscore = 3.5") == 3.5
    assert judge.parse_score("5 - excellent") == 5.0
    assert judge.parse_score("Score: 2, no wait, Score: 3") == 3.0
    with pytest.raises(ValueError, match="no score"):
        judge.parse_score("I would rather not say")


HELPFUL = {"name": "helpful", "type": "judge", "rubric": "Rate 1-5 how helpful the answer is."}


def test_mock_judge_answers_from_judge_responses_and_records_each_exchange(tmp_path, invoke):
    samples, mocks = make_samples(3)
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "grades.json").write_text(
        json.dumps({"d00000": "Score: 5", "d00001": {"helpful": "2"}, "d00002": "no idea"})
    )
    entry = {**HELPFUL, "judge_model": "claude-haiku-4-5", "judge_responses": "grades.json"}
    config = write_experiment(folder, samples, mocks, metrics=[entry])
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        "judge metrics: 3 grader request(s) to claude-haiku-4-5, estimated ~$0.0"
    )
    summary = json.loads(result.stdout)
    assert summary["metrics"] == {"helpful": 3.5}
    assert summary["metric_errors"] == {"helpful": 1}
    scores = read_lines(tmp_path / "runs" / "exp" / "scores.jsonl")
    assert [s["helpful"] for s in scores] == [5.0, 2.0, None]
    assert scores[2]["metric_errors"] == {"helpful": "no score in the grader's reply 'no idea'"}
    store = Store.open(store_url(None, tmp_path / "runs"))
    asked = [e.payload for e in store.events("exp", types=(JudgeRequestSent,))]
    assert [(a["dialogue_id"], a["model"]) for a in asked] == [
        (f"d0000{i}", "claude-haiku-4-5") for i in range(3)
    ]
    assert "Rate 1-5 how helpful" in asked[0]["system"]
    assert "question 0" in asked[0]["user"] and mocks["d00000"]["completion"] in asked[0]["user"]
    replies = [e.payload["reply"] for e in store.events("exp", types=(JudgeScored,))]
    assert replies == ["Score: 5", "2", "no idea"]


def test_live_judge_goes_through_the_sdk_to_the_fake(tmp_path, invoke, fake):
    server = fake()
    config = experiment(tmp_path, 6, metrics=["fact_coverage", HELPFUL])
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "judge metrics: 6 grader request(s) to claude-3-opus" in result.stderr
    assert server.state.requests == 12  # 6 answers, then 6 grades
    graded = [
        s["body"] for s in server.state.seen if s["body"].get("system", "").startswith("You grade")
    ]
    assert len(graded) == 6 and {b["model"] for b in graded} == {"claude-3-opus"}
    expected = {}
    for body in graded:
        user = body["messages"][0]["content"]
        did = next(f"d{i:05d}" for i in range(6) if f"question {i} " in user)
        expected[did] = float(judge_score(user))
    scores = read_lines(tmp_path / "runs" / "exp" / "scores.jsonl")
    assert {s["dialogue_id"]: s["helpful"] for s in scores} == expected
    summary = json.loads(result.stdout)
    assert summary["metrics"]["helpful"] == round(sum(expected.values()) / 6, 4)


def test_rescore_with_a_judge_sends_only_the_grades_and_resumes_failed_ones(tmp_path, invoke, fake):
    server = fake(retry_after=0.01)
    config = experiment(tmp_path, 5, max_retries=0)
    assert invoke("run", "--config", str(config), "--quiet", "--run-id", "src").exit_code == 0
    assert server.state.requests == 5
    # One grade fails for good this time: the rest are recorded, and resume sends only it.
    store = Store.open(store_url(None, tmp_path / "runs"))
    answers = {
        e.payload["dialogue_id"]: e.payload["completion"]
        for e in store.events("src", types=(ResponseReceived,))
    }
    sample = next(s for s in iter_samples(store, "src") if s.dialogue_id == "d00002")
    (doomed,) = judge.tasks_for(
        [{**HELPFUL, "judge_model": "claude-3-opus", "max_tokens": 16}], sample, answers["d00002"]
    )
    server.state.always_fail.add(doomed.user)
    rescored = with_metrics(config, "judge.yaml", [HELPFUL])
    result = invoke("rescore", "src", "--config", str(rescored), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("judge metrics: 5 grader request(s) to claude-3-opus")
    assert server.state.requests == 10  # 5 grades, no answer sent again
    summary = json.loads(result.stdout)
    assert summary["metric_errors"] == {"helpful": 1}
    server.state.always_fail.clear()
    result = invoke("resume", summary["run_id"], "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "judge metrics: 1 grader request(s)" in result.stderr
    assert server.state.requests == 11
    resumed = json.loads(result.stdout)
    assert "metric_errors" not in resumed
    scores = read_lines(tmp_path / "runs" / summary["run_id"] / "scores.jsonl")
    assert all(isinstance(s["helpful"], float) for s in scores)
    result = invoke("resume", summary["run_id"], "--quiet")
    assert result.exit_code == 0 and server.state.requests == 11  # nothing owed


def test_rescore_of_a_run_with_failed_samples_points_at_the_source_not_a_resume_loop(
    tmp_path, invoke
):
    """A rescore's failed samples are those its source never answered: resuming the
    rescore would only fail them again. The hint sends the user to the source."""
    samples, mocks = make_samples(6, missing_every=3)  # d00000 and d00003 have no answer
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 1
    rescored = with_metrics(config, "more.yaml", ["fact_coverage", CITES])
    result = invoke("rescore", "exp", "--config", str(rescored), "--quiet", "--run-id", "re")
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "2 sample(s) have no answer in run exp to score: answer them with "
        "`exprof resume exp`, then rescore exp again"
    )
    again = invoke("resume", "re", "--quiet")  # a resume of the rescore says the same
    assert again.stderr.strip().splitlines()[-1] == last


def test_rescore_reads_a_metrics_only_file(tmp_path, invoke):
    """FILE may hold only `metrics` (and `pricing`): the rest is the source run's; the
    dataset it names need not exist any more. A whole config still works."""
    samples, mocks = make_samples(4)
    config = write_experiment(tmp_path / "exp", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    (tmp_path / "exp" / "dialogues.json").unlink()
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump({"metrics": ["fact_coverage", CITES]}))
    result = invoke("rescore", "exp", "--config", str(only), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["metrics"] == {"cites": 0.25} and summary["model"] == "claude-3-opus"
    store = Store.open(store_url(None, tmp_path / "runs"), readonly=True)
    rescored = [e.event for e in store.events(summary["run_id"], types=(RescoreStarted,))]
    assert list(rescored[0].config_diff) == ["metrics"]

    typo = tmp_path / "typo.yaml"
    typo.write_text("metric: [fact_coverage]\n")
    result = invoke("rescore", "exp", "--config", str(typo))
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {typo}: unknown key 'metric'; did you mean 'metrics'? "
        "(rescore reads only metrics, pricing)\n"
    )

    (tmp_path / "exp" / "dialogues.json").write_text(json.dumps(samples))
    whole = with_metrics(config, "whole.yaml", ["fact_coverage", CITES])
    result = invoke("rescore", "exp", "--config", str(whole), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"] == {"cites": 0.25}
