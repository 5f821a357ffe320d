"""A run's summary, derived from the projections (never from the exports)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.files import read_text
from exprof.pricing import estimate_cost
from exprof.scoring import builtin as metrics
from exprof.scoring import recorded
from exprof.store.engine import Store
from exprof.store.record import load_started


def run_summary(store: Store, run_id: str) -> dict[str, Any]:
    start = load_started(store, run_id)
    with store.engine.connect() as conn:
        run = conn.exec_driver_sql(
            "SELECT experiment_id, model, mode, samples_total FROM runs WHERE run_id = ?",
            (run_id,),
        ).one()
        by_status = {
            row[0]: row[1:]
            for row in conn.exec_driver_sql(
                "SELECT status, count(*), sum(fact_coverage), sum(refused), "
                "sum(input_tokens), sum(output_tokens), sum(attempts), count(attempts) "
                "FROM samples WHERE run_id = ? GROUP BY status",
                (run_id,),
            )
        }
        latencies = [
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT latency_ms FROM samples WHERE run_id = ? AND status = 'ok' "
                "AND latency_ms IS NOT NULL ORDER BY latency_ms",
                (run_id,),
            )
        ]
        failures: dict[str, int] = dict(
            conn.exec_driver_sql(
                "SELECT error_class, count(*) FROM samples WHERE run_id = ? AND status = 'failed' "
                "GROUP BY error_class ORDER BY error_class",
                (run_id,),
            ).all()
        )
    experiment_id, model, mode, total = run
    ok = by_status.get("ok", (0, 0.0, 0, None, None, None, 0))
    completed, coverage_sum, refused, input_tokens, output_tokens = ok[:5]
    failed = by_status.get("failed", (0,))[0]
    summary: dict[str, Any] = metrics.aggregate(coverage_sum or 0.0, refused or 0, completed)
    summary.update(
        run_id=run_id,
        experiment_id=experiment_id,
        model=model,
        mode=mode,
        status="complete" if completed == total else "incomplete",
        samples_total=total,
        samples_completed=completed,
        samples_failed=failed,
        input_tokens=input_tokens or 0,
        output_tokens=output_tokens or 0,
        temperature=start.config["temperature"],
        max_tokens=start.config["max_tokens"],
        dataset_sha256=start.dataset_sha256,
        api_version=start.config["api_version"] if mode == "live" else None,
        sent_params=start.sent_params,
    )
    summary.update(recorded.summary_fields(store, run_id, start.config))
    if failures:
        summary["failures_by_class"] = failures
    if mode == "live":
        config = start.config
        sent = [by_status[s] for s in ("ok", "failed") if s in by_status]
        summary["retries"] = sum((row[5] or 0) - row[6] for row in sent)
        durations = [e.payload["duration_s"] for e in store.events(run_id, types=("run_finished",))]
        if durations and sum(durations) > 0:
            summary["requests_per_second"] = round(sum(row[0] for row in sent) / sum(durations), 1)
        cost = estimate_cost(
            config["model"], input_tokens or 0, output_tokens or 0, config["pricing"]
        )
        summary["estimated_cost_usd"] = cost if cost is not None else "cost unknown"
    if latencies:
        summary["latency_ms"] = {
            "p50": metrics.percentile(latencies, 50),
            "p90": metrics.percentile(latencies, 90),
            "p99": metrics.percentile(latencies, 99),
            "max": latencies[-1],
        }
    return summary


def read_exported_summary(log_dir: Path) -> dict[str, Any]:
    path = log_dir / "summary.json"
    text = read_text(path, "exported summary")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExprofError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict) or "fact_coverage" not in data:
        raise ExprofError(f"{path}: not an exprof summary (no fact_coverage)")
    return data


def list_runs(store: Store) -> list[dict[str, Any]]:
    """Every run, newest first, with its status as a user needs to see it."""
    with store.engine.connect() as conn:
        runs = conn.exec_driver_sql(
            "SELECT run_id, experiment_id, model, mode, status, samples_total, created_at "
            "FROM runs ORDER BY created_at DESC, run_id"
        ).all()
        stats = {
            row[0]: row[1:]
            for row in conn.exec_driver_sql(
                "SELECT run_id, count(*), sum(fact_coverage), sum(refused) "
                "FROM samples WHERE status = 'ok' GROUP BY run_id"
            )
        }
    out = []
    for run_id, experiment_id, model, mode, status, total, created in runs:
        done, coverage_sum, refused = stats.get(run_id, (0, 0.0, 0))
        holder = store.lease(run_id) if status == "running" else None
        if status == "running":
            status = f"running ({holder.describe()})" if holder else "interrupted"
        next_step = ""
        if status in ("interrupted", "failed"):
            next_step = f"exprof resume {run_id}"
        row = {
            "run_id": run_id,
            "experiment": experiment_id,
            "model": model,
            "mode": mode,
            "status": status,
            "done": f"{done}/{total}",
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)),
        }
        row.update(metrics.aggregate(coverage_sum or 0.0, refused or 0, done))
        # Custom metric means, read from the events only for runs that have them.
        custom = recorded.summary_fields(store, run_id, load_started(store, run_id).config)
        if custom:
            row["metrics"] = custom["metrics"]
        row["next step"] = next_step
        out.append(row)
    return out
