"""A 1,000,000-sample batch run through the fake server: batches, memory, ingestion rate.

    python benchmarks/bench_batch.py --samples 1000000

The fake server (tests/fake_batches.py) runs in its own process. exprof runs with
`--batch`: the run splits into batches of at most 100,000 requests, submits them,
polls, ingests the shuffled JSONL results and exports. Reports the batches created,
exprof's peak RSS, and the ingestion rate: results recorded per second of time spent
ingesting (from each batch's first recorded answer to its batch_ended event).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from bench_run import machine  # noqa: E402
from generate import generate  # noqa: E402

from exprof.store.engine import Store, store_url  # noqa: E402


def ingestion(work: Path) -> tuple[int, float]:
    """(results recorded, seconds spent ingesting), from the events' timestamps."""
    store = Store.open(store_url(None, work / "runs"))
    results, seconds = 0, 0.0
    first: float | None = None
    for stored in store.events("bench", types=("request_sent", "batch_ended")):
        if stored.type == "request_sent":
            results += 1
            first = first if first is not None else stored.created_at
        elif first is not None:
            seconds += stored.created_at - first
            first = None
    return results, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--processing-s", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-batch-bench-"))
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "fake_batches.py"),
            "--processing-s",
            str(args.processing_s),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO / "tests",
    )
    try:
        config = generate(args.samples, work / "data")
        with config.open("a", encoding="utf-8") as f:
            f.write("batch: true\nbatch_poll_s: 0.5\n")
        url = server.stdout.readline().strip() if server.stdout else ""
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-bench", "ANTHROPIC_BASE_URL": url}
        env["PYTHONPATH"] = str(REPO)
        argv = [sys.executable, "-m", "exprof", "run", "--config", str(config), "--quiet"]
        start = time.perf_counter()
        subprocess.run(
            argv + ["--format", "json"], env=env, cwd=work, check=True, stdout=subprocess.DEVNULL
        )
        wall = time.perf_counter() - start
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with urllib.request.urlopen(f"{url}/v1/messages/batches/stats") as response:
            stats = json.loads(response.read())
        results, seconds = ingestion(work)
        print(
            json.dumps(
                {
                    "machine": machine(),
                    "samples": args.samples,
                    "batches_created": stats["created"],
                    "requests_billed": stats["billed"],
                    "wall_s": round(wall, 1),
                    "peak_rss_mb": round(rss_mb),
                    "results_ingested": results,
                    "ingestion_results_per_s": round(results / seconds) if seconds else None,
                },
                indent=2,
            )
        )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
