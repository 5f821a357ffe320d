"""The command-line interface: parse options, call one core function, render the result."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from exprof.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    ExprofError,
    Terminated,
    interruption,
)
from exprof.render import FORMATS, render, safe_text

METRICS_FIRST = ("fact_coverage", "refusal_rate", "geometric_mean")
MAX_RESAMPLES = 1_000_000  # 32 MB of bootstrap means; more adds no precision worth having


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan, which compares false with both bounds."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


FINITE_FRACTION = FiniteFloatRange(min=0, max=1)


def store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--output-dir and --db, which every command takes; the commands exprof prints for
    the user to paste name the same store (exprof.hints)."""

    @functools.wraps(func)
    def named_store(*args: Any, **kwargs: Any) -> Any:
        _hint_store(kwargs["output_dir"], kwargs["db"])
        return func(*args, **kwargs)

    decorated = click.option(
        "--db",
        envvar="EXPROF_DB",
        help="Store: a SQLAlchemy URL or a file path; EXPROF_DB sets it too "
        "[default: <output-dir>/exprof.db].",
    )(named_store)
    return click.option(
        "--output-dir",
        default="runs",
        show_default=True,
        type=click.Path(file_okay=False),
        help="Where exports go, and where the default store lives.",
    )(decorated)


def _hint_store(output_dir: str, db: str | None) -> None:
    from exprof import hints

    source = click.get_current_context().get_parameter_source("db")
    if db is not None and source == click.core.ParameterSource.ENVIRONMENT:
        db = None  # EXPROF_DB: the shell the hint is pasted into still has it
    if db is not None and "://" in db:
        from exprof.store.dialects import masked

        db = masked(db)
    hints.use_store(output_dir, db)


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--format, for every command that prints a table."""
    return click.option(
        "--format",
        "format_",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="How to print tables; json goes to stdout only.",
    )(func)


def top_option(help_text: str) -> Callable[..., Any]:
    """--top, for compare and report."""
    return click.option(
        "--top", type=click.IntRange(min=0), default=10, show_default=True, help=help_text
    )


poll_option = click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.001),
    help="Batch runs: seconds between polls at first, backing off [default: batch_poll_s].",
)


def open_store(
    db: str | None, output_dir: str, create: bool = False, readonly: bool = False
) -> Any:
    """Only `run` and `db upgrade` create or migrate a store; the reading commands open
    it read-only."""
    from exprof.store.engine import Store, store_url

    return Store.open(store_url(db, output_dir), create=create, readonly=readonly)


def summary_table(
    summary: dict[str, Any], first: tuple[str, ...] = METRICS_FIRST
) -> list[list[Any]]:
    from exprof.render import fmt_value

    # Custom metric means (summary["metrics"]) follow the built-in three, one row each.
    order = list(first) + [m for m in METRICS_FIRST if m not in first] + ["metrics"]
    keys = order + [k for k in summary if k not in order]
    rows = []
    for k in (k for k in keys if k in summary):
        if k == "metrics" and isinstance(summary[k], dict):
            rows += [[f"metrics.{name}", fmt_value(v)] for name, v in summary[k].items()]
        else:
            rows.append([k, fmt_value(summary[k])])
    return rows


def echo_summary(
    summary: dict[str, Any], format_: str, first: tuple[str, ...] = METRICS_FIRST
) -> None:
    click.echo(render(summary_table(summary, first), ["metric", "value"], format_, summary))


class ExprofGroup(click.Group):
    """Turns expected failures into one `Error: ...` line and the exit code docs/SPEC.md gives."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A shell cannot pass a NUL byte, but a program calling us can; every path
        # function would then raise ValueError, so refuse it once, here.
        if any("\x00" in arg for arg in args):
            raise click.UsageError("an argument contains a NUL byte", ctx)
        return super().parse_args(ctx, args)

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        with sigterm_as_interrupt():
            try:
                rv = super().main(*args, **kwargs)
            except ExprofError as exc:
                click.echo(f"Error: {safe_text(exc.message)}", err=True)
                sys.exit(exc.exit_code)
            except click.exceptions.Abort as exc:  # click's wrapping of a KeyboardInterrupt
                if isinstance(exc.__cause__, Terminated):
                    click.echo("Error: interrupted by SIGTERM", err=True)
                    sys.exit(EXIT_TERMINATED)
                click.echo("Error: interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            except click.ClickException as exc:
                click.echo(f"Error: {safe_text(exc.format_message())}", err=True)
                sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
            sys.exit(rv if isinstance(rv, int) else 0)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated, a KeyboardInterrupt, wherever Ctrl-C would raise one,
    instead of killing the process with no word; the runner defers both at unsafe points."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise interruption(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(cls=ExprofGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="exprof")
def cli() -> None:
    """exprof: profile Claude experiments on an append-only event store."""


@cli.command(
    epilog="With --versus B.yaml --stop-when-decided, a sequential A/B test of the two configs."
)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(readable=False),  # load_config reports every way a file can't be read
    help="The experiment's YAML.",
)
@store_options
@click.option("--run-id", help="Name the run [default: the experiment id, then -2, -3, ...].")
@click.option(
    "--mock/--live",
    "mock",
    default=None,
    help="Force the offline mock or the live API [default: live when ANTHROPIC_API_KEY is set].",
)
@click.option("--concurrency", type=int, help="Requests in flight (overrides the config).")
@click.option(
    "--batch/--no-batch",
    default=None,
    help="Send through the Message Batches API at half the price [default: the config's batch].",
)
@poll_option
@click.option("--quiet", is_flag=True, help="Hide the progress bar.")
@click.option(  # the number is config.MAX_CELLS (a test keeps them equal; no import here)
    "--yes",
    is_flag=True,
    help="Run a matrix of more than 24 cells, or with a budget below the P95 cost estimate "
    "(each refused without it, where no terminal can ask).",
)
@click.option(
    "--repeats",
    type=int,
    help="Send every sample K times per cell (overrides the config's repeats).",
)
@click.option(
    "--cache/--no-cache",
    default=None,
    help="Reuse the store's answer to an identical request instead of sending it.",
)
@click.option(
    "--budget-usd", type=float, help="Stop dispatching once the recorded cost reaches this."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the requests, input tokens and cost it would take; write nothing.",
)
@click.option(
    "--versus",
    "versus_path",
    type=click.Path(readable=False),
    help="A second config: run a sequential A/B of --config (A) against it (B).",
)
@click.option(
    "--stop-when-decided",
    is_flag=True,
    help="With --versus: stop dispatching once the confidence sequence decides.",
)
@click.option("--metric", help="With --versus: the metric compared [default: fact_coverage].")
@click.option(
    "--min-effect",
    type=FiniteFloatRange(min=0, max=1, min_open=True, max_open=True),
    help="With --versus: stop as equivalent once the difference lies within +-E.",
)
@click.option(
    "--alpha",
    type=FiniteFloatRange(min=0, max=1, min_open=True, max_open=True),
    help="With --versus: the sequence's error rate [default: 0.05].",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    help="With --versus: seeds the order the pairs are sent in [default: 0].",
)
@output_options
def run(
    config_path: str,
    output_dir: str,
    db: str | None,
    run_id: str | None,
    mock: bool | None,
    concurrency: int | None,
    batch: bool | None,
    poll_interval: float | None,
    quiet: bool,
    yes: bool,
    repeats: int | None,
    cache: bool | None,
    budget_usd: float | None,
    dry_run: bool,
    versus_path: str | None,
    stop_when_decided: bool,
    metric: str | None,
    min_effect: float | None,
    alpha: float | None,
    seed: int | None,
    format_: str,
) -> None:
    """Start a new run: send every sample, record it, export, print the summary."""
    from exprof.config import check_run_id, load_config, with_overrides
    from exprof.dataset import Sample, load_dataset
    from exprof.dataset_stream import DatasetFile, scan_dataset
    from exprof.mock_responses import load_mock_responses
    from exprof.run.runner import Runner

    _check_concurrency(concurrency)
    if run_id is not None:
        check_run_id(run_id, "--run-id")
    sequential = {"metric": metric, "min_effect": min_effect, "alpha": alpha, "seed": seed}
    _check_versus_flags(versus_path, stop_when_decided, sequential, dry_run)
    config = load_config(config_path)
    if batch is not None:
        config = dataclasses.replace(config, batch=batch)
    config = with_overrides(config, repeats=repeats, cache=cache, budget_usd=budget_usd)
    if versus_path is not None:
        other = load_config(versus_path)
        if batch is not None:
            other = dataclasses.replace(other, batch=batch)
        other = with_overrides(other, repeats=repeats, cache=cache, budget_usd=budget_usd)
        args = (db, output_dir, run_id, mock, concurrency, quiet)
        _run_versus((config, other), (config_path, versus_path), sequential, args, format_)
    if config.matrix and not dry_run:
        from exprof.cells import check_size

        check_size(config, yes)
    live = mock is False or (mock is None and bool(os.environ.get("ANTHROPIC_API_KEY")))
    # A live batch run streams its dataset (a million samples never held); the rest load it.
    samples: list[Sample] = []  # for a dry run or an experiment: they need it whole
    dataset: list[Sample] | DatasetFile
    if live and config.batch and not config.matrix and not dry_run:
        dataset = scan_dataset(config.dataset_path)
    else:
        dataset = samples = load_dataset(config.dataset_path)
    if config.batch and not live:
        click.echo("note: batch mode applies to live runs; the mock answers at once", err=True)
    if live:
        from exprof.clients.credentials import require_credentials

        require_credentials("--live")
    else:
        from exprof.scoring.judge import require_mock_replies

        require_mock_replies(config_path, config.metrics)
    from exprof.models import preflight

    cells: list[tuple[str | None, Any]] = [(None, config)]
    if config.matrix:  # experiment loads numpy: a plain run never needs it
        from exprof.cells import cell_configs

        cells = cell_configs(config)
    models = preflight(cells, config_path, live)
    if dry_run:
        _echo_dry_run(config, samples, live, format_, _dry_run_store(db, output_dir))
        return
    if config.budget_usd is not None and not yes:
        where = "--budget-usd" if budget_usd is not None else f"{config_path}: budget_usd"
        _check_budget(config, samples, where, _dry_run_store(db, output_dir))
    mocks = None if live else load_mock_responses(config.mock_responses_path)
    store = open_store(db, output_dir, create=True)
    runner = Runner(store, output_dir, quiet=quiet, poll_interval=poll_interval)
    runner.models = models if live else {}
    if config.matrix:
        from exprof.experiment import run_experiment

        mode = "live" if live else "mock"
        found = run_experiment(runner, config, samples, mode, mocks, run_id, concurrency)
        _finish_experiment(found, format_)
    result = runner.run(
        config,
        dataset,
        "live" if live else "mock",
        mocks=mocks,
        run_id=run_id,
        concurrency=concurrency,
    )
    _finish(result, format_, config.builtin_metrics)


