"""The power `exprof plan`'s N gives, by simulation, at full size.

    python benchmarks/bench_plan.py --samples 2000 --trials 2000

Two correlated mock runs (B covers A's facts give or take one) are recorded; `plan A B`
gives N for each DELTA; then `trials` experiments of N samples are drawn from the
recorded paired differences shifted to DELTA, each tested as compare does (paired
bootstrap 95% interval excludes zero). Target (issue #23): 75-85% power for 80%. The
power at the two ends of plan's N range (from the variance's 95% interval) is printed
too, and the one-run plan (an assumed correlation) beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import machine, timed  # noqa: E402

from exprof.power import simulated_power  # noqa: E402

FACTS = 4


def write_pair(work: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    dialogues, mocks_a, mocks_b = [], {}, {}
    for i in range(n):
        did = f"d{i:06d}"
        facts = [f"f{i}-{k}" for k in range(FACTS)]
        dialogues.append(
            {"dialogue_id": did, "system": "s", "user": f"q{i}", "required_facts": facts}
        )
        ka = int(rng.integers(0, FACTS + 1))
        kb = int(np.clip(ka + rng.integers(-1, 2), 0, FACTS))
        for mocks, k in ((mocks_a, ka), (mocks_b, kb)):
            meta = {"model": "claude-3-haiku", "token_count": 40 + i % 50}
            mocks[did] = {"completion": "x " + " ".join(facts[:k]), "metadata": meta}
    configs = []
    for name, mocks in (("a", mocks_a), ("b", mocks_b)):
        folder = work / name
        folder.mkdir(parents=True)
        (folder / "dialogues.json").write_text(json.dumps(dialogues))
        (folder / "mock_responses.json").write_text(json.dumps(mocks))
        config = {
            "experiment_id": name,
            "model": "claude-3-haiku",
            "max_tokens": 100,
            "temperature": 0.0,
            "dataset_path": "dialogues.json",
        }
        (folder / "config.yaml").write_text(json.dumps(config))
        configs.append(folder / "config.yaml")
    return configs


def coverages(work: Path, name: str) -> np.ndarray:
    lines = (work / "runs" / name / "scores.jsonl").read_text().splitlines()
    return np.array([json.loads(line)["fact_coverage"] for line in lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--deltas", default="0.01,0.02,0.05,0.1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-plan-bench-"))
    started = time.perf_counter()
    try:
        for config in write_pair(work, args.samples, seed=23):
            timed(["run", "--config", str(config), "--quiet"], work)
        diffs = coverages(work, "b") - coverages(work, "a")
        rows = []
        for i, delta in enumerate(float(d) for d in args.deltas.split(",")):
            _, _, out = timed(["plan", "a", "b", "--detect", str(delta), "--format", "json"], work)
            found = json.loads(out)
            row = found["plan"][0]
            n, (n_lo, n_hi) = row["samples"], row["samples_ci95"]

            def power(m: int, d: float = delta, seed: int = 1000 * i) -> float:
                return simulated_power(diffs, m, d, args.trials, seed, args.resamples)

            _, _, single = timed(["plan", "a", "--detect", str(delta), "--format", "json"], work)
            rows.append(
                {
                    "delta": delta,
                    "sd_paired": found["sd_paired"],
                    "n": n,
                    "n_ci95": [n_lo, n_hi],
                    "power_at_n": power(n),
                    "power_at_n_ci95": [power(n_lo), power(n_hi)],
                    "one_run_n_at_correlation_0.5": json.loads(single)["plan"][0]["samples"],
                    "cost_usd_at_n": row["cost_usd"],
                }
            )
        print(
            json.dumps(
                {
                    "machine": machine(),
                    "samples_recorded": args.samples,
                    "trials": args.trials,
                    "resamples": args.resamples,
                    "target_power": 0.8,
                    "rows": rows,
                    "wall_s": round(time.perf_counter() - started, 1),
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
