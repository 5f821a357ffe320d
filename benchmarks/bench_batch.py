"""A 1,000,000-sample batch run through the fake server: batches, memory, ingestion rate.

    python benchmarks/bench_batch.py --samples 1000000

The fake server (tests/fake_batches.py) runs in its own process. exprof runs with
`--batch`: the run splits into batches of at most 100,000 requests, submits them,
polls, ingests the shuffled JSONL results and exports. Reports the batches created,
exprof's wall and CPU time and peak RSS, and the ingestion rate: results recorded per
second of time spent ingesting (from each batch's first recorded answer to its
batch_ended event) and per CPU-second exprof spent in those windows (read from /proc
every 0.1 s), with the fake server's CPU in the same windows (it shares the 2 cores).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from exprof.store.events import BatchEnded, RequestSent

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from bench_run import machine  # noqa: E402

from exprof.store.engine import Store, store_url  # noqa: E402


def ingestion(work: Path) -> tuple[int, list[tuple[float, float]]]:
    """(results recorded, the ingestion windows), from the events' timestamps: each
    batch's from its first recorded answer to its batch_ended event."""
    store = Store.open(store_url(None, work / "runs"))
    results, windows = 0, []
    first: float | None = None
    for stored in store.events("bench", types=(RequestSent, BatchEnded)):
        if isinstance(stored.event, RequestSent):
            results += 1
            first = first if first is not None else stored.created_at
        elif first is not None:
            windows.append((first, stored.created_at))
            first = None
    return results, windows


def cpu_seconds(pid: int) -> float | None:
    """A live process's user+sys CPU seconds, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuTrace:
    """(epoch time, CPU seconds) of a process every 0.1 s, to find the CPU it spent in a
    window of time (bounded: it stops when the process ends)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples = pid, [(time.time(), 0.0)]
        self.thread = threading.Thread(target=self._trace, daemon=True)
        self.thread.start()

    def _trace(self) -> None:
        while (cpu := cpu_seconds(self.pid)) is not None:
            self.samples.append((time.time(), cpu))
            time.sleep(0.1)

    def at(self, when: float) -> float:
        k = bisect.bisect_right([t for t, _ in self.samples], when) - 1
        return self.samples[max(k, 0)][1]

    def within(self, windows: list[tuple[float, float]]) -> float:
        return sum(self.at(end) - self.at(start) for start, end in windows)


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
        # In a child process, so that this one stays small (a child forked from a large
        # parent starts with its RSS, and Linux keeps that high-water mark across exec).
        script = REPO / "benchmarks" / "generate.py"
        out = subprocess.run(
            [sys.executable, str(script), "--samples", str(args.samples), "--out", work / "data"],
            check=True,
            capture_output=True,
            text=True,
        )
        config = Path(out.stdout.strip())
        with config.open("a", encoding="utf-8") as f:
            f.write("batch: true\nbatch_poll_s: 0.5\n")
        url = server.stdout.readline().strip() if server.stdout else ""
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-bench", "ANTHROPIC_BASE_URL": url}
        env["PYTHONPATH"] = str(REPO)
        argv = [sys.executable, "-m", "exprof", "run", "--config", str(config), "--quiet"]
        start = time.perf_counter()
        load = os.getloadavg()[0]
        run = subprocess.Popen(
            argv + ["--format", "json"], env=env, cwd=work, stdout=subprocess.DEVNULL
        )
        run_cpu, server_cpu = CpuTrace(run.pid), CpuTrace(server.pid)
        # exprof's own usage: RUSAGE_CHILDREN would also count the generator's 1.8 GB.
        _, status, usage = os.wait4(run.pid, 0)
        run.returncode = os.waitstatus_to_exitcode(status)
        if run.returncode != 0:
            raise SystemExit(f"exprof run exited {run.returncode}")
        wall = time.perf_counter() - start
        with urllib.request.urlopen(f"{url}/v1/messages/batches/stats") as response:
            stats = json.loads(response.read())
        results, windows = ingestion(work)
        seconds = sum(end - start for start, end in windows)
        cpu = run_cpu.within(windows)
        print(
            json.dumps(
                {
                    "machine": machine(),
                    "load_average_at_start": round(load, 1),
                    "samples": args.samples,
                    "batches_created": stats["created"],
                    "requests_billed": stats["billed"],
                    "wall_s": round(wall, 1),
                    "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                    "peak_rss_mb": round(usage.ru_maxrss / 1024),
                    "results_ingested": results,
                    "ingestion_s": round(seconds, 1),
                    "ingestion_results_per_s": round(results / seconds) if seconds else None,
                    "ingestion_cpu_s": round(cpu, 1),
                    "ingestion_results_per_cpu_s": round(results / cpu) if cpu else None,
                    "server_cpu_s_while_ingesting": round(server_cpu.within(windows), 1),
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