@cli.command(
    epilog="Given an experiment id, continue every unfinished cell of the experiment. With "
    "--join, work on a live run beside the workers already on it."
)
@click.argument("run_id")
@store_options
@click.option("--concurrency", type=int, help="Requests in flight for this session.")
@click.option(
    "--retry-failed/--no-retry-failed",
    default=True,
    show_default=True,
    help="Send the samples that failed before again.",
)
@poll_option
@click.option(
    "--budget-usd",
    type=float,
    help="A new budget for the run (or the experiment), replacing the recorded one.",
)
@click.option(
    "--join",
    is_flag=True,
    help="Add this process as one more worker of a live run, beside those already on it.",
)
@click.option("--quiet", is_flag=True, help="Hide the progress bar.")
@output_options
def resume(
    run_id: str,
    output_dir: str,
    db: str | None,
    concurrency: int | None,
    retry_failed: bool,
    poll_interval: float | None,
    budget_usd: float | None,
    join: bool,
    quiet: bool,
    format_: str,
) -> None:
    """Continue a run that stopped early, sending only the samples still owed."""
    from exprof.run.runner import Runner

    _check_concurrency(concurrency)
    store = open_store(db, output_dir)
    if budget_usd is not None:
        budget_usd = _resume_budget(store, run_id, budget_usd)
    runner = Runner(store, output_dir, quiet=quiet, poll_interval=poll_interval)
    if not store.run_exists(run_id) and store.experiment_record(run_id) is not None:
        if join:
            raise ExprofError(
                f"{run_id} is an experiment: --join adds a worker to one run; "
                "join a cell's run by its run id"
            )
        from exprof.experiment import resume_experiment
        from exprof.store.record import sequential_events

        if sequential_events(store, run_id)[0] is not None:
            from exprof.versus import resume_versus

            _finish_experiment(resume_versus(runner, run_id, concurrency, budget_usd), format_)
        found = resume_experiment(runner, run_id, concurrency, retry_failed, budget_usd)
        _finish_experiment(found, format_)
    budget = None
    if budget_usd is not None:
        from exprof.run.budget import Budget

        budget = Budget(store, [run_id], budget_usd)
    result = runner.resume(
        run_id, concurrency=concurrency, retry_failed=retry_failed, budget=budget, join=join
    )
    _finish(result, format_)


