"""Prompt caching at scale: how many times each shared prefix is written, scheduled
against naive, and what the scheduling costs in wall time.

    python benchmarks/bench_cache.py --samples 2000 --prompts 4 --concurrency 32

2,000 samples share 4 system prompts of about 3,000 tokens (12,000 characters, the
fake's four characters a token) before user turns of a few words, on
claude-sonnet-4-5. Three runs, each against a fresh fake server (tests/fake_anthropic.py,
which caches as the API does, in its own process): caching off, breakpoints without
scheduling (`schedule: false`, naive), and scheduled. Reports the server's cache
writes and reads, the summary's hit rate and cost, and wall time against the run with
caching off.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
from bench_run import machine  # noqa: E402

WORDS = "storage index replica shard quorum lease journal snapshot compaction".split()
MODES = {
    "off": "off",
    "naive": {"ttl": "5m", "schedule": False},
    "scheduled": {"ttl": "5m"},
}


def write_experiment(out: Path, samples: int, prompts: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    systems = [
        f"You are reviewer {k}. " + " ".join(rng.choices(WORDS, k=1400)) for k in range(prompts)
    ]
    dialogues = [
        {
            "dialogue_id": f"d{i:06d}",
            "system": rng.choice(systems),
            "user": f"explain {rng.choice(WORDS)} briefly",
            "required_facts": [],
        }
        for i in range(samples)
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "dialogues.json").write_text(json.dumps(dialogues), encoding="utf-8")
    (out / "mock_responses.json").write_text("{}", encoding="utf-8")


def config_for(out: Path, mode: str) -> Path:
    path = out / f"{mode}.yaml"
    settings = {
        "experiment_id": mode,
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "dataset_path": "dialogues.json",
        "prompt_cache": MODES[mode],
    }
    path.write_text(json.dumps(settings), encoding="utf-8")
    return path


def one_run(work: Path, mode: str, latency: float, concurrency: int) -> dict:
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "fake_anthropic.py"),
            "--latency",
            str(latency),
            "--count-prefix",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip() if server.stdout else ""
        env = {
            **os.environ,
            "ANTHROPIC_API_KEY": "sk-ant-bench",
            "ANTHROPIC_BASE_URL": url,
            "PYTHONPATH": str(REPO),  # this checkout's exprof, whatever is installed
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "exprof",
                "run",
                "--config",
                str(config_for(work / "data", mode)),
                "--live",
                "--quiet",
                "--format",
                "json",
                "--concurrency",
                str(concurrency),
                "--output-dir",
                str(work / "runs"),
            ],
            env=env,
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        with urllib.request.urlopen(url + "/stats") as reply:  # noqa: S310 (our loopback fake)
            stats = json.load(reply)
    finally:
        server.terminate()
        server.wait()
    summary = json.loads(done.stdout)
    return {
        "mode": mode,
        "wall_s": round(wall, 2),
        "exprof_cpu_s": round(cpu, 2),
        "server_cache_writes": stats["cache_writes"],
        "server_cache_reads": stats["cache_reads"],
        "cache_hit_rate": summary["cache_hit_rate"],
        "cache_write_tokens": summary["cache_write_tokens"],
        "estimated_cost_usd": summary["estimated_cost_usd"],
        "cache_saving_usd": summary["cache_saving_usd"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-cache-bench-"))
    try:
        write_experiment(work / "data", args.samples, args.prompts)
        rows = [one_run(work, mode, args.latency, args.concurrency) for mode in args.modes]
        off = rows[0]["wall_s"]
        for row in rows:
            row["wall_over_off"] = round(row["wall_s"] / off, 3)
        print(
            json.dumps(
                {
                    "machine": machine(),
                    "samples": args.samples,
                    "prompts": args.prompts,
                    "latency_s": args.latency,
                    "concurrency": args.concurrency,
                    "runs": rows,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
