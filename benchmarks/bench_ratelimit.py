"""Live runs at the rate limit: exprof against the bare SDK, on a fake server with token buckets.

    python benchmarks/bench_ratelimit.py --samples 1500 --latency 0.05 --concurrency 32

Two rows: requests-bound (--rpm) and output-token-bound (--otpm set below what --rpm
allows, so output tokens bind first). Each side gets a fresh fake server (its own
process, buckets full at the start). Reports the rate achieved against the binding limit
(from the server's first to its last success), the requests answered 429, and the
samples that failed. The bare SDK sends with its defaults (two retries, honouring
retry-after) and a semaphore for concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_run import machine  # noqa: E402
from generate import generate  # noqa: E402

BARE_SDK = """
import asyncio, json, sys, anthropic
async def main():
    data = json.load(open(sys.argv[1]))
    client = anthropic.AsyncAnthropic()
    sem = asyncio.Semaphore(int(sys.argv[2]))
    async def one(d):
        async with sem:
            await client.messages.create(model="claude-3-opus", max_tokens=200,
                system=d["system"], messages=[{"role": "user", "content": d["user"]}])
    results = await asyncio.gather(*(one(d) for d in data), return_exceptions=True)
    print(json.dumps({"failed": sum(isinstance(r, BaseException) for r in results)}))
asyncio.run(main())
"""


def start_fake(latency: float, limits: dict[str, int]) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, str(REPO / "tests" / "fake_anthropic.py"), "--latency", str(latency)]
    for name, value in limits.items():
        argv += [f"--{name}", str(value)]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip() if server.stdout else ""
    return server, url


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as answer:  # noqa: S310 (127.0.0.1)
        return json.loads(answer.read())


def one_side(side: str, config: Path, work: Path, args: argparse.Namespace, limits: dict) -> dict:
    server, url = start_fake(args.latency, limits)
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-bench", "ANTHROPIC_BASE_URL": url}
    try:
        if side == "exprof":
            argv = [sys.executable, "-m", "exprof", "run", "--config", str(config), "--quiet"]
            argv += ["--concurrency", str(args.concurrency), "--format", "json"]
            argv += ["--output-dir", str(work / "runs"), "--run-id", f"r{len(limits)}"]
            done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True)
            failed = json.loads(done.stdout)["samples_failed"]
        else:
            dialogues = str(config.parent / "dialogues.json")
            argv = [sys.executable, "-c", BARE_SDK, dialogues, str(args.concurrency)]
            done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True)
            failed = json.loads(done.stdout)["failed"]
        seen = stats(url)
    finally:
        server.terminate()
        server.wait()
    span = (seen["last_success"] or 0) - (seen["first_success"] or 0)
    if "otpm" in limits:
        binding, limit, used = "otpm", limits["otpm"], seen["output_tokens"]
    else:
        binding, limit, used = "rpm", limits["rpm"], seen["successes"]
    achieved = used / span * 60 if span > 0 else 0.0
    return {
        "side": side,
        "binding": f"{binding} {limit}",
        "achieved_per_min": round(achieved),
        "achieved_over_limit": round(achieved / limit, 3),
        "requests": seen["requests"],
        "answered_429": seen["rate_limited"],
        "share_429": round(seen["rate_limited"] / max(seen["requests"], 1), 4),
        "samples_failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--otpm", type=int, default=20000, help="for the token-bound row")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-ratelimit-bench-"))
    try:
        config = generate(args.samples, work / "data")
        rows = []
        for limits in ({"rpm": args.rpm}, {"rpm": args.rpm, "otpm": args.otpm}):
            for side in ("exprof", "bare SDK"):
                row = one_side(side, config, work, args, limits)
                rows.append({"machine": machine(), "samples": args.samples, **row})
                shutil.rmtree(work / "runs", ignore_errors=True)
        print(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
