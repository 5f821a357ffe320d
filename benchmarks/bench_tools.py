"""Tool runs against the fake API: the request count of an uninterrupted run, then a
kill loop (SIGKILL at random moments, resume, repeat) on the same experiment.

    python benchmarks/bench_tools.py --samples 200 --kills 10 --concurrency 8

Reports the sum of the samples' turns, the requests the server saw for the reference run
(exactly that sum), the kills made, the requests the kill loop wasted (bound: concurrency
x kills), and whether the kill loop's exports (timing fields aside) equal the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from test_resume import crash_loop, exprof, finish  # noqa: E402
from test_tools import acceptance_plans, live_experiment, turns_planned, without_timing  # noqa: E402

from exprof.store.engine import store_url  # noqa: E402
from fake_anthropic import FakeAnthropic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-tools-bench-"))
    os.chdir(work)
    plans = acceptance_plans(args.samples)
    turns = sum(turns_planned(p) for p in plans)
    config = live_experiment(work, plans, concurrency=args.concurrency)
    with FakeAnthropic(latency=args.latency, jitter=args.latency / 5) as server:
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-bench", "ANTHROPIC_BASE_URL": server.url}
        ref = exprof(
            *("run", "--config", str(config), "--run-id", "crash", "--output-dir", "ref"),
            cwd=work,
            env=env,
        )
        code, err = finish(ref, timeout=600)
        assert code == 0, err
        reference = server.state.requests
        made = crash_loop(
            work,
            config,
            args.samples,
            kills=args.kills,
            seed=1,
            env=env,
            max_wait=20,
            db_url=store_url(None, work / "runs"),
        )
        looped = server.state.requests - reference
    same = without_timing(work / "runs" / "crash") == without_timing(work / "ref" / "crash")
    print(
        json.dumps(
            {
                "samples": args.samples,
                "sum_of_turns": turns,
                "reference_requests": reference,
                "kills": made,
                "kill_loop_requests": looped,
                "wasted": looped - turns,
                "bound": args.concurrency * made,
                "exports_equal": same,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
