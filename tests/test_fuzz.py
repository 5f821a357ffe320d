"""Hypothesis over the CLI layer. Random flags and values for every command
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
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_experiment
from exprof.cli import cli
from exprof.config import load_config
from exprof.dataset import load_dataset
from exprof.errors import ExprofError

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


FUZZ_EXAMPLES = int(os.environ.get("EXPROF_FUZZ_EXAMPLES", "300"))  # CI: 300 each


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


config_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "experiment_id": json_values
            | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
            "model": json_values,
            "max_tokens": json_values,
            "temperature": json_values | st.floats(0, 1),
            "dataset_path": json_values | st.just("d.json"),
            "metrics": json_values,
            "concurrency": json_values,
            "pricing": json_values,
        },
    )
    | json_values
)


sample_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "dialogue_id": json_values | st.text(min_size=1, max_size=5),
            "system": json_values | st.text(max_size=5),
            "user": json_values | st.text(min_size=1, max_size=5),
            "required_facts": json_values | st.lists(st.text(max_size=5), max_size=3),
        },
    )
    | json_values
)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=config_like, as_text=st.booleans(), garbage=st.binary(max_size=30))
def test_config_loader_fuzz(tmp_path, value, as_text, garbage):
    (tmp_path / "d.json").write_text('[{"dialogue_id": "a", "system": "", "user": "u"}]')
    path = tmp_path / "c.yaml"
    if as_text:
        path.write_text(yaml.safe_dump(value), encoding="utf-8")
    else:
        path.write_bytes(yaml.safe_dump(value).encode() + garbage)
    try:
        load_config(path)
    except ExprofError as exc:
        assert "\n" not in exc.message and exc.exit_code == 2


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(items=st.lists(sample_like, max_size=5) | json_values, jsonl=st.booleans())
def test_dataset_loader_fuzz(tmp_path, items, jsonl):
    path = tmp_path / ("d.jsonl" if jsonl else "d.json")
    if jsonl and isinstance(items, list):
        path.write_text("\n".join(json.dumps(i) for i in items), encoding="utf-8")
    else:
        path.write_text(json.dumps(items), encoding="utf-8")
    try:
        samples = load_dataset(path)
    except ExprofError as exc:
        assert "\n" not in exc.message and exc.exit_code == 2
    else:
        assert samples and len({s.dialogue_id for s in samples}) == len(samples)
