"""Each command's --help agrees with the README's command table: the same options, the
defaults the table names, and the store flags every command takes."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from exprof.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
# Said once under the table, for every command (or every command that prints a table).
COMMON = {"--output-dir", "--db", "--format", "--quiet", "--help"}


def commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(commands(command, f"{prefix}{name} "))
        else:
            found[prefix + name] = command
    return found


def table() -> dict[str, list[str]]:
    """Command name -> the text of every table row about it."""
    section = README.read_text(encoding="utf-8").split("## Commands\n", 1)[1]
    rows: dict[str, list[str]] = {}
    for line in section.split("\n## ", 1)[0].splitlines():
        if not line.startswith("| `exprof"):
            continue
        for usage in re.findall(r"`exprof ([^`]*)`", line.split("|")[1]):
            words = usage.split()
            name = " ".join(words[:2]) if words[0] == "db" else words[0]
            rows.setdefault(name, []).append(line)
    return rows


def help_text(name: str) -> str:
    result = CliRunner().invoke(
        cli, [*name.split(), "--help"], terminal_width=10_000, max_content_width=10_000
    )
    assert result.exit_code == 0, result.output
    return result.output


def options(command: click.Command) -> set[str]:
    """Each option once: a --flag/--no-flag pair as its first form."""
    return {
        next(o for o in p.opts if o.startswith("--"))
        for p in command.params
        if isinstance(p, click.Option)
    } - COMMON


def test_every_command_is_in_the_table():
    assert sorted(table()) == sorted(commands(cli))


@pytest.mark.parametrize("name", sorted(commands(cli)))
def test_help_and_table_name_the_same_options(name):
    command = commands(cli)[name]
    rows = " ".join(table()[name])
    listed = set(re.findall(r"--[a-z][a-z-]*", " ".join(re.findall(r"`exprof [^`]*`", rows))))
    pairs = {
        flag: {flag, *p.secondary_opts}
        for p in command.params
        if isinstance(p, click.Option)
        for flag in p.opts
    }
    missing = {o for o in options(command) if not pairs[o] & listed}
    assert not missing, f"{name}: in --help, not in the README's table"
    unknown = {o for o in listed - COMMON if not any(o in forms for forms in pairs.values())}
    assert not unknown, f"{name}: in the README's table, not in --help"


@pytest.mark.parametrize("name", sorted(commands(cli)))
def test_help_gives_the_defaults_the_table_gives(name):
    text = help_text(name)
    for default in re.findall(r"`(<output-dir>/[^`]+)`", " ".join(table()[name])):
        assert default in text, f"{name} --help does not say {default}"
    assert "--output-dir" in text and "EXPROF_DB" in text


def groups(group: click.Group = cli, name: str = "exprof") -> dict[str, click.Group]:
    found = {name: group}
    for sub, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(groups(command, sub))
    return found


@pytest.mark.parametrize("name", sorted({**commands(cli), **groups()}))
def test_each_docstring_is_one_line_and_the_details_are_the_epilog(name):
    """A command's docstring is its one-line --help text; anything more it says is its
    epilog, which --help prints under the options."""
    command = {**commands(cli), **groups()}[name]
    assert command.callback is not None
    doc = (command.callback.__doc__ or "").strip()
    assert doc and "\n" not in doc, f"{name}: the docstring is not one line"
    if command.epilog:
        shown = " ".join(help_text("" if name == "exprof" else name).split())
        assert shown.endswith(" ".join(command.epilog.split())), f"{name}: epilog not shown"