def _resume_budget(store: Any, run_id: str, budget_usd: float) -> float:
    """`resume --budget-usd`, checked as the config's budget_usd is: a finite amount, and
    a price for every model of the run (or the experiment) it would be kept against."""
    from exprof.config import Config, config_models
    from exprof.config_sections import check_budget
    from exprof.pricing import require_prices
    from exprof.store.record import load_started

    budget_usd = check_budget(budget_usd, "--budget-usd")
    record = store.experiment_record(run_id) if not store.run_exists(run_id) else None
    if record is not None:
        config = Config.from_dict(record.config)
        require_prices(config_models(config), config.pricing, "--budget-usd")
    elif store.run_exists(run_id):
        recorded = load_started(store, run_id).config
        require_prices([recorded["model"]], recorded["pricing"], "--budget-usd")
    return budget_usd


@cli.command()
@click.argument("run_id")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(readable=False),
    help="A YAML whose metrics (and pricing, for a judge's requests) score the recorded "
    "responses: only those keys are read; a whole config works too.",
)
@store_options
@click.option("--run-id", "new_run_id", help="Name the new run [default: the experiment's next].")
@click.option("--quiet", is_flag=True, help="Hide the progress bar.")
@output_options
def rescore(
    run_id: str,
    config_path: str,
    output_dir: str,
    db: str | None,
    new_run_id: str | None,
    quiet: bool,
    format_: str,
) -> None:
    """A new run scoring RUN_ID's recorded responses with FILE's metrics: no API call."""
    from exprof.config import check_run_id, load_rescore_config
    from exprof.refs import run_id_of
    from exprof.run.runner import Runner
    from exprof.store.record import load_started

    if new_run_id is not None:
        check_run_id(new_run_id, "--run-id")
    store = open_store(db, output_dir)
    source = run_id_of(run_id, store)
    config = load_rescore_config(config_path, load_started(store, source).config)
    from exprof.run.judge import grading_mode
    from exprof.scoring.judge import require_mock_replies

    if grading_mode(store, source) != "live":
        require_mock_replies(config_path, config.metrics)
    result = Runner(store, output_dir, quiet=quiet).rescore(source, config, new_run_id)
    _finish(result, format_, config.builtin_metrics)


