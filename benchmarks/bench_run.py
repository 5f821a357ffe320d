"""Time `exprof run` on a synthetic mock dataset against a no-store floor, then `exprof
summarize`, and size the store.

    python benchmarks/bench_run.py --samples 100000
    python benchmarks/bench_run.py --samples 100000 --db postgresql+psycopg://USER:PASS@HOST/DB

Targets (issue #2): >= 10,000 samples/s end to end with exports, peak RSS <= 300 MB,
`summarize` <= 0.5 s on the 100k run and <= 0.4 s on the 3-sample sample, and a store
no larger than 3x the exported JSONL bytes. The run within 3x the floor (plain Python,
nothing of exprof imported: reading the config, dataset and mocks, scoring every answer
by the seed's rules and writing three export files, with no store); `summarize` at 100k
within 0.1 s of the 3-sample run; on PostgreSQL, within 2x the SQLite run. With --db,
the store is that (empty) database.

The floor and the run alternate three times (`--repeat`) and the best of each is kept
(best wall and best CPU each on its own), with each attempt's wall ratio printed too.
Under load, compare the CPU figures (user+sys of each command, printed beside the wall
times): they are what the command itself spent, whoever else shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def child_cpu() -> float:
    """CPU seconds (user + sys) of every child this process has waited for so far: the
    difference around one command is that command's CPU, whatever the machine's load."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one exprof command."""
    wall, rss, _, out = timed_cpu(argv, cwd)
    return wall, rss, out


def timed_cpu(argv: list[str], cwd: Path) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS (MB), CPU seconds and stdout of one exprof command."""
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    cpu = child_cpu()
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "exprof", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    cpu = child_cpu() - cpu
    out, _, last = result.stdout.rstrip("\n").rpartition("\n")
    peak_kb, code = map(int, last.split())
    if code not in (0, 1):
        raise SystemExit(f"exprof {' '.join(argv)} failed")
    return wall, peak_kb / 1024, cpu, out


# The floor: what any profiler must do for a mock run, in plain Python and a fresh
# interpreter as the run is, importing nothing of exprof: read the YAML config, the JSON
# dataset and mocks, score each answer by the seed's rules (a fact is covered when it is
# a case-insensitive substring; a refusal is a refusal-typed answer or one that says
# "i'm sorry" / "cannot comply"), write requests.jsonl, responses.jsonl and summary.json.
FLOOR = """
import json, math, sys
from pathlib import Path
import yaml
path = Path(sys.argv[1])
config = yaml.safe_load(path.read_text())
def resolve(name):
    for base in (path.parent, Path.cwd()):
        if (base / name).exists():
            return base / name
    return Path(name)
samples = json.loads(resolve(config["dataset_path"]).read_text())
dataset = resolve(config["dataset_path"])
mock_path = config.get("mock_responses_path")
mocks_file = resolve(mock_path) if mock_path else dataset.parent / "mock_responses.json"
mocks = json.loads(mocks_file.read_text())
out = Path(sys.argv[2]); out.mkdir(parents=True)
covered = refused = n = 0
with open(out / "requests.jsonl", "w") as req, open(out / "responses.jsonl", "w") as resp:
    for sample in samples:
        req.write(json.dumps({"dialogue_id": sample["dialogue_id"], "model": config["model"],
            "max_tokens": config["max_tokens"], "system": sample.get("system", ""),
            "user": sample["user"]}) + "\\n")
        mock = mocks.get(sample["dialogue_id"])
        if mock is None:
            continue
        text, meta = mock["completion"], mock.get("metadata", {})
        low = text.lower()
        facts = sample.get("required_facts", [])
        found = sum(f.lower() in low for f in facts)
        coverage = found / len(facts) if facts else 1.0
        refusal = meta.get("type") == "refusal" or any(
            m in low.replace("\u2019", "'") for m in ("i'm sorry", "cannot comply"))
        covered += coverage; refused += refusal; n += 1
        resp.write(json.dumps({"dialogue_id": sample["dialogue_id"], "completion": text,
            **meta, "fact_coverage": coverage, "refused": refusal}) + "\\n")
rate = refused / max(n, 1); coverage = covered / max(n, 1)
(out / "summary.json").write_text(json.dumps({"samples": n, "fact_coverage": coverage,
    "refusal_rate": rate, "geometric_mean": math.sqrt(coverage * (1 - rate))}))
