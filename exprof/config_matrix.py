"""The config's `matrix:`: the parameters a matrix may vary, and each one's values,
checked as its top-level key would be."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from exprof import knobs
from exprof.config_values import check_integer, check_string, describe, resolve_lazily
from exprof.errors import ExprofError

# The parameters a matrix may vary, and the most cells run without --yes.
MATRIX_KEYS = ("model", "max_tokens", "system", "mock_responses_path", *knobs.KNOBS)
# Matrix keys whose values are named (a list gets names, a mapping gives them): the cell
# name and the recorded params carry the short name, the config's matrix the value.
NAMED_MATRIX_KEYS = ("system", "mock_responses_path")
MAX_CELLS = 24
# The short name of a named matrix value, which its cells' names and params carry.
CELL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


def parse_matrix(value: object, where: str, base: Path) -> dict[str, Any]:
    """`matrix:` as {parameter: [values]}, or for system {name: text}; every value is
    checked as its top-level key would be, and an error names the key and the value."""
    if not isinstance(value, dict) or not value:
        raise ExprofError(f"{where}: must be a mapping of parameter to a list of values")
    out: dict[str, Any] = {}
    for key, values in value.items():
        at = f"{where}.{key}"
        if key not in MATRIX_KEYS:
            hint = difflib.get_close_matches(str(key), MATRIX_KEYS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ExprofError(
                f"{at}: {str(key)!r} cannot vary (one of {', '.join(MATRIX_KEYS)}){suggestion}"
            )
        if key == "system":
            out[key] = _matrix_systems(values, at)
            continue
        if key == "mock_responses_path":
            out[key] = _matrix_mocks(values, at, base)
            continue
        if not isinstance(values, list) or not values:
            raise ExprofError(f"{at}: must be a non-empty list of values")
        checked: list[Any] = []
        for i, item in enumerate(values):
            item_at = f"{at}[{i}]"
            if key == "model":
                checked.append(check_string(item, item_at))
            elif key in knobs.KNOBS:
                checked.append(knobs.parse(key, item, item_at, base))
            else:
                checked.append(check_integer(item, item_at, minimum=1))
            if checked[-1] in checked[:-1]:
                raise ExprofError(f"{item_at}: {item!r} is listed twice")
        out[key] = checked
    return out


def _matrix_systems(values: object, at: str) -> dict[str, str]:
    """A list of system prompts (named s1, s2, ...) or a mapping of short name to text."""
    if isinstance(values, list) and values:
        values = {f"s{i + 1}": text for i, text in enumerate(values)}
    if not isinstance(values, dict) or not values:
        raise ExprofError(f"{at}: must be a non-empty list of prompts or a mapping name -> text")
    out: dict[str, str] = {}
    for name, text in values.items():
        _check_cell_name(name, at)
        if not isinstance(text, str):
            raise ExprofError(f"{at}.{name}: must be a string, got {describe(text)}")
        out[name] = text
    return out


def _matrix_mocks(values: object, at: str, config_dir: Path) -> dict[str, str]:
    """Mock answer files, each cell answering from one: a mapping of short name to path,
    or a list of paths named by their file stems (`cheap.json` is the cell `mock-cheap`)."""
    if isinstance(values, list) and values:
        named = {}
        for i, item in enumerate(values):
            text = check_string(item, f"{at}[{i}]")
            named[Path(text).stem] = text
        if len(named) < len(values):
            raise ExprofError(f"{at}: two files share a name; give a mapping name -> path")
        values = named
    if not isinstance(values, dict) or not values:
        raise ExprofError(f"{at}: must be a non-empty list of paths or a mapping name -> path")
    out: dict[str, str] = {}
    for name, item in values.items():
        _check_cell_name(name, at)
        out[name] = str(resolve_lazily(check_string(item, f"{at}.{name}"), config_dir))
    return out


def _check_cell_name(name: object, at: str) -> None:
    """Refuse a short name that CELL_NAME_RE does not match."""
    if not isinstance(name, str) or not CELL_NAME_RE.fullmatch(name):
        raise ExprofError(
            f"{at}: name {name!r} must be letters, digits, '_' or '-' (at most 32 chars)"
        )
