"""A judge metric that cannot grade says so: a mock run without its judge_responses is
refused up front, a resume grades with the replies added since, and the same grader
requests are priced alike on the run and on the resume."""

from __future__ import annotations

import json

from conftest import make_samples, write_experiment

HELPFUL = {
    "name": "helpful",
    "type": "judge",
    "rubric": "Rate 1-5 how helpful the answer is.",
    "judge_model": "claude-haiku-4-5",
    "judge_responses": "grades.json",
}


def announcement(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("judge metrics:")]
    return line


def test_a_mock_run_without_judge_responses_is_refused_before_it_starts(tmp_path, invoke):
    config = write_experiment(tmp_path / "e", *make_samples(3), metrics=["fact_coverage", HELPFUL])
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {config}: metrics[1] (helpful): judge_responses: {tmp_path / 'e' / 'grades.json'}"
        " not found; the mock grades from it (or run with --live)\n"
    )
    assert not (tmp_path / "runs").exists()


def test_a_rescore_of_a_mock_run_without_judge_responses_is_refused(tmp_path, invoke):
    config = write_experiment(tmp_path / "e", *make_samples(3))
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    only = tmp_path / "judge.yaml"
    only.write_text(json.dumps({"metrics": [{**HELPFUL, "judge_responses": "none.json"}]}))
    result = invoke("rescore", "exp", "--config", str(only), "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {only}: metrics[0] (helpful): judge_responses: ")
    assert invoke("runs", "--format", "json").stdout.count('"run_id"') == 1


def test_resume_grades_with_replies_added_since_at_the_same_price(tmp_path, invoke):
    folder = tmp_path / "e"
    config = write_experiment(folder, *make_samples(3), metrics=[HELPFUL])
    (folder / "grades.json").write_text("{}")
    first = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["metric_errors"] == {"helpful": 3}
    (folder / "grades.json").write_text(
        json.dumps({f"d0000{i}": f"Score: {i + 3}" for i in range(3)})
    )
    again = invoke("resume", "exp", "--quiet", "--format", "json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["metrics"] == {"helpful": 4.0} and "metric_errors" not in summary
    # The same three grader requests, announced at the same estimated cost.
    assert announcement(first.stderr) == announcement(again.stderr)
    assert announcement(first.stderr).startswith("judge metrics: 3 grader request(s)")
