"""Time `exprof compare` of two 100k-sample mock runs with 10,000 bootstrap resamples.

    python benchmarks/bench_compare.py --samples 100000

Targets (issue #5): <= 2 s wall and <= 300 MB peak RSS, for the whole command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import machine, timed  # noqa: E402
from generate import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-compare-bench-"))
    try:
        a = generate(args.samples, work / "a", seed=1, experiment_id="a")
        b = generate(args.samples, work / "b", seed=2, experiment_id="b")
        timed(["run", "--config", str(a), "--quiet"], work)
        timed(["run", "--config", str(b), "--quiet"], work)
        runs = [timed(["compare", "a", "b", "--format", "json"], work) for _ in range(3)]
        wall, rss, out = sorted(runs)[1]
        dirs = timed(["compare", "runs/a", "runs/b", "--format", "json"], work)
        result = json.loads(out)
        print(
            json.dumps(
                {
                    "machine": machine(),
                    "samples_each": args.samples,
                    "resamples": result["statistics"]["resamples"],
                    "compare_store_runs_wall_s": round(wall, 3),
                    "compare_store_runs_peak_rss_mb": round(rss, 1),
                    "compare_export_dirs_wall_s": round(dirs[0], 3),
                    "compare_export_dirs_peak_rss_mb": round(dirs[1], 1),
                    "fact_coverage": result["metrics"]["fact_coverage"],
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
