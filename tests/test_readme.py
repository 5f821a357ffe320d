"""The README's shell examples, run as pasted, in order, from a copy of the repository.

A ```bash or ```sh block is either a session (`$ command` lines, each followed by the
stdout the README shows for it, if any) or a script (every line a command). A block
whose first line is `# readme-test: skip (reason)` cannot run offline and is left out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
FENCE = re.compile(r"^( *)```([\w-]*)\n(.*?)^\1```", re.M | re.S)
SHELL = ("bash", "sh")
SKIP = "# readme-test: skip ("
MAX_SKIPPED = 3  # installs, PostgreSQL, live API: keep this set tiny


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, dedented."""
    return [
        (m.group(2), textwrap.dedent(m.group(3)).strip("\n"))
        for m in FENCE.finditer(README.read_text(encoding="utf-8"))
    ]


def steps(block: str) -> list[tuple[str, str | None]]:
    """(command, the stdout shown for it or None) for one shell block."""
    lines = block.splitlines()
    if not any(line.startswith("$ ") for line in lines):
        return [(line, None) for line in lines if line.strip() and not line.startswith("#")]
    found: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            found.append((line[2:], []))
        else:
            found[-1][1].append(line)
    return [(cmd, "\n".join(out) if out else None) for cmd, out in found]


def test_shell_blocks_are_marked():
    """Every block that shows a command is a shell block the test below runs, and only
    the few that need the network, a server or a key are skipped, each saying why."""
    skipped = 0
    for language, text in blocks():
        first = text.splitlines()[0]
        looks_like_shell = re.match(r"(\$ )?(exprof|pip|python|pytest) ", first)
        if language not in SHELL:
            assert not looks_like_shell, f"a ```{language} block holds commands: {first}"
        elif first.startswith("# readme-test"):
            assert first.startswith(SKIP) and first.endswith(")"), first
            skipped += 1
        else:  # a block that runs must not install: it would re-point this checkout's exprof
            assert "pip install" not in text, f"a block that runs installs: {first}"
    assert 0 < skipped <= MAX_SKIPPED


def test_readme_examples_run_as_pasted(tmp_path):
    repo = tmp_path / "exprof"
    shutil.copytree(
        REPO,
        repo,
        ignore=shutil.ignore_patterns(".git", "runs", "__pycache__", "*cache*", "*.egg-info"),
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "exprof"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m exprof "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "EXPROF_")) and k != "PYTHONPATH"
    }
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONPATH=str(repo))

    ran = 0
    for language, text in blocks():
        if language not in SHELL or text.startswith(SKIP):
            continue
        for command, shown in steps(text):
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, (command, done.stderr)
            if shown is not None:
                assert done.stdout.rstrip("\n") == shown, command
            ran += 1
    assert ran >= 5


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a\nb", [("a", None), ("b", None)]),
        ("# note\na  # why", [("a  # why", None)]),
        ("$ a\none\ntwo\n$ b", [("a", "one\ntwo"), ("b", None)]),
    ],
)
def test_steps(text, expected):
    assert steps(text) == expected
