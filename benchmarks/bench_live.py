"""exprof's live runner against a floor: bare AsyncAnthropic with a semaphore, same fake server.

    python benchmarks/bench_live.py --samples 2000 --latency 0.1 --concurrency 16 64

The fake server (tests/fake_anthropic.py) runs in its own process. Reports wall time,
the ratios to the floor and to the ideal N x latency / concurrency, and CPU seconds per
1,000 requests for each side.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_run import machine  # noqa: E402
from generate import generate  # noqa: E402

FLOOR = """
import asyncio, json, os, sys, anthropic
async def main():
    data = json.load(open(sys.argv[1]))
    client = anthropic.AsyncAnthropic(max_retries=0)
    sem = asyncio.Semaphore(int(sys.argv[2]))
    async def one(d):
        async with sem:
            await client.messages.create(model="claude-3-opus", max_tokens=200, system=d["system"],
                messages=[{"role": "user", "content": d["user"]}])
    await asyncio.gather(*(one(d) for d in data))
asyncio.run(main())
"""


def child_run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeat", type=int, default=3, help="report the median of this many")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-live-bench-"))
    config = generate(args.samples, work / "data")
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fake_anthropic.py"), "--latency", str(args.latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip() if server.stdout else ""
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-bench", "ANTHROPIC_BASE_URL": url}
        results = []
        for conc in args.concurrency:
            floors, runs = [], []
            for i in range(args.repeat):  # interleaved, so drift hits both sides alike
                floors.append(
                    child_run(
                        [
                            sys.executable,
                            "-c",
                            FLOOR,
                            str(config.parent / "dialogues.json"),
                            str(conc),
                        ],
                        env,
                        work,
                    )
                )
                runs.append(
                    child_run(
                        [
                            sys.executable,
                            "-m",
                            "exprof",
                            "run",
                            "--config",
                            str(config),
                            "--quiet",
                            "--concurrency",
                            str(conc),
                            "--run-id",
                            f"c{conc}-{i}",
                            "--output-dir",
                            "runs",
                        ],
                        env,
                        work,
                    )
                )
            floor_wall, floor_cpu = sorted(floors)[len(floors) // 2]
            ex_wall, ex_cpu = sorted(runs)[len(runs) // 2]
            ideal = args.samples * args.latency / conc
            results.append(
                {
                    "machine": machine(),
                    "runs_each": args.repeat,
                    "samples": args.samples,
                    "latency_s": args.latency,
                    "concurrency": conc,
                    "floor_wall_s": round(floor_wall, 2),
                    "exprof_wall_s": round(ex_wall, 2),
                    "exprof_over_floor": round(ex_wall / floor_wall, 3),
                    "exprof_over_ideal": round(ex_wall / ideal, 3),
                    "floor_cpu_s_per_1k": round(floor_cpu / args.samples * 1000, 2),
                    "exprof_cpu_s_per_1k": round(ex_cpu / args.samples * 1000, 2),
                }
            )
        print(json.dumps(results, indent=2))
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