"""


def floor(config: Path, cwd: Path) -> tuple[float, float]:
    """The floor's wall and CPU seconds."""
    cpu = child_cpu()
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", FLOOR, str(config), str(cwd / "floor")], cwd=cwd, check=True
    )
    return time.perf_counter() - start, child_cpu() - cpu


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--db", help="An (empty) store URL, e.g. PostgreSQL [default: SQLite].")
    parser.add_argument(
        "--repeat",
        type=int,
        help="Floor and run this many times each, alternating; the best of each counts "
        "[default: 3; with --db 1, the only choice, as each run needs an empty database].",
    )
    args = parser.parse_args()
    db = ["--db", args.db] if args.db else []
    if args.repeat is None:
        args.repeat = 1 if args.db else 3
    if args.repeat < 1 or (args.db and args.repeat != 1):
        parser.error("--repeat must be at least 1, and 1 with --db")
    work = Path(tempfile.mkdtemp(prefix="exprof-bench-"))
    try:
        config = generate(args.samples, work / "data")
        # Floor and run alternate, `--repeat` times each, and the best of each counts:
        # on a shared machine a burst of someone else's load only ever adds time.
        floors, runs = [], []
        for attempt in range(args.repeat):
            shutil.rmtree(work / "floor", ignore_errors=True)
            floors.append(floor(config, work))
            if attempt:  # a fresh store each time: the last run's is the one measured
                shutil.rmtree(work / "runs")
            run = ["run", "--config", str(config), "--quiet", "--format", "json", *db]
            runs.append(timed_cpu(run, work))
        floor_wall, floor_cpu = min(f[0] for f in floors), min(f[1] for f in floors)
        wall, cpu = min(r[0] for r in runs), min(r[2] for r in runs)
        rss = max(r[1] for r in runs)
        big = [timed_cpu(["summarize", "bench", *db], work) for _ in range(5)]
        shutil.copytree(REPO / "configs", work / "configs")
        shutil.copytree(REPO / "data", work / "data_sample")
        sample_cfg = work / "configs" / "sample_experiment.yaml"
        sample_cfg.write_text(sample_cfg.read_text().replace("../data/", "../data_sample/"))
        timed(["run", "--config", str(sample_cfg), "--quiet", *db], work)
        small = [timed_cpu(["summarize", "demo_run", *db], work) for _ in range(5)]
        sum_wall, small_wall = min(m[0] for m in big), min(m[0] for m in small)
        sum_cpu, small_cpu = min(m[2] for m in big), min(m[2] for m in small)
        exports = work / "runs" / "bench"
        jsonl = sum((exports / f).stat().st_size for f in ("requests.jsonl", "responses.jsonl"))
        store = sum(p.stat().st_size for p in (work / "runs").glob("exprof.db*"))
        result = {
            "machine": machine(),
            "backend": "postgresql" if args.db else "sqlite",
            "samples": args.samples,
            "floor_wall_s": round(floor_wall, 2),
            "floor_cpu_s": round(floor_cpu, 2),
            "run_wall_s": round(wall, 2),
            "run_cpu_s": round(cpu, 2),
            "run_over_floor": round(wall / floor_wall, 2),
            "run_over_floor_cpu": round(cpu / floor_cpu, 2),
            "repeats": args.repeat,
            "each_run_over_floor": [
                round(r[0] / f[0], 2) for f, r in zip(floors, runs, strict=True)
            ],
            "samples_per_s": round(args.samples / wall),
            "run_peak_rss_mb": round(rss, 1),
            "summarize_100k_s": round(sum_wall, 3),
            "summarize_sample_s": round(small_wall, 3),
            "summarize_growth_s": round(sum_wall - small_wall, 3),
            "summarize_100k_cpu_s": round(sum_cpu, 3),
            "summarize_sample_cpu_s": round(small_cpu, 3),
            "summarize_growth_cpu_s": round(sum_cpu - small_cpu, 3),
            "export_jsonl_bytes": jsonl,
        }
        if not args.db:  # a server's size is not one file's
            result.update(store_bytes=store, store_over_jsonl=round(store / jsonl, 2))
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
