"""Every value a command prints is safe for a terminal and a
spreadsheet, in every format; JSON stays exact JSON with the same values."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from conftest import write_experiment
from exprof.render import render, safe_text

# Escape sequences and control characters a hostile model name or dialogue id can carry:
# OSC (set the window title, or write a hyperlink), CSI (clear the screen, move the
# cursor), C1 CSI, BEL, backspace, carriage return, newline, DEL, bidi overrides.
HOSTILE = (
    "\x1b]0;pwned\x07"
    "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\"
    "\x1b[2J\x1b[H"
    "\x9b31m"
    "\x08\r\n\t\x7f\x85"
    "\u202etxt.exe\u2066\u2028"
)
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FORMATS = ["table", "markdown", "csv", "json"]


@pytest.fixture
def hostile_runs(tmp_path, invoke):
    samples = [
        {"dialogue_id": f"{HOSTILE}{i}", "system": "", "user": "u", "required_facts": ["f"]}
        for i in range(12)
    ]
    mocks = {s["dialogue_id"]: {"completion": "f", "metadata": {}} for s in samples}
    config = write_experiment(tmp_path / "e", samples, mocks, model=f"=cmd|{HOSTILE}")
    assert invoke("run", "--config", str(config), "--quiet", "--run-id", "a").exit_code == 0
    mocks = {s["dialogue_id"]: {"completion": "no", "metadata": {}} for s in samples}
    config = write_experiment(tmp_path / "e2", samples, mocks, model=f"+x{HOSTILE}")
    assert invoke("run", "--config", str(config), "--quiet", "--run-id", "b").exit_code == 0
    return config


COMMANDS = {
    "run": lambda cfg: ["run", "--config", str(cfg), "--quiet"],
    "summarize": lambda cfg: ["summarize", "a"],
    "summarize-log-dir": lambda cfg: ["summarize", "--log-dir", "runs/b"],
    "runs": lambda cfg: ["runs"],
    "compare": lambda cfg: ["compare", "a", "b"],
    "compare-dirs": lambda cfg: ["compare", "runs/a", "runs/b"],
}


def _no_raw_controls(text: str) -> None:
    lines = text.split("\n")
    for line in lines:
        assert not UNSAFE.search(line), repr(line)
        assert "\r" not in line and "\x1b" not in line


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_printed_value_is_escaped(hostile_runs, invoke, command, fmt):
    result = invoke(*COMMANDS[command](hostile_runs), "--format", fmt)
    assert result.exit_code in (0, 1), result.output
    _no_raw_controls(result.stdout)
    _no_raw_controls(result.stderr)
    if fmt == "json":
        data = json.loads(result.stdout)  # exact JSON, with the exact values
        assert any(HOSTILE in text for text in _strings(data))
    else:
        assert "\\x1b]0;pwned\\x07" in result.stdout  # shown, visibly, not run
    if fmt == "csv":
        for row in csv.reader(io.StringIO(result.stdout)):
            for cell in row:
                assert cell[:1] not in ("=", "+", "@") and not (
                    cell.startswith("-") and cell != "-" and not _number(cell)
                ), cell


def _strings(data):
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_error_lines_are_escaped(tmp_path, invoke):
    result = invoke("summarize", "--log-dir", f"x{HOSTILE}")
    assert result.exit_code == 2
    _no_raw_controls(result.stderr.rstrip("\n"))
    assert result.stderr.startswith("Error: x\\x1b]0;pwned\\x07")


def test_safe_text_escapes_each_control_visibly():
    assert safe_text("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert safe_text("\x9b\x7f\x00") == "\\x9b\\x7f\\x00"
    assert safe_text("\u202e\u2028") == "\\u202e\\u2028"
    assert safe_text("ü 東京 ’ é") == "ü 東京 ’ é"  # printable text is left alone
    assert safe_text(safe_text(HOSTILE)) == safe_text(HOSTILE)


@pytest.mark.parametrize(
    "cell, shown",
    [
        ("=1+2", "'=1+2"),
        ("+1", "+1"),  # a plain number is a number, not a formula
        ("-cmd", "'-cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-", "-"),
        ("-0.5", "-0.5"),
        ("1e-3", "1e-3"),
        ("safe", "safe"),
    ],
)
def test_csv_neutralises_formulas(cell, shown):
    out = render([[cell, -0.25]], ["c", "n"], "csv")
    assert out == f"c,n\n{shown},-0.25"


def test_json_output_is_exact():
    value = {"m": HOSTILE, "n": [1.5, None, True]}
    text = render([], [], "json", value)
    assert json.loads(text) == value
    _no_raw_controls(text)


@pytest.mark.parametrize("value", ["a|b", "|", "a | b | c", "x\\|y"])
def test_a_pipe_in_a_value_cannot_forge_a_markdown_column(value):
    """A `|` in a dialogue id or a model name made a markdown table one column
    wider on its row; each is escaped, so every row has the header's columns."""
    text = render([[value, value, 1]], ["id", "model", "n"], "markdown")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [len(re.findall(r"(?<!\\)\|", row)) for row in rows]
    assert len(set(cells)) == 1 and cells[0] == 4, text


def test_compare_markdown_keeps_its_columns_with_pipes_in_ids(tmp_path, invoke):
    samples = [
        {"dialogue_id": f"id|{i}|x", "system": "", "user": "u", "required_facts": ["f"]}
        for i in range(12)
    ]
    for run_id, answer in (("a", "f"), ("b", "no")):
        mocks = {s["dialogue_id"]: {"completion": answer, "metadata": {}} for s in samples}
        config = write_experiment(tmp_path / run_id, samples, mocks)
        assert invoke("run", "--config", str(config), "--quiet", "--run-id", run_id).exit_code == 0
    out = invoke("compare", "a", "b", "--format", "markdown").stdout
    tables: list[list[int]] = [[]]
    for line in out.splitlines():
        if line.startswith("|"):
            tables[-1].append(len(re.findall(r"(?<!\\)\|", line)))
        elif tables[-1]:
            tables.append([])
    assert any("id\\|0\\|x" in line for line in out.splitlines())
    assert all(len(set(t)) == 1 for t in tables if t), out