@cli.command(epilog="Given an experiment id, one row per cell, with its cost-quality frontier.")
@click.argument("run_id", required=False)
@click.option("--log-dir", type=click.Path(), help="Summarize an exported run directory instead.")
@click.option(
    "--metric",
    default="fact_coverage",
    show_default=True,
    help="An experiment: the quality its cost-quality frontier weighs against cost.",
)
@store_options
@output_options
def summarize(
    run_id: str | None,
    log_dir: str | None,
    metric: str,
    output_dir: str,
    db: str | None,
    format_: str,
) -> None:
    """Print a run's metrics, from the store or from an export directory."""
    if (run_id is None) == (log_dir is None):
        raise ExprofError("summarize: give either RUN_ID or --log-dir DIR")
    from exprof.summary import read_exported_summary, run_summary

    if log_dir is not None:
        echo_summary(read_exported_summary(Path(log_dir)), format_)
        return
    assert run_id is not None
    from exprof.refs import ExperimentRef, RunRef, resolve

    def store() -> Any:
        return open_store(db, output_dir, readonly=True)

    found = resolve(run_id, store, exports=False, latest=False)
    if isinstance(found, ExperimentRef):
        from exprof.experiment import experiment_summary
        from exprof.frontier import add_frontier

        summary = experiment_summary(found.store, found.experiment_id)
        _echo_cells(add_frontier(found.store, summary, metric), format_)
    elif isinstance(found, RunRef):  # exports=False
        echo_summary(run_summary(found.store, found.run_id), format_)


