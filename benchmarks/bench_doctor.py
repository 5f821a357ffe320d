"""Peak RSS and wall time of `exprof doctor` on a one-run store and on a store holding
the same run several times: doctor checks one run at a time, so its memory must follow
the largest run, not the store.

    python benchmarks/bench_doctor.py --samples 20000 --runs 5
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
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-bench-doctor-"))
    try:
        config = generate(args.samples, work / "data")
        result: dict[str, object] = {"machine": machine(), "samples_per_run": args.samples}
        for n in range(1, args.runs + 1):
            timed(["run", "--config", str(config), "--quiet"], work)
            if n in (1, args.runs):
                wall, rss, _ = timed(["doctor"], work)
                result[f"doctor_{n}_runs"] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss)}
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
