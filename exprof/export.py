"""Writing a run's artifacts from its events: requests.jsonl, responses.jsonl,
summary.json, and scores.jsonl (per-sample metrics, so exports can be compared).

The same events give the same bytes: lines follow dataset order, keys keep their
recorded order, and each file is replaced atomically so a crash never leaves half.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.files import write_atomic
from exprof.jsonio import dumps, dumps_pretty
from exprof.scoring import recorded
from exprof.store.engine import Store
from exprof.store.record import iter_samples, load_started
from exprof.summary import run_summary

FILES = ("requests.jsonl", "responses.jsonl", "scores.jsonl", "summary.json")


def export_run(
    store: Store, run_id: str, out_dir: str | Path, samples: Iterable[Sample] | None = None
) -> dict[str, Any]:
    """Write the export files under out_dir; return the summary. `samples`, when given,
    is the run's whole dataset in order (as recorded), so it need not be read back."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExprofError(f"{out}: cannot create the export directory: {exc.strerror}") from None
    for stale in out.glob(".*.tmp"):  # left by an export that was killed mid-write
        stale.unlink(missing_ok=True)
    recorded_config = load_started(store, run_id).config
    config = Config.from_dict(recorded_config)
    requested = store.requested_ids(run_id)

    def request_lines() -> Iterator[str]:
        for s in iter_samples(store, run_id) if samples is None else samples:
            if s.dialogue_id in requested:
                yield _line(
                    {
                        "dialogue_id": s.dialogue_id,
                        "model": config.model,
                        "temperature": config.temperature,
                        "max_tokens": config.max_tokens,
                        "prompt": {"system": s.system, "user": s.user},
                    }
                )

    write_atomic(out / "requests.jsonl", request_lines())
    scores: list[str] = []
    custom = recorded.per_sample(store, run_id, recorded_config)  # {} without custom metrics
    responses = _response_lines(store, run_id, config.output_fields, scores, custom)
    write_atomic(out / "responses.jsonl", responses)
    write_atomic(out / "scores.jsonl", scores)
    summary = run_summary(store, run_id)
    write_atomic(out / "summary.json", [dumps_pretty(summary)])
    return summary


def _response_lines(
    store: Store,
    run_id: str,
    fields: list[str],
    scores: list[str],
    custom: dict[str, dict[str, Any]],
) -> Iterator[str]:
    """responses.jsonl lines, in dataset order; each sample's score line goes to `scores`,
    with the metrics recorded for it and the names of the facts its answer missed."""
    for scored in store.scored_responses(run_id):
        response = scored.response
        line: dict[str, Any] = {"dialogue_id": response.dialogue_id}
        if "completion" in fields:
            line["completion"] = response.completion
        if "metadata" in fields:
            line.update(response.metadata)
        yield _line(line)
        scores.append(
            _line(
                {
                    "dialogue_id": response.dialogue_id,
                    "fact_coverage": scored.fact_coverage,
                    "refused": scored.refused,
                    "facts_missing": scored.facts_missing,
                    **custom.get(response.dialogue_id, {}),
                }
            )
        )


def _line(obj: dict[str, Any]) -> str:
    return dumps(obj) + "\n"