@cli.command()
@store_options
@output_options
def runs(output_dir: str, db: str | None, format_: str) -> None:
    """List the runs in the store, newest first."""
    from exprof.summary import list_runs

    # Exports go to --output-dir; with another store and no --output-dir we cannot know.
    source = click.get_current_context().get_parameter_source("output_dir")
    known = db is None or source != click.core.ParameterSource.DEFAULT
    rows = list_runs(open_store(db, output_dir, readonly=True), Path(output_dir) if known else None)
    headers = [
        "run_id",
        "experiment",
        "model",
        "mode",
        "status",
        "done",
        "created",
        "fact_coverage",
        "refusal_rate",
        "geometric_mean",
        "next step",
    ]
    if any("cost_usd" in r for r in rows):  # live runs: what the ledger says they cost
        headers.insert(-1, "cost_usd")
    if any(r.get("batches") for r in rows):  # batch runs: their batches' state and counts
        headers.insert(-1, "batches")
    if any("metrics" in r for r in rows):  # custom metric means, for the runs that have them
        headers.insert(-1, "metrics")
    if any("cell" in r for r in rows):  # matrix cells' parameters
        headers.insert(2, "cell")
    click.echo(render([[_cell(r.get(h)) for h in headers] for r in rows], headers, format_, rows))


@cli.command()
@click.argument("run_id")
@click.option(
    "--to",
    "to_dir",
    type=click.Path(file_okay=False),
    help="Export here [default: <output-dir>/RUN_ID].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into a non-empty directory that is not an export of this run.",
)
@store_options
def export(run_id: str, to_dir: str | None, force: bool, output_dir: str, db: str | None) -> None:
    """Write a run's artifacts again from its events."""
    from exprof.export import export_run

    store = open_store(db, output_dir, readonly=True)
    target = Path(to_dir) if to_dir else Path(output_dir) / run_id
    export_run(store, run_id, target, force=force)
    click.echo(f"exported {run_id} to {target}", err=True)


@cli.command(
    "compare",
    epilog="With --baseline, compare every cell of an experiment against one of its cells.",
)
@click.argument("run_a")
@click.argument("run_b", required=False)
@click.option(
    "--baseline",
    help="RUN_A is an experiment: compare every cell with this one (name or run id), "
    "Holm-corrected.",
)
@store_options
@top_option("How many changed samples and flips to list.")
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=0,
    show_default=True,
    help="Bootstrap seed.",
)
@click.option(
    "--resamples",
    type=click.IntRange(min=100, max=MAX_RESAMPLES),
    default=10_000,
    show_default=True,
    help="Bootstrap resamples.",
)
@click.option(
    "--fail-on-regression",
    is_flag=True,
    help="Exit 1 when B's fact_coverage is significantly worse than A's (with --baseline: "
    "any cell's than the baseline's, Holm-corrected).",
)
@click.option(
    "--max-refusal-increase",
    type=FINITE_FRACTION,
    default=None,
    help="Exit 1 when B's refusal rate exceeds A's by more than this (e.g. 0.02; with "
    "--baseline: any cell's).",
)
@output_options
def compare_cmd(
    run_a: str,
    run_b: str | None,
    baseline: str | None,
    output_dir: str,
    db: str | None,
    top: int,
    seed: int,
    resamples: int,
    fail_on_regression: bool,
    max_refusal_increase: float | None,
    format_: str,
) -> None:
    """Compare two runs (ids, experiment ids or export dirs): metrics, deltas, flips."""
    from exprof.compare import compare, gate
    from exprof.render import render_compare
    from exprof.sides import load_side

    def store() -> Any:
        return open_store(db, output_dir, readonly=True)

    if (run_b is None) == (baseline is None):
        raise ExprofError("compare: give RUN_A RUN_B, or EXPERIMENT_ID --baseline CELL")
    if baseline is not None:
        from exprof.baseline import baseline_gate, compare_to_baseline

        found = compare_to_baseline(store(), run_a, baseline, resamples, seed)
        _echo_baseline(found, format_)
        reasons = baseline_gate(found, fail_on_regression, max_refusal_increase)
    else:
        assert run_b is not None
        result = compare(load_side(run_a, store), load_side(run_b, store), resamples, seed, top)
        click.echo(render_compare(result, format_, top))
        reasons = gate(result, fail_on_regression, max_refusal_increase)
    for reason in reasons:
        click.echo(f"regression: {reason}", err=True)
    sys.exit(1 if reasons else 0)


