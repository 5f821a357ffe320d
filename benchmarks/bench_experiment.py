"""Time a matrix experiment on the mock: 6 cells x 5 repeats x 2,000 samples (60,000
requests), then `exprof summarize EXPERIMENT_ID`, against a single run of the same
60,000 requests for the per-request overhead.

    python benchmarks/bench_experiment.py --samples 2000 --repeats 5

Target: the same per-request overhead as a single run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import machine, timed_cpu  # noqa: E402
from generate import generate  # noqa: E402

MATRIX = "matrix:\n  model: [claude-3-opus, claude-3-haiku]\n  temperature: [0.0, 0.5, 1.0]\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-exp-bench-"))
    try:
        config = generate(args.samples, work / "data", experiment_id="mx")
        config.write_text(config.read_text() + f"repeats: {args.repeats}\n" + MATRIX)
        requests = 6 * args.samples * args.repeats
        run = ["run", "--config", str(config), "--quiet", "--format", "json"]
        wall, rss, cpu, _ = timed_cpu(run, work)
        summaries = [timed_cpu(["summarize", "mx", "--format", "json"], work) for _ in range(3)]
        sum_wall = min(m[0] for m in summaries)
        sum_cpu = min(m[2] for m in summaries)
        # The same number of requests as one run: 6x the samples, the same repeats.
        single = generate(6 * args.samples, work / "single", experiment_id="one")
        single.write_text(single.read_text() + f"repeats: {args.repeats}\n")
        one_wall, one_rss, one_cpu, _ = timed_cpu(["run", "--config", str(single), "--quiet"], work)
        result = {
            "machine": machine(),
            "cells": 6,
            "repeats": args.repeats,
            "samples": args.samples,
            "requests": requests,
            "experiment_wall_s": round(wall, 2),
            "experiment_us_per_request": round(wall / requests * 1e6, 1),
            "experiment_cpu_s": round(cpu, 2),
            "experiment_cpu_us_per_request": round(cpu / requests * 1e6, 1),
            "experiment_peak_rss_mb": round(rss, 1),
            "summarize_experiment_s": round(sum_wall, 3),
            "summarize_experiment_cpu_s": round(sum_cpu, 3),
            "single_run_wall_s": round(one_wall, 2),
            "single_run_us_per_request": round(one_wall / requests * 1e6, 1),
            "single_run_cpu_s": round(one_cpu, 2),
            "single_run_cpu_us_per_request": round(one_cpu / requests * 1e6, 1),
            "experiment_over_single_cpu": round(cpu / one_cpu, 2),
            "single_run_peak_rss_mb": round(one_rss, 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
