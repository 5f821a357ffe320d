"""The sequential A/B test's error rates and savings by simulation, at full size.

    python benchmarks/bench_sequential.py --runs 1000 --pairs 2000

Each run pairs per-sample fact coverage (3 facts; a per-sample difficulty shared by
both arms) and checks the betting confidence sequence (exprof/sequential.py) after
every pair. Targets (issue #23):

- no true difference: "decided" in <= 5% of runs, up to 2,000 pairs; beside it, a
  fixed-n paired t test peeked at after every pair (from 10 on), which is far above;
- a true coverage difference of 0.15 on a 2,000-sample dataset: the median run stops
  after <= 40% of the pairs; the distribution of stopping points is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import machine  # noqa: E402

from exprof.sequential import simulate  # noqa: E402


def coverage_pairs(shift: float):
    def draw(rng: np.random.Generator, runs: int) -> np.ndarray:
        p = 0.85 * rng.beta(2, 2, size=runs)
        return rng.binomial(3, p + shift) / 3 - rng.binomial(3, p) / 3

    return draw


def stops(found: dict) -> dict:
    stop = found["stop"]
    return {
        "median": float(np.median(stop)),
        "median_share_of_pairs": round(float(np.median(stop)) / found["max_pairs"], 4),
        "percentiles_10_25_75_90_99": [float(v) for v in np.percentile(stop, [10, 25, 75, 90, 99])],
        "max": int(stop.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--effect", type=float, default=0.15)
    parser.add_argument("--min-effect", type=float, default=0.05)
    args = parser.parse_args()
    started = time.perf_counter()
    null = simulate(coverage_pairs(0.0), args.runs, args.pairs, seed=1)
    alt = simulate(coverage_pairs(args.effect), args.runs, args.pairs, seed=2)
    equiv = simulate(coverage_pairs(0.0), args.runs, args.pairs, min_effect=args.min_effect, seed=3)
    edge = simulate(
        coverage_pairs(args.min_effect), args.runs, args.pairs, min_effect=args.min_effect, seed=4
    )
    print(
        json.dumps(
            {
                "machine": machine(),
                "runs": args.runs,
                "pairs": args.pairs,
                "sequence": "hedged betting CS, Waudby-Smith & Ramdas (JRSS-B 2024)",
                "h0_decided_rate": null["decided_rate"],
                "h0_peeked_fixed_n_rate": null["peeked_fixed_n_rate"],
                f"effect_{args.effect}": {
                    "decided_rate": alt["decided_rate"],
                    "b_wins_rate": alt["b_wins_rate"],
                    "stop": stops(alt),
                },
                f"h0_min_effect_{args.min_effect}": {
                    "equivalent_rate": equiv["equivalent_rate"],
                    "decided_rate": equiv["decided_rate"],
                    "stop": stops(equiv),
                },
                f"true_difference_{args.min_effect}_equals_min_effect": {
                    "equivalent_rate (an error)": edge["equivalent_rate"],
                },
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
