"""What a reference on the command line names: an export folder, a run, or an experiment.

`summarize`, `compare`, `report` and `rescore` all take a name and ask this module what
it is. The order is one rule for all of them:

1. a folder holding `summary.json` is an export folder (where the command reads exports);
2. a run id in the store is that run;
3. a matrix experiment's id is that experiment (where the command handles experiments);
4. any other experiment id is its latest run (where the command accepts that);

and anything else is one `Error:` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exprof import hints
from exprof.errors import ExprofError


@dataclass(frozen=True)
class ExportRef:
    """An export folder: its `summary.json` and `scores.jsonl` stand for the run."""

    path: Path


@dataclass(frozen=True)
class RunRef:
    """A run in the store (named by its id, or by its experiment's id: the latest run)."""

    store: Any
    run_id: str


@dataclass(frozen=True)
class ExperimentRef:
    """A matrix experiment in the store: its record lists its cells."""

    store: Any
    experiment_id: str


Ref = ExportRef | RunRef | ExperimentRef


def is_export_dir(ref: str) -> bool:
    path = Path(ref)
    try:
        return path.is_dir() and (path / "summary.json").exists()
    except (OSError, ValueError):  # a name too long for a path, or one holding NUL
        return False


def resolve(
    ref: str,
    store_factory: Callable[[], Any],
    *,
    exports: bool = True,
    experiments: bool = True,
    latest: bool = True,
) -> Ref:
    """What `ref` names, among the kinds the caller accepts: `exports` (export folders),
    `experiments` (matrix experiments as such) and `latest` (an experiment id as its
    latest run). A run id is always accepted; the store is opened only when `ref` is not
    an export folder."""
    if exports and is_export_dir(ref):
        return ExportRef(Path(ref))
    store = store_factory()
    if store.run_exists(ref):
        return RunRef(store, ref)
    if experiments and store.experiment_record(ref) is not None:
        return ExperimentRef(store, ref)
    found = store.latest_run_of(ref) if latest else None
    if found is not None:
        return RunRef(store, found)
    if not exports and not latest:  # a command that takes run ids: the store's own error
        store.require_run(ref)
    raise ExprofError(
        f"{store.location}: no run, experiment or export directory named {ref!r} "
        f"(see `{hints.command('runs')}`)"
    )


def run_id_of(ref: str, store: Any) -> str:
    """The run id a command that works on one stored run (rescore) is given."""
    found = resolve(ref, lambda: store, exports=False, experiments=False, latest=False)
    assert isinstance(found, RunRef)
    return found.run_id
