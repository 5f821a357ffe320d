"""Kill a 100k-sample mock run at about 50% with SIGKILL, then time `exprof resume`.

    python benchmarks/bench_resume.py --samples 100000

Reports the time from starting `exprof resume` to its first new request being recorded
(an upper bound: the first commit holds a whole batch), the total resume time, and the
time a fresh run of just the remaining samples takes. Targets (issue #4): <= 1 s to the
first new request; resume total <= 1.1 x the fresh run of the remaining work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import machine  # noqa: E402
from generate import generate  # noqa: E402


def exprof(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    return subprocess.Popen(
        [sys.executable, "-m", "exprof", *args, "--quiet"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def done(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM samples WHERE status='ok'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-resume-bench-"))
    try:
        config = generate(args.samples, work / "data")
        db = work / "runs" / "exprof.db"
        proc = exprof(["run", "--config", str(config)], work)
        while done(db) < args.samples // 2 and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        remaining = args.samples - done(db)

        resume_start = time.time()
        exprof(["resume", "bench"], work).wait()
        resume_total = time.time() - resume_start
        conn = sqlite3.connect(db)
        resumed_id = conn.execute(
            "SELECT max(id) FROM events WHERE run_id='bench' AND type='run_resumed'"
        ).fetchone()[0]
        first_new = conn.execute(
            "SELECT min(created_at) FROM events WHERE id > ? AND type='request_sent'",
            (resumed_id,),
        ).fetchone()[0]
        conn.close()

        fresh_config = generate(remaining, work / "fresh", experiment_id="fresh")
        fresh_start = time.time()
        exprof(["run", "--config", str(fresh_config), "--output-dir", "fresh_runs"], work).wait()
        fresh_total = time.time() - fresh_start
        result = {
            "machine": machine(),
            "samples": args.samples,
            "remaining_at_kill": remaining,
            "resume_to_first_new_request_s": round(first_new - resume_start, 3),
            "resume_total_s": round(resume_total, 2),
            "fresh_run_of_remaining_s": round(fresh_total, 2),
            "resume_over_fresh": round(resume_total / fresh_total, 3),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
