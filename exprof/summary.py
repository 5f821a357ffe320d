"""A run's summary, derived from the projections (never from the exports)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from exprof import hints
from exprof.costs import run_cost
from exprof.errors import ExprofError
from exprof.files import export_complete, read_text
from exprof.knobs import KNOBS, describe, in_words
from exprof.scoring import builtin as metrics
from exprof.scoring import recorded
from exprof.store.batches import batch_state
from exprof.store.engine import Store
from exprof.store.events import RunStarted
from exprof.store.queries import RunRow, StatusStats
from exprof.store.record import load_started, rescore_source, tool_stats
from exprof.strict_json import parse_json


def run_summary(
    store: Store,
    run_id: str,
    repeat_stats: dict[str, Any] | None = None,
    metric_cis: bool = False,
) -> dict[str, Any]:
    """`repeat_stats`: the run's repeat_statistics, when the caller has them already
    (an experiment's summary needs them for every cell; read once, not twice).
    `metric_cis`: custom metrics' intervals even without repeats (summarize EXPERIMENT_ID)."""
    start = load_started(store, run_id)
    run = store.run_row(run_id)
    # One scan of the run's samples gives every count; the other reads are made only
    # when they can find something (a mock answer seldom has a latency), so a summary
    # grows as little as it can with the run.
    by_status = store.sample_stats(run_id)
    # With repeats every (sample, repeat) pair is one unit of work.
    total, mode = run.samples_total * run.repeats, run.mode
    ok = by_status.get("ok", StatusStats(0, 0.0, 0, 0, 0, 0, 0))
    completed = ok.count
    failed = by_status["failed"].count if "failed" in by_status else 0
    latencies = store.ok_latencies(run_id) if ok.latencies else []
    failures = store.failures_by_class(run_id) if failed else {}
    summary: dict[str, Any] = metrics.aggregate(ok.coverage_sum, ok.refused, completed)
    summary.update(
        run_id=run_id,
        experiment_id=run.experiment_id,
        model=run.model,
        mode=mode,
        status="complete" if completed == total else "incomplete",
        samples_total=total,
        samples_completed=completed,
        samples_failed=failed,
        input_tokens=ok.input_tokens,
        output_tokens=ok.output_tokens,
        temperature=start.config["temperature"],
        max_tokens=start.config["max_tokens"],
        dataset_sha256=start.dataset_sha256,
        api_version=start.config["api_version"] if mode == "live" else None,
        sent_params=start.sent_params,
    )

    # The knobs configured, each in a word (sent_params: those that reached the model);
    # temperature has a field of its own, as it always had.
    knobs = {
        k: describe(k, start.config[k])
        for k in KNOBS
        if k != "temperature" and start.config.get(k) is not None
    }
    if knobs:
        summary["knobs"] = knobs
    summary.update(answer_fields(store, run_id, ok, always=bool(knobs)))
    if mode == "rescore":
        summary["rescore_of"] = rescore_source(store, run_id).source_run_id
    if run.repeats > 1:
        summary.update(repeat_fields(store, run_id, run.repeats, repeat_stats))
    # Only a live run's answers were paid for (one more scan of its samples).
    costs = run_cost(store, run_id, start.config) if mode == "live" else None
    if ok.reused:  # answers taken from the store: what they would have cost
        summary["responses_reused"] = ok.reused
        avoided = costs.avoided if costs is not None else None
        summary["cost_avoided_usd"] = round(avoided.total, 6) if avoided is not None else None
    summary.update(recorded.summary_fields(store, run_id, start.config, ci=metric_cis))
    if start.config.get("tools"):
        summary.update(tool_stats(store, run_id))
    if failures:
        summary["failures_by_class"] = failures
    if mode == "live":
        config = start.config
        sent = [by_status[s] for s in ("ok", "failed") if s in by_status]
        summary["retries"] = sum(row.attempts_sum - row.attempts_count for row in sent)
        durations = store.durations(run_id)
        if durations and sum(durations) > 0:
            requests = sum(row.count for row in sent)
            summary["requests_per_second"] = round(requests / sum(durations), 1)
        if costs is not None:
            summary.update(costs.fields(bool(config.get("batch"))))
            summary["cost_per_correct_usd"] = cost_per_correct(
                costs.total_usd,
                store.correct_answers(run_id),
            )
    if latencies:
        summary["latency_ms"] = {**_percentiles(latencies), "max": latencies[-1]}
    if ok.streamed:
        ttft, tps = store.stream_profile(run_id)
        summary["ttft_ms"] = _percentiles(ttft)
        if tps:
            summary["output_tokens_per_s"] = _percentiles(tps)
    return summary


def cost_per_correct(cost: float | None, correct: int) -> float | None:
    """What one correct answer (full coverage, no refusal) cost, None with none."""
    return round(cost / correct, 6) if cost is not None and correct else None


def _percentiles(ascending: list[float]) -> dict[str, float]:
    return {f"p{q}": metrics.percentile(ascending, q) for q in (50, 90, 99)}


def answer_fields(
    store: Store, run_id: str, ok: StatusStats, always: bool = False
) -> dict[str, Any]:
    """What today's API adds to a summary: thinking tokens; cut-offs, with coverage over
    the complete answers and the bounds that cut-off answers scored 0 and then 1 give;
    refusals by policy category. Each is given where the answers had it, and the first
    two `always` (a run that set a knob), 0 when there were none."""
    fields: dict[str, Any] = {}
    if ok.thinking_tokens is not None or always:
        fields["thinking_tokens"] = ok.thinking_tokens or 0
    if always and not ok.cut_off and ok.count:
        fields["cut_off_rate"] = 0.0
    if ok.cut_off:
        complete = ok.count - ok.cut_off
        kept = ok.coverage_sum - ok.cut_off_coverage_sum
        fields["cut_off_rate"] = round(ok.cut_off / ok.count, 4)
        fields["fact_coverage_complete"] = round(kept / complete, 4) if complete else None
        fields["fact_coverage_bounds"] = [
            round(kept / ok.count, 4),
            round((kept + ok.cut_off) / ok.count, 4),
        ]
    categories = store.refusals_by_category(run_id) if ok.refused else None
    if categories is not None:
        fields["refusal_by_category"] = categories
    return fields


def repeat_fields(
    store: Store, run_id: str, repeats: int, found: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A run with repeats: its metrics as means over samples, with 95% intervals that
    count a sample's repeats as one cluster, and the per-sample repeat statistics."""
    # Imported here: exprof.stats loads numpy (~0.2 s), which a run without repeats,
    # and every mock run's summary, never needs.
    from exprof.stats import repeat_statistics

    found = dict(found) if found is not None else repeat_statistics(store.sample_scores(run_id))
    coverage, refusal = found.pop("fact_coverage"), found.pop("refusal_rate")
    fields: dict[str, Any] = {"repeats": repeats, "samples_answered": found.pop("samples")}
    if coverage is not None and refusal is not None:
        fields["fact_coverage"] = coverage
        fields["refusal_rate"] = refusal
        fields["geometric_mean"] = round(metrics.geometric_mean(coverage, refusal), 4)
    return {**fields, **found}


# The fields of an exported summary.json that compare and report read, with their types.
EXPORTED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "fact_coverage": (int, float),
    "refusal_rate": (int, float),
    "run_id": str,
    "experiment_id": str,
    "model": str,
    "status": str,
}


def read_exported_summary(log_dir: Path) -> dict[str, Any]:
    """An export's summary.json, strict JSON with every field the readers need."""
    path = log_dir / "summary.json"
    data = parse_json(read_text(path, "exported summary"), str(path))
    if not isinstance(data, dict) or "fact_coverage" not in data:
        raise ExprofError(f"{path}: not an exprof summary (no fact_coverage)")
    for key, kind in EXPORTED_FIELDS.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            got = "missing" if key not in data else f"got {type(value).__name__}"
            raise ExprofError(f"{path}: {key}: not an exprof summary field ({got})")
    if not isinstance(data.get("metrics", {}), dict):
        raise ExprofError(f"{path}: metrics: must be an object of metric means")
    return data


def list_runs(store: Store, export_root: Path | None = None) -> list[dict[str, Any]]:
    """Every run, newest first, with its status as a user needs to see it. With
    `export_root`, a finished run whose files are not all in `export_root/<run_id>`
    (an export that failed, or was deleted) shows as such, with the fix as next step."""
    stats = store.ok_stats_by_run()
    out = []
    for run in store.runs():
        run_id, status = run.run_id, run.status
        done, coverage_sum, refused = stats.get(run_id, (0, 0.0, 0))
        holder = store.lease(run_id) if status == "running" else None
        if status == "running":
            status = f"running ({holder.describe()})" if holder else "interrupted"
        next_step = ""
        started = load_started(store, run_id)
        if status in ("interrupted", "failed"):
            next_step = hints.command("resume", run_id, *_budget_flag(store, run, started))
        if (
            status in ("complete", "failed")
            and export_root is not None
            and not export_complete(export_root / run_id)
        ):
            status += " (export missing)"
            next_step = next_step or hints.command("export", run_id)
        row: dict[str, Any] = {
            "run_id": run_id,
            "experiment": run.experiment_id,
            "model": run.model,
            "mode": run.mode,
            "status": status,
            "done": f"{done}/{run.samples_total * run.repeats}",
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created_at)),
        }
        row.update(metrics.aggregate(coverage_sum, refused, done))
        if started.cell is not None:  # a matrix cell: its parameters
            params = in_words(started.cell["params"])
            row["cell"] = ", ".join(f"{k}={v}" for k, v in params.items())
            if started.cell.get("sequential") and next_step.startswith("exprof resume"):
                next_step = f"exprof resume {started.cell['experiment']}"  # an A/B arm
        # Custom metric means, read from the events only for runs that have them.
        config = started.config
        custom = recorded.summary_fields(store, run_id, config)
        if custom:
            row["metrics"] = custom["metrics"]
        if config.get("batch"):
            row["batches"] = batch_state(store, run_id).describe()
        if run.mode == "live":
            total = run_cost(store, run_id, config).total_usd
            row["cost_usd"] = round(total, 6) if total is not None else "cost unknown"
        row["next step"] = next_step
        out.append(row)
    return out


def _budget_flag(store: Store, run: RunRow, started: RunStarted) -> list[str]:
    """For a run held to a budget that its recorded cost has reached, the --budget-usd
    that lets `resume` finish it (a plain resume would stop again at once)."""
    config = started.config
    limit = config.get("budget_usd")
    if limit is None:
        return []
    ok = store.sample_stats(run.run_id).get("ok")
    done = ok.count if ok else 0
    spent = run_cost(store, run.run_id, config).total_usd or 0.0
    if spent < limit:
        return []
    owed = run.samples_total * run.repeats
    return ["--budget-usd", hints.amount(hints.budget_to_finish(spent, limit, done, owed))]
