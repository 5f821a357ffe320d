"""What a sequential A/B run (exprof.versus) refuses, before anything is written: its
options, the two configs, and the metric the sequence follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from exprof.config import Config
from exprof.dataset import Sample
from exprof.dataset_stream import dataset_sha256
from exprof.errors import ExprofError
from exprof.scoring import judge
from exprof.versus_pairs import METRICS

# Custom metric types that score every answer true or false: in [0, 1] too.
BOOLEAN_TYPES = ("contains_all", "contains_any", "regex", "json", "length")


@dataclass(frozen=True)
class Options:
    metric: str = "fact_coverage"
    alpha: float = 0.05
    min_effect: float | None = None
    seed: int = 0


def check_versus(a: Config, b: Config, samples_a: list[Sample], samples_b: list[Sample]) -> None:
    """What a sequential A/B run refuses, before anything is written."""
    for name, config in (("--config", a), ("--versus", b)):
        if config.matrix:
            raise ExprofError(f"{name}: a sequential A/B run compares two configs, not a matrix")
        if config.batch:
            raise ExprofError(f"{name}: batch runs answer at once; --stop-when-decided needs live")
        if judge.specs(config.metrics):
            raise ExprofError(f"{name}: judge metrics are graded after the answers; drop them")
        if config.cache:
            raise ExprofError(f"{name}: cache: true is not supported with --stop-when-decided")
    if dataset_sha256(samples_a) != dataset_sha256(samples_b):
        raise ExprofError("--versus: the two configs must share a dataset (the same samples)")


def check_metric(metric: str, configs: tuple[Config, Config]) -> None:
    """The metric must be bounded, per sample in [0, 1]: a built-in one, or a custom
    metric both arms score with a boolean type."""
    if metric in METRICS:
        return
    for config in configs:
        spec = next(
            (m for m in config.metrics if isinstance(m, dict) and m["name"] == metric), None
        )
        if spec is None:
            names = ", ".join(METRICS)
            raise ExprofError(
                f"--metric: {metric!r} is not {names} or a custom metric of both arms"
            )
        if spec["type"] not in BOOLEAN_TYPES:
            raise ExprofError(
                f"--metric: {metric} is a {spec['type']} metric, with no known range; the "
                f"sequence needs one in [0, 1]: {', '.join(METRICS)}, or a custom metric of "
                f"type {', '.join(BOOLEAN_TYPES)}"
            )


def check_options(options: Options) -> None:
    if not 0 < options.alpha < 1:
        raise ExprofError("--alpha must lie strictly between 0 and 1")
    if options.min_effect is not None and not 0 < options.min_effect < 1:
        raise ExprofError("--min-effect must lie strictly between 0 and 1")
    if options.seed < 0:
        raise ExprofError("--seed must be 0 or more")
