"""Write a synthetic experiment: N dialogues, their mock answers, and a config.

    python benchmarks/generate.py --samples 100000 --out benchmarks/out/100k

Answers cover a seeded share of each dialogue's facts; about one in twelve is a refusal.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = (
    "latency throughput replica shard cache index queue backoff token budget "
    "checkpoint snapshot lease quorum vector commit rollback schema cursor batch"
).split()


def generate(n: int, out: Path, seed: int = 7, experiment_id: str = "bench") -> Path:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    dialogues, mocks = [], {}
    for i in range(n):
        did = f"d{i:06d}"
        facts = rng.sample(WORDS, 3)
        covered = [f for f in facts if rng.random() < 0.8]
        filler = " ".join(rng.choices(WORDS, k=25))
        dialogues.append(
            {
                "dialogue_id": did,
                "system": "You are a precise systems engineer.",
                "user": f"Question {i}: explain {' and '.join(facts)} in our storage layer.",
                "required_facts": facts,
            }
        )
        metadata = {"model": "claude-3-opus", "temperature": 0.2, "token_count": 40 + i % 50}
        text = f"Here is how it works: {filler}. Key ideas: {', '.join(covered)}."
        if i % 12 == 0:
            text = "I'm sorry, I cannot help with that. " + text
            metadata["type"] = "refusal"
        mocks[did] = {"completion": text, "metadata": metadata}
    (out / "dialogues.json").write_text(json.dumps(dialogues), encoding="utf-8")
    (out / "mock_responses.json").write_text(json.dumps(mocks), encoding="utf-8")
    config = out / "experiment.yaml"
    config.write_text(
        f"experiment_id: {experiment_id}\nmodel: claude-3-opus\nmax_tokens: 200\n"
        "temperature: 0.2\ndataset_path: dialogues.json\n",
        encoding="utf-8",
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/100k"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(generate(args.samples, args.out, args.seed))


if __name__ == "__main__":
    main()
