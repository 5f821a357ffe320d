"""The checks of a config's single values: strings, integers, numbers, choices, and the
paths it names. Each error names the key (`where`) and the value it got."""

from __future__ import annotations

import math
from pathlib import Path

from exprof.errors import ExprofError
from exprof.strict_json import MAX_INT


def resolve_path(value: str, config_dir: Path, where: str) -> Path:
    """Relative paths: the config's folder first, then the current directory."""
    path = Path(value).expanduser()
    if path.is_absolute():
        if not path.exists():
            raise ExprofError(f"{where}: {path} not found")
        return path
    tried = [config_dir / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    raise ExprofError(f"{where}: {value!r} not found; tried {tried[0]} and {tried[1]}")


def resolve_lazily(value: str, config_dir: Path) -> Path:
    """The mock file is only needed in mock mode, so a missing one is reported there."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for candidate in (config_dir / path, Path.cwd() / path):
        if candidate.exists():
            return candidate.resolve()
    return (config_dir / path).resolve()


def type_name(value: object) -> str:
    return {bool: "a boolean", list: "a list", dict: "a mapping", str: "a string"}.get(
        type(value), type(value).__name__
    )


def check_string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExprofError(f"{where}: must be a non-empty string, got {describe(value)}")
    return value


def check_integer(value: object, where: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExprofError(f"{where}: must be an integer, got {describe(value)}")
    if value < minimum or value > (MAX_INT if maximum is None else maximum):
        raise ExprofError(
            f"{where}: must be an integer {_bound(minimum, maximum, value)}, got {value}"
        )
    return value


def check_number(value: object, where: str, minimum: float, maximum: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExprofError(f"{where}: must be a number, got {describe(value)}")
    if not math.isfinite(value):  # YAML's .nan and .inf
        raise ExprofError(f"{where}: must be a finite number, got {value}")
    if value < minimum or value > (MAX_INT if maximum is None else maximum):
        raise ExprofError(
            f"{where}: must be a number {_bound(minimum, maximum, value)}, got {value}"
        )
    return float(value) if isinstance(value, float) else value


def _bound(minimum: float, maximum: float | None, value: float) -> str:
    """The range a number must lie in: every number from outside stays below 2**63,
    which is named only to a value beyond it."""
    if maximum is not None:
        return f"in [{minimum:g}, {maximum:g}]"
    return f">= {minimum:g}" if value < minimum else f">= {minimum:g} and below 2**63"


def check_choices(value: object, where: str, allowed: tuple[str, ...]) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ExprofError(f"{where}: must be a non-empty list drawn from {', '.join(allowed)}")
    for item in value:
        if item not in allowed:
            raise ExprofError(f"{where}: {item!r} is not one of {', '.join(allowed)}")
    return list(value)


def describe(value: object) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type_name(value)} {text}" if not isinstance(value, int | float) else text
