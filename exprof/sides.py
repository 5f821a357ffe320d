"""One side of a comparison: a run's per-sample scores, in dataset order, and its summary.

A side may be a run id, an experiment id (its latest run), or an export directory; a
sample's repeats are averaged, so a comparison pairs samples, not repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exprof.errors import ExprofError
from exprof.files import jsonl_lines, read_text
from exprof.jsonio import loads
from exprof.refs import ExportRef, RunRef, resolve
from exprof.scoring import custom, recorded
from exprof.stops import is_cut_off
from exprof.store.record import load_started


@dataclass
class Side:
    """One run's per-sample scores, in dataset order, and its summary."""

    label: str
    summary: dict[str, Any]
    ids: list[str]
    coverage: np.ndarray
    refused: np.ndarray
    missing: dict[str, list[str]] = field(default_factory=dict)  # filled for the top samples
    store: Any = None
    # Custom metric columns aligned with ids (a dict-valued metric as `name.key`); None
    # where a sample has no value.
    custom: dict[str, list[Any]] = field(default_factory=dict)
    cut_off: set[str] = field(default_factory=set)  # ids with an answer cut off

    def facts_missing(self, wanted: list[str]) -> dict[str, list[str]]:
        if self.store is None:
            return {d: self.missing.get(d, []) for d in wanted}
        return self.store.facts_missing(self.summary["run_id"], wanted)  # type: ignore[no-any-return]


def load_side(ref: str, store_factory: Any) -> Side:
    """A run id, an experiment id (latest run) or an export directory."""
    found = resolve(ref, store_factory, experiments=False)
    if isinstance(found, ExportRef):
        return _side_from_dir(found.path)
    assert isinstance(found, RunRef)  # experiments=False
    store, run_id = found.store, found.run_id
    rows = _average_repeats(store.sample_scores(run_id))
    from exprof.summary import run_summary

    summary = run_summary(store, run_id)
    ids = [r[0] for r in rows]
    return Side(
        run_id,
        summary,
        ids,
        np.fromiter((r[1] for r in rows), dtype=float, count=len(rows)),
        np.fromiter((r[2] for r in rows), dtype=float, count=len(rows)),
        store=store,
        custom=_custom_columns(
            recorded.per_sample(store, run_id, load_started(store, run_id).config), ids, summary
        ),
        cut_off=store.cut_off_ids(run_id) if summary.get("cut_off_rate") else set(),
    )


def _average_repeats(rows: list[tuple[str, float, bool]]) -> list[tuple[str, float, float]]:
    """One row per sample, its repeats averaged: coverage and refusal rate are
    then means over each sample's repeats, so compare pairs samples, not repeats."""
    sums: dict[str, list[float]] = {}
    for dialogue_id, coverage, refused in rows:
        acc = sums.setdefault(dialogue_id, [0.0, 0.0, 0])
        acc[0] += coverage
        acc[1] += refused
        acc[2] += 1
    return [(d, c / k, r / k) for d, (c, r, k) in sums.items()]


def _custom_columns(
    by_slot: dict[tuple[str, int], dict[str, Any]], ids: list[str], summary: dict[str, Any]
) -> dict[str, list[Any]]:
    """Custom metric columns aligned with `ids`, each sample's repeats averaged as its
    coverage is, so a metric is paired by sample too."""
    names = list(summary.get("metrics") or {})
    if not names:
        return {}
    by_id = recorded.per_dialogue(by_slot, names)
    return custom.columns((by_id.get(d, {}) for d in ids), names)


def _side_from_dir(path: Path) -> Side:
    from exprof.summary import read_exported_summary

    summary = read_exported_summary(path)
    scores_path = path / "scores.jsonl"
    scores: list[tuple[str, float, bool]] = []
    missing: dict[str, list[str]] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for lineno, line in jsonl_lines(read_text(scores_path, "scores")):
        try:
            row = loads(line)
            dialogue_id = row["dialogue_id"]
            # With repeats a line is one (sample, repeat): averaged below.
            rows[dialogue_id, int(row.get("repeat", 0))] = row
            scores.append((dialogue_id, float(row["fact_coverage"]), bool(row["refused"])))
            missing[dialogue_id] = list(row["facts_missing"])
        except (ValueError, KeyError, TypeError):
            raise ExprofError(f"{scores_path}: line {lineno}: not an exprof score line") from None
    averaged = _average_repeats(scores)
    ids = [r[0] for r in averaged]
    return Side(
        str(path),
        summary,
        ids,
        np.array([r[1] for r in averaged], dtype=float),
        np.array([r[2] for r in averaged], dtype=float),
        missing,
        custom=_custom_columns(rows, ids, summary),
        cut_off=_cut_off_in_dir(path) if summary.get("cut_off_rate") else set(),
    )


def _cut_off_in_dir(path: Path) -> set[str]:
    """The ids whose exported response says it was cut off (with metadata exported)."""
    found = set()
    responses = path / "responses.jsonl"
    for _, line in jsonl_lines(read_text(responses, "responses")):
        try:
            row = loads(line)
        except ValueError:
            raise ExprofError(f"{responses}: not JSON Lines") from None
        if isinstance(row, dict) and is_cut_off(row):
            found.add(str(row.get("dialogue_id")))
    return found
