"""A matrix's cells: every combination of `matrix:`'s values, and each cell's name,
run id, config, samples and mock answers.

A cell's name joins one `<key>-<value>` label per parameter; its run id is
`<experiment id>.<cell name>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Any

from exprof import knobs
from exprof.config import Config
from exprof.config_matrix import MAX_CELLS, NAMED_MATRIX_KEYS
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.metric_specs import with_schema_metric
from exprof.mock_responses import load_mock_responses

RUN_ID_MAX = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Cell:
    name: str
    params: dict[str, Any]  # the matrix's values; system by its short name
    run_id: str

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "run_id": self.run_id}


def plan_cells(config: Config, experiment_id: str) -> list[Cell]:
    """Every combination of the matrix's values, in the order the config lists them."""
    matrix = config.matrix or {}
    keys = list(matrix)
    choices = [list(matrix[k]) for k in keys]  # system: its names
    labels = [_labels(k, values) for k, values in zip(keys, choices, strict=True)]
    cells = []
    for combo in itertools.product(*(range(len(c)) for c in choices)):
        params = {k: choices[i][j] for i, (k, j) in enumerate(zip(keys, combo, strict=True))}
        name = ".".join(labels[i][j] for i, j in enumerate(combo))
        cells.append(Cell(name, params, cell_run_id(experiment_id, name)))
    return cells


def cell_configs(config: Config) -> list[tuple[str | None, Config]]:
    """Each cell's name and config; a config without a matrix is its one, unnamed."""
    if not config.matrix:
        return [(None, config)]
    return [(c.name, cell_config(config, c.params)) for c in plan_cells(config, "x")]


def cell_run_id(experiment_id: str, name: str) -> str:
    """`<experiment>.<cell>`, a valid run id: a long one is cut and given a digest of
    the whole so that two cells never share an id."""
    run_id = f"{experiment_id}.{name}"
    if len(run_id) <= RUN_ID_MAX:
        return run_id
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    return f"{run_id[: RUN_ID_MAX - 11]}.{digest}"


def cell_config(config: Config, params: dict[str, Any]) -> Config:
    """The config one cell runs with: the matrix's values in place, no matrix."""
    changes: dict[str, Any] = {"matrix": None}
    for key, value in params.items():
        if key in NAMED_MATRIX_KEYS:
            changes[key] = (config.matrix or {})[key][value]
        else:
            changes[key] = value
    if "output_schema" in params:
        changes["metrics"] = with_schema_metric(config.metrics, params["output_schema"])
    return dataclasses.replace(config, **changes)


def cell_samples(samples: list[Sample], config: Config) -> list[Sample]:
    """A matrix `system` replaces each sample's system prompt; the cell's dataset
    snapshot records the prompts as sent."""
    if config.system is None:
        return samples
    return [dataclasses.replace(s, system=config.system) for s in samples]


def cell_mocks(
    config: Config, cell: Cell, mode: str, mocks: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]] | None:
    """A matrix that varies `mock_responses_path` gives each mock cell its own answers."""
    if mode != "mock" or "mock_responses_path" not in cell.params:
        return mocks
    return load_mock_responses(config.mock_responses_path)


def check_size(config: Config, yes: bool) -> None:
    n = len(plan_cells(config, config.experiment_id))
    if n > MAX_CELLS and not yes:
        raise ExprofError(f"matrix: {n} cells is more than {MAX_CELLS}; pass --yes to run them all")


def _short(key: str) -> str:
    short = {"max_tokens": "mt", "system": "sys", "mock_responses_path": "mock", **knobs.SHORT}
    return short.get(key, key)


def _word(key: str, value: Any) -> str:
    """A value as its cell name spells it, before unsafe characters are replaced."""
    return str(knobs.describe(key, value) if key in knobs.KNOBS else value)


def _labels(key: str, values: list[Any]) -> list[str]:
    """`<key>-<value>` for each of one parameter's values, distinct even where a file
    system ignores case. A value an id can hold as it is keeps its plain label; one that
    had to be changed (`m/a`, `m a`, `mа` with a Cyrillic a) gets a digest of the value
    too, so that values differing only in such characters never share a cell."""
    labels = [_label(key, v, _word(key, v) != _safe(_word(key, v))) for v in values]
    folded = [label.casefold() for label in labels]
    labels = [
        _label(key, v, True) if folded.count(f) > 1 else label
        for v, label, f in zip(values, labels, folded, strict=True)
    ]
    if len({label.casefold() for label in labels}) < len(labels):  # only a crafted value
        raise ExprofError(f"matrix.{key}: two values would share a cell name; rename one")
    return labels


def _label(key: str, value: Any, digest: bool) -> str:
    label = f"{_short(key)}-{_safe(_word(key, value))}"
    if not digest:
        return label
    raw = _word(key, value).encode("utf-8", "surrogatepass")
    return f"{label}-{hashlib.sha256(raw).hexdigest()[:8]}"


def _safe(value: Any) -> str:
    return _UNSAFE.sub("-", str(value)).strip("-") or "x"
