"""Issue 9: Hypothesis over the CLI layer. Random flags and values for every command
(read from click itself, so a new command or option is fuzzed without editing this
file), over a real store with real runs. The only outcomes allowed: success, or exit 1
or 2 with an `Error:` line last, never a traceback; and after an exit 2 the store's
events and runs are exactly as before.

EXPROF_CLI_FUZZ_EXAMPLES sets the number of examples (CI: 150)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_experiment
from exprof.cli import cli

CLI_FUZZ_EXAMPLES = int(os.environ.get("EXPROF_CLI_FUZZ_EXAMPLES", "150"))

SAMPLES = [
    {"dialogue_id": f"d{i}", "system": "s", "user": "u", "required_facts": ["x"]} for i in range(3)
]
MOCKS = {s["dialogue_id"]: {"completion": "x", "metadata": {}} for s in SAMPLES}
NASTY = ["", "-", "--", "nope", "exprof.db", "a/../b", "\x1b[2J", "x\u2028y", "é", "..", "/"]
FILES = ["e/config.yaml", "e/bad.yaml", "e/dialogues.json", "runs", "runs/a", "runs/a/summary.json"]


def _commands() -> list[tuple[str, ...]]:
    """Every command path, group members included (`db upgrade`)."""
    out: list[tuple[str, ...]] = []
    for name, command in sorted(cli.commands.items()):
        if isinstance(command, click.Group):
            out += [(name, sub) for sub in sorted(command.commands)]
        else:
            out.append((name,))
    return out


def _command(path: tuple[str, ...]) -> click.Command:
    command: Any = cli
    for name in path:
        command = command.commands[name]
    return command


def _value(param: click.Parameter) -> st.SearchStrategy[str]:
    """A value for one parameter, drawn around its type's edges and beyond them."""
    kind = param.type
    nasty = st.sampled_from(NASTY) | st.text(max_size=6)
    if isinstance(kind, click.types.IntParamType):
        edges = st.sampled_from([0, 1, -1, 2, 99, 100, 2**31, 2**63, -(2**63), 10**30])
        return (edges | st.integers(-1000, 10**6)).map(str) | nasty
    if isinstance(kind, click.types.FloatParamType):
        edges = st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "0", "1", "-0.0", "0.5"])
        return edges | st.floats(allow_nan=True).map(repr) | nasty
    if isinstance(kind, click.Choice):
        return st.sampled_from([str(c) for c in kind.choices]) | nasty
    if param.name == "config_path":  # mostly the good config, so that runs do happen
        return st.sampled_from(["e/config.yaml"] * 6 + FILES) | nasty
    if param.name == "run_id" and isinstance(param, click.Option):
        return st.sampled_from(["c", "new", "a", "x" * 128, "exprof.db-wal"]) | nasty
    if param.name == "db":  # the store: the default's, another file, or not a store at all
        return st.sampled_from(["runs/exprof.db", "other.db", "e/dialogues.json", "runs", "x"])
    if isinstance(kind, click.Path) or param.name in ("config_path", "log_dir", "to_dir", "out"):
        return st.sampled_from(FILES + ["fresh", "e", "runs/b"]) | nasty
    return st.sampled_from(["a", "b", "exp", "runs/a", "runs/b"]) | nasty


@st.composite
def invocations(draw: st.DrawFn) -> list[str]:
    path = draw(st.sampled_from(_commands()))
    command = _command(path)
    args = list(path)
    for param in command.params:
        if isinstance(param, click.Argument):
            if param.required or draw(st.booleans()):
                args.append(draw(_value(param)))
            continue
        assert isinstance(param, click.Option)
        if param.name == "help" or not (param.required or draw(st.booleans())):
            continue
        if param.is_flag:
            names = param.opts + param.secondary_opts
            args.append(draw(st.sampled_from(names)))
        else:
            args += [draw(st.sampled_from(param.opts)), draw(_value(param))]
    order = draw(st.permutations(range(len(path), len(args))))
    # Shuffling may split an option from its value: that is a usage error, which is fine.
    return args if draw(st.booleans()) else list(path) + [args[i] for i in order]


def _dump(db: Path) -> Any:
    """The store's state as events and runs, read with sqlite3 (not through exprof)."""
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            events = conn.execute("SELECT id, run_id, seq, type, payload FROM events").fetchall()
            runs = conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # not a store: keep its bytes instead
        return (str(exc), db.read_bytes())
    return events, runs


@pytest.fixture
def fuzz_home(tmp_path):
    write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    (tmp_path / "e" / "bad.yaml").write_text("experiment_id: [\n", encoding="utf-8")
    runner = CliRunner()
    for run_id in ("a", "b"):
        result = runner.invoke(cli, ["run", "--config", "e/config.yaml", "--run-id", run_id])
        assert result.exit_code == 0, result.output
    return tmp_path


@settings(
    max_examples=CLI_FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=invocations())
def test_cli_fuzz(fuzz_home, args):
    stores = [fuzz_home / "runs" / "exprof.db", fuzz_home / "other.db"]
    before = [_dump(db) for db in stores]
    result = CliRunner().invoke(cli, args)
    shown = json.dumps(args)
    assert isinstance(result.exception, SystemExit | None), (shown, result.output)
    assert "Traceback" not in result.output, (shown, result.output)
    assert result.exit_code in (0, 1, 2), (shown, result.exit_code, result.output)
    if result.exit_code == 2:
        lines = result.stderr.strip().split("\n")
        assert lines[-1].startswith("Error: "), (shown, result.stderr)
        assert "\n" not in lines[-1]
        assert [_dump(db) for db in stores] == before, shown
