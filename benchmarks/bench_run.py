"""Time `exprof run` on a synthetic mock dataset, then `exprof summarize`, and size the store.

    python benchmarks/bench_run.py --samples 100000
    python benchmarks/bench_run.py --samples 100000 --db postgresql+psycopg://USER:PASS@HOST/DB

Targets (issue #2): >= 10,000 samples/s end to end with exports, peak RSS <= 300 MB,
`summarize` <= 0.5 s on the 100k run and <= 0.4 s on the 3-sample sample, and a store
no larger than 3x the exported JSONL bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate import generate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# A small launcher runs exprof and reports its peak RSS: measured from this benchmark's
# own (large) process, a forked child would inherit our high-water mark.
LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:], stderr=subprocess.DEVNULL)\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'\\n{peak} {code}')\n"
)


def timed(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one exprof command."""
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "exprof", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    out, _, last = result.stdout.rstrip("\n").rpartition("\n")
    peak_kb, code = map(int, last.split())
    if code not in (0, 1):
        raise SystemExit(f"exprof {' '.join(argv)} failed")
    return wall, peak_kb / 1024, out


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--db", help="An (empty) store URL, e.g. PostgreSQL [default: SQLite].")
    args = parser.parse_args()
    db = ["--db", args.db] if args.db else []
    work = Path(tempfile.mkdtemp(prefix="exprof-bench-"))
    try:
        config = generate(args.samples, work / "data")
        run = ["run", "--config", str(config), "--quiet", "--format", "json", *db]
        wall, rss, _ = timed(run, work)
        sum_wall = min(timed(["summarize", "bench", *db], work)[0] for _ in range(3))
        shutil.copytree(REPO / "configs", work / "configs")
        shutil.copytree(REPO / "data", work / "data_sample")
        sample_cfg = work / "configs" / "sample_experiment.yaml"
        sample_cfg.write_text(sample_cfg.read_text().replace("../data/", "../data_sample/"))
        timed(["run", "--config", str(sample_cfg), "--quiet", *db], work)
        small_wall = min(timed(["summarize", "demo_run", *db], work)[0] for _ in range(5))
        exports = work / "runs" / "bench"
        jsonl = sum((exports / f).stat().st_size for f in ("requests.jsonl", "responses.jsonl"))
        store = sum(p.stat().st_size for p in (work / "runs").glob("exprof.db*"))
        result = {
            "machine": machine(),
            "backend": "postgresql" if args.db else "sqlite",
            "samples": args.samples,
            "run_wall_s": round(wall, 2),
            "samples_per_s": round(args.samples / wall),
            "run_peak_rss_mb": round(rss, 1),
            "summarize_100k_s": round(sum_wall, 3),
            "summarize_sample_s": round(small_wall, 3),
            "export_jsonl_bytes": jsonl,
        }
        if not args.db:  # a server's size is not one file's
            result.update(store_bytes=store, store_over_jsonl=round(store / jsonl, 2))
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
