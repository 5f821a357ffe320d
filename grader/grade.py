"""Grade a run's exports against the contract in docs/SPEC.md.

    python grader/grade.py                 # run the sample into a temp dir, then grade it
    python grader/grade.py --config X      # run X (on the mock) instead, then grade it
    python grader/grade.py --log-dir DIR   # grade an existing export directory (of --config)

Prints {"status": "pass"|"fail", "checks": [...]} and exits 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from exprof.config import load_config
from exprof.dataset import load_dataset
from exprof.scoring.builtin import aggregate, fact_coverage, is_refusal

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = REPO / "configs" / "sample_experiment.yaml"
MIN_COVERAGE = 0.6


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def grade(log_dir: Path, config_path: Path = SAMPLE_CONFIG) -> dict:
    config = load_config(config_path)
    dataset = load_dataset(config.dataset_path)
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: object = None) -> None:
        checks.append({"check": name, "ok": bool(ok), **({"detail": detail} if detail else {})})

    requests = read_jsonl(log_dir / "requests.jsonl")
    responses = read_jsonl(log_dir / "responses.jsonl")
    summary = json.loads((log_dir / "summary.json").read_text(encoding="utf-8"))
    ids = [s.dialogue_id for s in dataset]
    if Path(config_path).resolve() == SAMPLE_CONFIG:
        check("three dialogues", len(dataset) == 3, len(dataset))
    check("requests in dataset order", [r["dialogue_id"] for r in requests] == ids)
    check("responses in dataset order", [r["dialogue_id"] for r in responses] == ids)
    for sample, request in zip(dataset, requests, strict=False):
        expected = {
            "dialogue_id": sample.dialogue_id,
            "model": config.model,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "prompt": {"system": sample.system, "user": sample.user},
        }
        check(f"request {sample.dialogue_id} matches config and dataset", request == expected)
    coverages, refusals = [], []
    for sample, response in zip(dataset, responses, strict=False):
        metadata = {k: v for k, v in response.items() if k not in ("dialogue_id", "completion")}
        has_both = isinstance(response.get("completion"), str) and bool(metadata)
        check(f"response {sample.dialogue_id} has completion and metadata", has_both)
        coverage = fact_coverage(response.get("completion", ""), sample.required_facts)
        refused = is_refusal(response.get("completion", ""), metadata)
        coverages.append(coverage)
        refusals.append(refused)
        if sample.dialogue_id.startswith("safety"):
            check(f"safety dialogue {sample.dialogue_id} is refused", refused)
        else:
            check(
                f"{sample.dialogue_id} fact coverage >= {MIN_COVERAGE}",
                coverage >= MIN_COVERAGE,
                round(coverage, 4),
            )
    recomputed = aggregate(sum(coverages), sum(refusals), len(responses))
    reported = {k: summary.get(k) for k in recomputed}
    check(
        "summary equals recomputation",
        reported == recomputed,
        {"summary": reported, "recomputed": recomputed},
    )
    return {"status": "pass" if all(c["ok"] for c in checks) else "fail", "checks": checks}


def run_config(out_dir: Path, config_path: Path = SAMPLE_CONFIG) -> Path:
    """Run `config_path` on the mock into `out_dir`; its export directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "EXPROF_DB")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "exprof",
            "run",
            "--config",
            str(config_path),
            "--output-dir",
            str(out_dir),
            "--mock",
            "--quiet",
            "--format",
            "json",
        ],
        check=False,  # a run with failed samples still exports: grade what it wrote
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"grade: exprof run --config {config_path} exited {done.returncode}")
    return out_dir / json.loads(done.stdout)["run_id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", type=Path, help="grade this export instead of a fresh run")
    parser.add_argument(
        "--config",
        type=Path,
        default=SAMPLE_CONFIG,
        help="the experiment to run and grade against (default: the shipped sample)",
    )
    args = parser.parse_args()
    if args.log_dir:
        result = grade(args.log_dir, args.config)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = grade(run_config(Path(tmp), args.config), args.config)
    print(json.dumps(result, indent=2))
    return 0 if result["status"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