@cli.command(epilog="From one run's variance, or from two runs' paired differences.")
@click.argument("run_a")
@click.argument("run_b", required=False)
@click.option(
    "--detect",
    "delta",
    type=float,
    required=True,
    help="The paired difference (B - A, in the metric's units) to detect.",
)
@click.option("--metric", default="fact_coverage", show_default=True, help="What to plan for.")
@click.option(
    "--power",
    type=FiniteFloatRange(min=0, max=1, min_open=True, max_open=True),
    default=0.8,
    show_default=True,
    help="The chance of detecting DELTA.",
)
@click.option(
    "--alpha",
    type=FiniteFloatRange(min=0, max=1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Two-sided significance level.",
)
@click.option(
    "--correlation",
    type=FiniteFloatRange(min=-1, max=1, max_open=True),
    default=0.5,
    show_default=True,
    help="With one run: the correlation assumed between the two arms.",
)
@store_options
@output_options
def plan(
    run_a: str,
    run_b: str | None,
    delta: float,
    metric: str,
    power: float,
    alpha: float,
    correlation: float,
    output_dir: str,
    db: str | None,
    format_: str,
) -> None:
    """How many samples (and repeats) to pay for to detect a paired difference, and their cost."""
    from exprof.power import plan as plan_samples
    from exprof.refs import run_id_of
    from exprof.render import render_plan

    store = open_store(db, output_dir, readonly=True)
    a = run_id_of(run_a, store)
    b = run_id_of(run_b, store) if run_b is not None else None
    found = plan_samples(store, a, b, metric, delta, power, alpha, correlation)
    click.echo(render_plan(found, format_))


@cli.command(epilog="The two runs of a compare may be ids or export directories.")
@click.argument("ref")
@click.argument("ref_b", required=False)
@click.option(  # a plain string: build_report checks the target itself
    "--out",
    help="Write the page here [default: a run's <output-dir>/RUN_ID/report.html; a compare's "
    "<output-dir>/RUN_B/compare-RUN_A.html; an experiment's "
    "<output-dir>/EXPERIMENT_ID/report.html].",
)
@top_option("Compare: how many changed samples to show side by side.")
@click.option(
    "--baseline",
    help="REF is a matrix experiment: compare every cell with this one (name or run id) "
    "[default: the first cell].",
)
@store_options
def report(
    ref: str,
    ref_b: str | None,
    out: str | None,
    top: int,
    baseline: str | None,
    output_dir: str,
    db: str | None,
) -> None:
    """One self-contained HTML page for a run, a compare of two, or a matrix experiment."""
    from exprof.report.builder import build_report

    refs = [ref] if ref_b is None else [ref, ref_b]
    path = build_report(
        refs,
        lambda: open_store(db, output_dir, readonly=True),
        output_dir,
        out,
        top,
        baseline=baseline,
    )
    click.echo(safe_text(path))


@cli.command()
@click.argument("run_id")
@store_options
def cancel(run_id: str, output_dir: str, db: str | None) -> None:
    """Cancel a batch run's in-flight batches; resume sends their unfinished requests again."""
    from exprof import hints
    from exprof.run.batch import cancel_run

    cancelled = cancel_run(open_store(db, output_dir), run_id)
    click.echo(
        f"cancelled {len(cancelled)} batch(es) of {run_id}: {', '.join(cancelled)}", err=True
    )
    click.echo(f"record what they finished with: {hints.command('resume', run_id)}", err=True)


@cli.command()
@store_options
@click.option("--run", "run_id", help="Check only this run [default: every run].")
@output_options
def doctor(output_dir: str, db: str | None, run_id: str | None, format_: str) -> None:
    """Check the store: schema, integrity, tampering, and projections against the events."""
    from exprof.doctor import check

    rows, healthy = check(open_store(db, output_dir), run_id)
    headers = ["check", "status", "detail"]
    click.echo(render([[r[h] for h in headers] for r in rows], headers, format_, rows))
    sys.exit(0 if healthy else 1)


@cli.group()
def db() -> None:
    """Manage the store's schema."""


@db.command("upgrade")
@store_options
def db_upgrade(output_dir: str, db: str | None) -> None:
    """Create the store or migrate it to the newest schema."""
    store = open_store(db, output_dir, create=True)
    click.echo(f"{store.location}: schema at revision {store.revision()}", err=True)


def _cell(value: Any) -> Any:
    """A table cell: a dict of custom metric means reads as `name=mean, ...`."""
    from exprof.render import fmt_value

    return fmt_value(value) if isinstance(value, dict) else value


def _check_concurrency(value: int | None) -> None:
    if value is not None and value < 1:
        raise ExprofError(f"--concurrency: must be an integer >= 1, got {value}")


def _check_budget(config: Any, samples: Any, where: str, store: Any) -> None:
    """A budget below the run's P95 cost estimate would likely stop it early: asked at a
    terminal, refused without one unless --yes says so."""
    from exprof.estimate import p95_cost

    found = p95_cost(config, samples, store)
    if found is None or config.budget_usd >= found[0]:
        return
    p95, basis = found
    text = (
        f"${config.budget_usd:g} is below this run's P95 cost estimate ${p95:.4f} (output "
        f"tokens from {basis}), so the run will likely stop at the budget"
    )
    if sys.stdin.isatty() and sys.stderr.isatty():
        click.confirm(f"budget: {text}. Run anyway?", abort=True, err=True)
        return
    raise ExprofError(f"{where}: {text}; pass --yes to run anyway")


def _dry_run_store(db: str | None, output_dir: str) -> Any:
    """--dry-run's store, opened read-only: the answers the cache would reuse and the
    earlier runs' output lengths; None when there is none yet (a dry run creates
    nothing)."""
    try:
        return open_store(db, output_dir, readonly=True)
    except ExprofError as exc:
        if "no exprof store here" in exc.message:
            return None
        raise


def _echo_dry_run(config: Any, samples: Any, live: bool, format_: str, store: Any) -> None:
    """--dry-run: requests, input tokens and cost per cell; nothing is written."""
    from exprof.estimate import dry_run

    counter = None
    if live:
        from exprof.clients.count import count_input_tokens

        counter = count_input_tokens
    found = dry_run(config, samples, counter, store)
    headers = ["cell", "model", "requests", "input_tokens", "input_cost_usd", "max_cost_usd"]
    headers += ["output_from", "expected_cost_usd", "p95_cost_usd"]
    if config.cache:  # the requests the store answers instead: not sent, not priced
        headers.insert(3, "reused")
    if any("cache_writes" in c for c in found["cells"]):  # prompt_cache: prefixes written
        headers.insert(headers.index("input_tokens") + 1, "cache_writes")
    rows = [[c.get(h, "") for h in headers] for c in found["cells"]]
    rows.append([found[h] if h in found else "" for h in headers])
    rows[-1][0] = "total"
    click.echo(render(rows, headers, format_, found))
    if format_ != "json":
        reused = (
            f"{found['reused']} request(s) the store already answered are reused, not "
            "counted or priced; "
            if config.cache
            else ""
        )
        click.echo(
            f"{reused}input tokens by {found['token_count']}; max_cost_usd counts every "
            "answer at max_tokens. Nothing was sent or written.",
            err=True,
        )


def _check_versus_flags(
    versus: str | None, decided: bool, sequential: dict[str, Any], dry_run: bool
) -> None:
    given = [f"--{k.replace('_', '-')}" for k, v in sequential.items() if v is not None]
    if versus is None and (decided or given):
        flag = "--stop-when-decided" if decided else given[0]
        raise ExprofError(f"{flag} needs --versus B.yaml (a sequential A/B run)")
    if versus is not None and not decided:
        raise ExprofError("--versus runs a sequential A/B test: add --stop-when-decided")
    if versus is not None and dry_run:
        raise ExprofError("--dry-run does not plan a sequential A/B run; drop --versus")


def _run_versus(
    configs: tuple[Any, Any],
    paths: tuple[str, str],
    sequential: dict[str, Any],
    args: tuple[Any, ...],
    format_: str,
) -> None:
    """run --versus B.yaml --stop-when-decided: see exprof.versus."""
    from exprof.dataset import load_dataset
    from exprof.mock_responses import load_mock_responses
    from exprof.models import preflight
    from exprof.run.runner import Runner
    from exprof.versus import start_versus
    from exprof.versus_checks import Options, check_metric, check_options, check_versus

    db, output_dir, run_id, mock, concurrency, quiet = args
    options = Options(**{k: v for k, v in sequential.items() if v is not None})
    check_options(options)
    a, b = configs
    samples = load_dataset(a.dataset_path)
    check_versus(a, b, samples, load_dataset(b.dataset_path))
    check_metric(options.metric, configs)
    live = mock is False or (mock is None and bool(os.environ.get("ANTHROPIC_API_KEY")))
    if live:
        from exprof.clients.credentials import require_credentials

        require_credentials("--live")
    models = preflight([("A", a), ("B", b)], paths[0], live)
    mocks: tuple[Any, Any] = (None, None)
    if not live:
        mocks = (
            load_mock_responses(a.mock_responses_path),
            load_mock_responses(b.mock_responses_path),
        )
    store = open_store(db, output_dir, create=True)
    runner = Runner(store, output_dir, quiet=quiet)
    runner.models = models if live else {}
    mode = "live" if live else "mock"
    found = start_versus(runner, configs, samples, mode, mocks, options, run_id, concurrency)
    _finish_experiment(found, format_)


def _finish_experiment(result: Any, format_: str) -> None:
    found = {"experiment_id": result.experiment_id, "cells": result.cells}
    if result.sequential is not None:
        found["sequential"] = result.sequential
    _echo_cells(found, format_)
    if format_ != "json":
        click.echo(f"experiment id: {result.experiment_id}")
    click.echo(result.message, err=True)
    sys.exit(result.exit_code)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _echo_cells(found: dict[str, Any], format_: str) -> None:
    """summarize EXPERIMENT_ID: one row per cell, each metric with its 95% CI."""
    from exprof.render import fmt_usd, fmt_value

    headers = ["cell", "params", "status", "samples", "fact_coverage", "fact_coverage_ci95"]
    headers += ["refusal_rate", "refusal_rate_ci95", "geometric_mean", "estimated_cost_usd"]
    headers += ["latency_p50_ms"]
    cells = found["cells"]
    if any("repeats" in c for c in cells):
        headers[4:4] = ["repeats", "pass_at_k", "pass_hat_k", "refusal_flips"]
    if any("responses_reused" in c for c in cells):  # cache: true
        headers[-2:-2] = ["responses_reused", "cost_avoided_usd"]
    for name in ("cut_off_rate", "thinking_tokens"):  # cells that set a knob
        if any(name in c for c in cells):
            headers.insert(headers.index("estimated_cost_usd"), name)
    # Custom metrics, each with its interval, after the built-in ones.
    custom = list(dict.fromkeys(name for c in cells for name in c.get("metrics") or {}))
    at = headers.index("geometric_mean") + 1
    headers[at:at] = [f"metrics.{n}{suffix}" for n in custom for suffix in ("", "_ci95")]

    def value(cell: dict[str, Any], header: str) -> Any:
        if header == "params":
            return _params(cell[header])
        if header.startswith("metrics."):
            name, ci = header[len("metrics.") :], header.endswith("_ci95")
            table = cell.get("metrics_ci95" if ci else "metrics") or {}
            return fmt_value(table.get(name.removesuffix("_ci95") if ci else name))
        if header.startswith("cost_per_"):
            return fmt_usd(cell.get(header))
        return fmt_value(cell.get(header))

    if "frontier" in found:
        headers += ["cost_per_sample", "cost_per_correct", "cost_per_correct_ci95"]
        headers += ["quality_per_usd", "on_frontier"]
    rows = [[value(c, h) for h in headers] for c in cells]
    click.echo(render(rows, headers, format_, found))
    if "frontier" in found and format_ not in ("json", "csv"):
        from exprof.render import render_frontier

        click.echo(render_frontier(found["frontier"], format_))
    if "sequential" in found and format_ not in ("json", "csv"):
        from exprof.versus import describe

        click.echo(f"sequential: {describe(found['sequential'])}")


def _echo_baseline(found: dict[str, Any], format_: str) -> None:
    from exprof.render import fmt_value

    headers = ["cell", "params", "samples", "fact_coverage_delta", "fact_coverage_ci95"]
    headers += ["fact_coverage_p", "fact_coverage_p_holm", "refusal_rate_delta"]
    headers += ["refusal_mcnemar_p", "refusal_mcnemar_p_holm", "verdict"]
    rows = [
        [_params(c[h]) if h == "params" else fmt_value(c.get(h)) for h in headers]
        for c in found["cells"]
    ]
    if format_ not in ("json", "csv"):
        click.echo(f"baseline: {found['baseline']} (Holm-corrected over {len(rows)} comparisons)")
    click.echo(render(rows, headers, format_, found))


def _finish(result: Any, format_: str, first: tuple[str, ...] = METRICS_FIRST) -> None:
    echo_summary(result.summary, format_, first)
    if format_ != "json":
        click.echo(f"run id: {result.run_id}")
    click.echo(result.message, err=True)
    sys.exit(result.exit_code)


def main() -> None:
    cli.main(prog_name="exprof")


if __name__ == "__main__":  # `python -m exprof.cli`, as well as `python -m exprof`
    main()
