"""Rescore a 100k-sample mock run with four custom metrics, with the fake Messages API
listening and the key set, and count the requests it receives (it should get none).

    python benchmarks/bench_rescore.py --samples 100000

Reports the source run's time, the rescore's time (start to exports written), and the
number of requests the fake server received during the rescore.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from bench_run import machine  # noqa: E402
from generate import generate  # noqa: E402

from fake_anthropic import FakeAnthropic  # noqa: E402

METRICS = """metrics:
  - fact_coverage
  - {name: cites, type: contains_any, values: ["key ideas", "according to"]}
  - {name: has_steps, type: regex, pattern: "^\\\\s*1\\\\.", flags: "m"}
  - {name: concise, type: length, unit: words, max: 40}
  - {name: valid_json, type: json}
"""


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one exprof command (CPU too: the machine is shared)."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "exprof", *args, "--quiet"],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = generate(args.samples, work / "exp")
        rescore = config.parent / "rescore.yaml"
        rescore.write_text(config.read_text() + METRICS, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
        env["PYTHONPATH"] = str(ROOT)
        run_s, run_cpu = timed(["run", "--config", str(config), "--run-id", "src"], work, env)
        with FakeAnthropic() as fake:  # listening, and the key set: any request would land
            env.update(ANTHROPIC_API_KEY="sk-ant-bench", ANTHROPIC_BASE_URL=fake.url)
            rescore_s, rescore_cpu = timed(["rescore", "src", "--config", str(rescore)], work, env)
            requests = fake.state.requests
        summary = json.loads((work / "runs" / "bench" / "summary.json").read_text())
    print(
        json.dumps(
            {
                "machine": machine(),
                "samples": args.samples,
                "source_run_s": round(run_s, 2),
                "source_run_cpu_s": round(run_cpu, 2),
                "rescore_s": round(rescore_s, 2),
                "rescore_cpu_s": round(rescore_cpu, 2),
                "rescore_samples_per_s": round(args.samples / rescore_s),
                "requests_during_rescore": requests,
                "metrics": summary["metrics"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
