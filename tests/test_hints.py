"""Every command exprof prints for the user to paste works when pasted back: it names the
store the printing command used, and a budget-stopped run's carries a budget that lets
it finish."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from click.testing import CliRunner
from test_matrix import matrix_config

from conftest import make_samples, write_experiment
from exprof import hints
from exprof.cli import cli

HINT = re.compile(r"exprof [^`\n]+")
STORES = {  # where the store is, as each test names it
    "output-dir": ("--output-dir", "elsewhere"),
    "db": ("--db", "stores/one.db"),
}


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def hint_in(text: str) -> str:
    """The last command printed in `text`."""
    found = HINT.findall(text)
    assert found, text
    return found[-1].rstrip(")")


def paste(hint: str, env: dict[str, str] | None = None):
    words = shlex.split(hint)
    assert words[0] == "exprof"
    quiet = ["--quiet"] if words[1] == "resume" else []
    return invoke(*words[1:], *quiet, env=env)


@pytest.mark.parametrize("where", STORES)
def test_a_budget_stop_prints_a_resume_that_finishes_the_run(tmp_path, where):
    flags = STORES[where]
    config = write_experiment(tmp_path / "exp", *make_samples(30), budget_usd=0.01)
    first = invoke("run", "--config", str(config), "--yes", *flags, "--quiet")
    assert first.exit_code == 1 and "budget reached" in first.stderr
    hint = hint_in(first.stderr)
    assert shlex.join(flags) in hint and "--budget-usd" in hint
    # `runs` says the same: a plain resume would stop again at once.
    listing = invoke("runs", *flags, "--format", "json")
    [row] = json.loads(listing.stdout)
    assert row["next step"] == hint
    done = paste(hint)
    assert done.exit_code == 0, done.output
    assert "run exp complete" in done.stderr


def test_an_experiment_budget_stop_prints_a_resume_that_finishes_it(tmp_path):
    config = matrix_config(tmp_path, n=10, budget_usd=0.012)
    first = invoke("run", "--config", str(config), "--yes", "--output-dir", "out", "--quiet")
    assert first.exit_code == 1
    hint = hint_in(first.stderr)
    assert hint.startswith("exprof resume exp --budget-usd ") and hint.endswith(" --output-dir out")
    done = paste(hint)
    assert done.exit_code == 0, done.output
    assert "experiment exp complete" in done.stderr


def test_failed_samples_and_missing_exports_hints_reach_the_store(tmp_path):
    config = write_experiment(tmp_path / "exp", *make_samples(4, missing_every=3))
    first = invoke("run", "--config", str(config), "--output-dir", "out", "--quiet")
    assert first.exit_code == 1
    hint = hint_in(first.stderr)
    assert hint == "exprof resume exp --output-dir out"
    again = paste(hint)  # the mock still has no answer for them: failed again, not "no run"
    assert again.exit_code == 1 and again.stderr.endswith(f"retry them with: {hint}\n")

    (tmp_path / "out" / "exp" / "summary.json").unlink()
    [row] = json.loads(invoke("runs", "--output-dir", "out", "--format", "json").stdout)
    assert row["next step"] == "exprof resume exp --output-dir out"  # failed samples first


def test_export_missing_hint(tmp_path):
    config = write_experiment(tmp_path / "exp", *make_samples(3))
    assert invoke("run", "--config", str(config), "--output-dir", "out", "--quiet").exit_code == 0
    (tmp_path / "out" / "exp" / "summary.json").unlink()
    [row] = json.loads(invoke("runs", "--output-dir", "out", "--format", "json").stdout)
    assert row["next step"] == "exprof export exp --output-dir out"
    assert paste(row["next step"]).exit_code == 0
    assert (tmp_path / "out" / "exp" / "summary.json").exists()


def test_an_unknown_run_points_at_runs_of_the_same_store(tmp_path):
    config = write_experiment(tmp_path / "exp", *make_samples(3))
    invoke("run", "--config", str(config), "--db", "one.db", "--quiet")
    missing = invoke("summarize", "nope", "--db", "one.db")
    assert missing.exit_code == 2
    hint = hint_in(missing.stderr)
    assert hint == "exprof runs --db one.db"
    listed = paste(hint)
    assert listed.exit_code == 0 and "exp" in listed.stdout


def test_a_store_from_exprof_db_is_left_to_the_shell(tmp_path):
    env = {"EXPROF_DB": str(tmp_path / "env.db")}
    config = write_experiment(tmp_path / "exp", *make_samples(30), budget_usd=0.01)
    first = invoke("run", "--config", str(config), "--yes", "--quiet", env=env)
    hint = hint_in(first.stderr)
    assert "--db" not in hint and "--output-dir" not in hint
    assert paste(hint, env=env).exit_code == 0


def test_a_password_is_never_printed():
    hints.use_store("runs", None)
    assert hints.command("resume", "a b") == "exprof resume 'a b'"
    invoke("runs", "--db", "postgresql+psycopg://me:s3cret@127.0.0.1:1/x")
    assert hints.command("runs") == "exprof runs --db 'postgresql+psycopg://me:***@127.0.0.1:1/x'"


@pytest.mark.parametrize(
    "spent, limit, done, owed, expected",
    [(0.01, 0.01, 10, 30, 0.045), (0.0, 0.0, 0, 5, 0.01), (0.5, 1.0, 100, 100, 2.0)],
)
def test_budget_to_finish(spent, limit, done, owed, expected):
    assert hints.budget_to_finish(spent, limit, done, owed) == expected
