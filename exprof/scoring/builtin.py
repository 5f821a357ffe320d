"""The metric definitions (docs/SPEC.md, "Metrics"): per sample, then per run."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REFUSAL_MARKERS = ("i'm sorry", "cannot comply")


def fact_coverage(completion: str, facts: Iterable[str]) -> float:
    return score(completion, list(facts))[0]


def score(completion: str, facts: Sequence[str]) -> tuple[float, list[str]]:
    """A sample's fact coverage, and the facts its completion missed, by name: a fact is
    found when it is a case-insensitive substring of the completion."""
    text = completion.lower()
    missing = [fact for fact in facts if fact.lower() not in text]
    return ((len(facts) - len(missing)) / len(facts) if facts else 1.0), missing


def is_refusal(completion: str, metadata: Mapping[str, Any]) -> bool:
    if metadata.get("type") == "refusal":
        return True
    text = completion.lower().replace("\u2019", "'")
    return any(marker in text for marker in REFUSAL_MARKERS)


def geometric_mean(coverage: float, refusal_rate: float) -> float:
    return math.sqrt(max(coverage * (1.0 - refusal_rate), 0.0))


def aggregate(coverage_sum: float, refused: int, responded: int) -> dict[str, float | None]:
    """Run aggregates over the samples that have a response; None when there are none."""
    if responded == 0:
        return {"fact_coverage": None, "refusal_rate": None, "geometric_mean": None}
    coverage = coverage_sum / responded
    rate = refused / responded
    return {
        "fact_coverage": round(coverage, 4),
        "refusal_rate": round(rate, 4),
        "geometric_mean": round(geometric_mean(coverage, rate), 4),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in [0, 100])."""
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]
