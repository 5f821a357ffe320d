"""Starting, resuming and rescoring runs: each picks its loop (exprof.run.mock, .live
or .batch), drives it through one Session, then grades (exprof.run.judge), and turns
how the run ended into a RunResult: finished, failed samples, interrupted, over budget,
or left to the other workers still on it."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from exprof import __version__, hints
from exprof.config import Config, auto_run_id
from exprof.dataset import Sample, pending_pairs, with_repeats
from exprof.dataset_stream import DatasetFile, dataset_sha256
from exprof.errors import (
    EXIT_OK,
    EXIT_SAMPLES_FAILED,
    ConcurrencyError,
    ExprofError,
    StoreWriteError,
    stop_exit_code,
    stop_name,
)
from exprof.export import StreamedExport, check_export_dir, export_run
from exprof.heap import settled_heap
from exprof.render import Progress
from exprof.run.budget import Budget
from exprof.run.claims import ClaimSource, check_joinable
from exprof.run.judge import announce_grading, grading, grading_mode, owed_tasks, run_judge
from exprof.run.session import Session
from exprof.scoring import judge
from exprof.signals import deferred_signals
from exprof.store.engine import Lease, Store
from exprof.store.events import (
    Event,
    RescoreStarted,
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
)
from exprof.store.record import (
    SNAPSHOT_CHUNK,
    RunRecord,
    load_run,
    load_started,
    recorded_responses,
    rescore_source,
    snapshot,
)
from exprof.summary import run_summary


@dataclass(frozen=True)
class RunResult:
    run_id: str
    summary: dict[str, Any]
    exit_code: int
    message: str
    over_budget: bool = False  # stopped by budget_usd; resumable


def _ended(
    run_id: str, summary: dict[str, Any], failed: int, if_failed: str, if_ok: str
) -> RunResult:
    """A run with nothing left to send: exit 1 with `if_failed` if samples failed."""
    if failed:
        return RunResult(run_id, summary, EXIT_SAMPLES_FAILED, if_failed)
    return RunResult(run_id, summary, EXIT_OK, if_ok)


class Runner:
    """Starts and resumes runs on a Store; usable from Python without the CLI."""

    def __init__(
        self,
        store: Store,
        output_dir: str | Path,
        quiet: bool = True,
        poll_interval: float | None = None,
    ) -> None:
        self.store = store
        self.output_dir = Path(output_dir)
        self.quiet = quiet
        self.poll_interval = poll_interval  # batch runs: overrides the config's batch_poll_s
        # The Models API entries read before a live run (exprof.models), by model: each
        # run records its model's.
        self.models: dict[str, dict[str, Any]] = {}

    # -- entry points ----------------------------------------------------------

    def run(
        self,
        config: Config,
        samples: list[Sample] | DatasetFile,
        mode: str,
        mocks: dict[str, dict[str, Any]] | None = None,
        run_id: str | None = None,
        concurrency: int | None = None,
        cell: dict[str, Any] | None = None,
        budget: Budget | None = None,
    ) -> RunResult:
        """Start a run; `cell` places it in a matrix experiment (see exprof.experiment).
        `samples` may be a DatasetFile (read as a stream): a live batch run then never
        holds the dataset, and any other run reads it whole first."""
        if isinstance(samples, DatasetFile) and not (mode == "live" and config.batch):
            samples = list(samples)
        with settled_heap():
            return self._run(config, samples, mode, mocks, run_id, concurrency, cell, budget)

    def _run(
        self,
        config: Config,
        samples: list[Sample] | DatasetFile,
        mode: str,
        mocks: dict[str, dict[str, Any]] | None,
        run_id: str | None,
        concurrency: int | None,
        cell: dict[str, Any] | None,
        budget: Budget | None,
    ) -> RunResult:
        count = samples.count if isinstance(samples, DatasetFile) else len(samples)
        events = self._start_events(config, samples, mode, mocks, cell)
        chosen, lease, seq = self._begin(config.experiment_id, run_id, events)
        started = load_started(self.store, chosen)
        if isinstance(samples, DatasetFile):  # the batch run reads them from the snapshot
            record = RunRecord(started, [], {}, partial=True)
            pending, positions = [], range(count)
        else:
            record = RunRecord(started, samples, mocks or {})
            pending, positions = with_repeats(samples, config.repeats), None
        if budget is None and config.budget_usd is not None:
            budget = Budget(self.store, [chosen], config.budget_usd)
        return self._execute(
            record,
            lease,
            seq,
            pending,
            concurrency,
            positions=positions,
            budget=budget,
        )

    def _start_events(
        self,
        config: Config,
        samples: list[Sample] | DatasetFile,
        mode: str,
        mocks: dict[str, dict[str, Any]] | None,
        cell: dict[str, Any] | None,
    ) -> Callable[[str], Iterator[Event]]:
        """A new run's first events: RunStarted, then the dataset snapshot."""
        if isinstance(samples, DatasetFile):
            digest, count = samples.sha256, samples.count
        else:
            digest, count = dataset_sha256(samples), len(samples)

        def events(chosen: str) -> Iterator[Event]:
            yield RunStarted(
                chosen,
                config.experiment_id,
                mode,
                config.to_dict(),
                digest,
                count,
                config.sent_params(mode),
                __version__,
                snapshot_chunk=SNAPSHOT_CHUNK,
                cell=cell,
                model_info=self.models.get(config.model),
            )
            yield from snapshot(samples, mocks if mode == "mock" else None)

        return events

    def begin_run(
        self,
        config: Config,
        samples: list[Sample],
        mode: str,
        mocks: dict[str, dict[str, Any]] | None,
        run_id: str,
        cell: dict[str, Any],
    ) -> tuple[RunRecord, Lease, int]:
        """Record a new run's start and snapshot, sending nothing: for a caller that
        drives the loops itself (exprof.versus). Returns its record, lease and seq."""
        events = self._start_events(config, samples, mode, mocks, cell)
        chosen, lease, seq = self._begin(config.experiment_id, run_id, events)
        return RunRecord(load_started(self.store, chosen), samples, mocks or {}), lease, seq

    def rescore(self, source_run_id: str, config: Config, run_id: str | None = None) -> RunResult:
        """A new run that answers every sample with the response `source_run_id` recorded,
        scored with `config`'s metrics: no API call. The rest of `config` cannot change
        recorded answers, so the source's config is kept; how `config` differs from it
        is recorded in RescoreStarted."""
        source = load_run(self.store, source_run_id)
        old = source.started.config
        applied = Config.from_dict({**old, "metrics": config.metrics}).to_dict()
        new = config.to_dict()
        diff = {k: {"a": old.get(k), "b": new.get(k)} for k in new if old.get(k) != new.get(k)}

        def events(chosen: str) -> Iterator[Event]:
            yield RunStarted(
                chosen,
                source.started.experiment_id,
                "rescore",
                applied,
                source.started.dataset_sha256,
                len(source.samples),
                source.started.sent_params,
                __version__,
                snapshot_chunk=SNAPSHOT_CHUNK,
            )
            yield RescoreStarted(source_run_id, diff)
            yield from snapshot(source.samples, None)

        judge_specs = judge.specs(config.metrics)
        if judge_specs:
            if grading_mode(self.store, source_run_id) == "live":
                from exprof.clients.credentials import require_credentials

                require_credentials(f"rescore {source_run_id} with judge metrics")
            answers = recorded_responses(self.store, source_run_id)
            announce_grading(grading(judge_specs, source.samples, answers), config.pricing)
        chosen, lease, seq = self._begin(source.started.experiment_id, run_id, events)
        record = RunRecord(load_started(self.store, chosen), source.samples, {})
        # Every (sample, repeat) the source holds is answered again with its own answer.
        pending = with_repeats(source.samples, old.get("repeats", 1))
        return self._execute(record, lease, seq, pending, None, announce=False)

    def _begin(
        self, experiment_id: str, run_id: str | None, events: Callable[[str], Iterator[Event]]
    ) -> tuple[str, Lease, int]:
        """Take a run id (the given one, or the experiment's next) and record the run's
        first events under its lease."""
        while True:
            lease = self.store.acquire_new_run(
                experiment_id, run_id, lambda n: auto_run_id(experiment_id, n)
            )
            chosen = lease.run_id
            try:  # before any event is written: the run's export folder must be ours to fill
                check_export_dir(self.output_dir / chosen, chosen, self.store)
                seq = self.store.append(chosen, events(chosen), after_seq=0)
            except ConcurrencyError:
                self.store.release_lease(lease)
                if run_id is not None:
                    raise ExprofError(f"run {run_id!r} already exists") from None
                continue  # another process took this id first: take the next one
            except BaseException:
                self.store.release_lease(lease)
                raise
            return chosen, lease, seq

    def resume(
        self,
        run_id: str,
        concurrency: int | None = None,
        retry_failed: bool = True,
        budget: Budget | None = None,
        join: bool = False,
    ) -> RunResult:
        """Continue a run; `budget` replaces the recorded budget_usd, if any. With `join`,
        as one more worker of a live run beside those already on it."""
        started = load_started(self.store, run_id)
        if started.cell and started.cell.get("sequential"):  # its sequence decides what is sent
            exp = started.cell["experiment"]
            raise ExprofError(
                f"run {run_id} is an arm of the sequential A/B experiment {exp}: "
                f"continue it with `exprof resume {exp}`"
            )
        if join:
            check_joinable(started.mode, started.config, run_id)
        if started.mode == "live" or (
            judge.specs(started.config["metrics"]) and grading_mode(self.store, run_id) == "live"
        ):
            from exprof.clients.credentials import require_credentials

            require_credentials(f"resume {run_id}")
        lease = self.store.join_run(run_id) if join else self.store.acquire_lease(run_id)
        try:
            positions = self.store.pending_positions(run_id, retry_failed)
            if not positions and join:
                # The workers still on it finish it; if none holds a claim (the last one
                # died after its final answer, before finishing), this one does.
                return self._finish(run_id, lease, time.monotonic(), None)
            if not positions and not owed_tasks(self.store, run_id):
                try:
                    summary = export_run(self.store, run_id, self.output_dir / run_id)
                except KeyboardInterrupt as stop:
                    self.store.release_lease(lease)
                    return self._stopped_exporting(run_id, stop)
                self.store.release_lease(lease)
                failed = summary["samples_failed"]
                return _ended(
                    run_id,
                    summary,
                    failed,
                    f"nothing sent: {failed} failed sample(s) left alone (--no-retry-failed)",
                    f"run {run_id} is already complete",
                )
            repeats = started.config.get("repeats", 1)
            if started.mode == "live" and started.config.get("batch"):
                # A batch run reads its samples from the snapshot as it sends them.
                record, pending = RunRecord(started, [], {}, partial=True), []
            else:
                record = load_run(self.store, run_id, {slot // repeats for slot in positions})
                pending = pending_pairs(record.samples, positions, repeats)
            seq = self.store.append(
                run_id,
                [RunResumed(os.getpid(), socket.gethostname(), retry_failed)],
                after_seq=None,  # other workers may be appending to this run
                fenced=lease,
            )
        except BaseException:
            self.store.release_lease(lease)
            raise
        limit = started.config.get("budget_usd")
        if budget is None and limit is not None:
            budget = Budget(self.store, [run_id], limit)
        with settled_heap():  # the loaded dataset lives as long as the run
            return self._execute(
                record,
                lease,
                seq,
                pending,
                concurrency,
                positions=sorted(positions),
                budget=budget,
                retry_failed=retry_failed,
            )

    # -- the work --------------------------------------------------------------

    def _execute(
        self,
        record: RunRecord,
        lease: Lease,
        seq: int,
        pending: list[Sample],
        concurrency: int | None,
        announce: bool = True,
        positions: Sequence[int] | None = None,
        budget: Budget | None = None,
        retry_failed: bool = True,
    ) -> RunResult:
        """Send `pending`, the samples at dataset `positions` (ascending; default: all);
        a batch run is given the positions only (and an empty `pending`). A live run's
        samples are claimed from the store, so that workers joining it (`resume --join`)
        share them; `retry_failed` says whether failed ones are owed."""
        began = time.monotonic()
        mode, config = record.started.mode, record.config
        live = mode == "live" and not config.batch
        others = "workers" if live else "cancel" if mode == "live" else "none"
        session = Session(self.store, record, lease, seq, Progress(0, quiet=True), budget, others)
        try:
            if config.cache:
                from exprof.run.cache import reuse

                pending = reuse(session, pending)
            todo = len(pending) if positions is None else len(positions)
            session.restart(Progress(todo, quiet=self.quiet))  # what reuse recorded is not shown
            streaming = self._streamed_export(record, pending)
        except BaseException:  # Ctrl-C making the files: the lease is not kept
            self.store.release_lease(lease)
            raise
        with streaming as streamed:
            try:
                # Signals are flags throughout; the mock, the batch loop and the judge
                # check them between commits, the live loop takes them itself.
                with deferred_signals() as check:
                    session.check_signals = check
                    if mode in ("mock", "rescore"):
                        from exprof.run.mock import run_mock

                        run_mock(session, pending, streamed)
                    elif config.batch:
                        from exprof.run.batch import run_batch

                        slots = range(len(pending)) if positions is None else positions
                        run_batch(session, slots, self.poll_interval)
                    else:
                        from exprof.run.live import run_live, warn_short_prefixes

                        warn_short_prefixes(config, pending)
                        owed = ("pending", "failed") if retry_failed else ("pending",)
                        chunk = concurrency or config.concurrency
                        source = ClaimSource(self.store, lease, pending, owed, chunk)
                        run_live(session, source, concurrency)
                    session.progress.close()
                    session.progress.enabled = False  # closed: the judge phase draws its own bar
                    run_judge(session, concurrency, self.quiet, announce)
            except KeyboardInterrupt as stop:
                session.progress.close()
                return self._interrupted(record, lease, stop)
            except StoreWriteError as exc:  # what was committed stands: resumable
                with contextlib.suppress(ExprofError):
                    self.store.release_lease(lease)
                raise ExprofError(
                    f"{exc.message}; the run is recorded: once that is fixed, continue "
                    f"with: {hints.command('resume', record.run_id)}",
                    EXIT_SAMPLES_FAILED,
                ) from None
            except BaseException:
                self.store.release_lease(lease)
                raise
            session.progress.close()
            if session.budget is not None and session.budget.reached:
                return self._over_budget(record, lease, session.budget)
            return self._finish(record.run_id, lease, began, record, streamed)

    def _streamed_export(
        self, record: RunRecord, pending: list[Sample]
    ) -> contextlib.AbstractContextManager[StreamedExport | None]:
        """A mock run's export written as it answers, where it equals the export from the
        store: this loop answers every (sample, repeat) of the run (nothing before it did,
        nothing was reused) and no judge grades them afterwards. Discarded on leaving the
        block unless the run finished and put it in place."""
        config = record.config
        whole = len(pending) == record.started.samples_total * config.repeats
        if (
            record.started.mode != "mock"
            or not whole
            or judge.specs(config.metrics)
            or config.tools  # trajectories.jsonl is written from the store
        ):
            return contextlib.nullcontext()
        out = self.output_dir / record.run_id
        try:
            check_export_dir(out, record.run_id, self.store)
        except ExprofError:  # the export from the store says so, once the run is recorded
            return contextlib.nullcontext()
        return StreamedExport(out, record.started, len(pending))

    def _finish(
        self,
        run_id: str,
        lease: Lease,
        began: float,
        record: RunRecord | None,
        streamed: StreamedExport | None = None,
    ) -> RunResult:
        """Leave the run, finishing and exporting it if this worker is its last."""
        try:
            with deferred_signals():
                # Whichever worker of the run leaves last finishes it, exactly once.
                left, counts, mine = self.store.finish_if_done(
                    lease,
                    lambda counts: RunFinished(
                        counts.get("ok", 0),
                        counts.get("failed", 0),
                        round(time.monotonic() - began, 3),
                    ),
                )
            if left is not None:
                return self._left_to_others(run_id, left)
            if not mine:  # another worker finished it, and exports it
                summary = run_summary(self.store, run_id)
                return RunResult(run_id, summary, EXIT_OK, f"run {run_id}: nothing left to claim")
            failed = counts.get("failed", 0)
            summary = self._export(run_id, record, streamed)  # a signal abandons it, see below
        except KeyboardInterrupt as stop:
            return self._stopped_exporting(run_id, stop)
        finally:
            self.store.release_lease(lease)
        return _ended(
            run_id,
            summary,
            failed,
            self._failed_message(run_id, failed),
            f"run {run_id} complete",
        )

    def _failed_message(self, run_id: str, failed: int) -> str:
        """How to get the failed samples answered: resume the run, or, for a rescore
        (whose failures are samples its source never answered), resume the source."""
        if load_started(self.store, run_id).mode != "rescore":
            return f"{failed} sample(s) failed; retry them with: {hints.command('resume', run_id)}"
        source = rescore_source(self.store, run_id).source_run_id
        return (
            f"{failed} sample(s) have no answer in run {source} to score: answer them with "
            f"`{hints.command('resume', source)}`, then rescore {source} again"
        )

    def _interrupted(self, record: RunRecord, lease: Lease, stop: KeyboardInterrupt) -> RunResult:
        """After Ctrl-C or SIGTERM: record the stop, export what there is, hand over;
        or, while other workers remain on the run, just leave it to them."""
        run_id = record.run_id
        if self.store.leave_to_others(lease):
            return self._left_early(run_id, stop_exit_code(stop), "interrupted")
        try:
            with deferred_signals():  # a second signal must not cut this record short
                self.store.append(  # after the last seq: other workers may be appending
                    run_id,
                    [RunInterrupted(f"interrupted by {stop_name(stop)}")],
                    after_seq=None,
                    fenced=lease,
                )
            summary = self._export(run_id, record)
        except KeyboardInterrupt as again:
            return self._stopped_exporting(run_id, again)
        finally:
            self.store.release_lease(lease)
        return RunResult(
            run_id,
            summary,
            stop_exit_code(stop),
            f"interrupted; continue with: {hints.command('resume', run_id)}",
        )

    def _left_early(self, run_id: str, code: int, why: str) -> RunResult:
        """A worker stopped before the run's end while others work on: they finish it
        (record, export); nothing of this worker's stop is recorded on the shared run."""
        return RunResult(
            run_id,
            run_summary(self.store, run_id),
            code,
            f"{why}; this worker left run {run_id} to the other workers still on it "
            "(they finish and export it)",
        )

    def _left_to_others(self, run_id: str, left: int) -> RunResult:
        """This worker has nothing left to claim, but other workers of the run hold
        claims: the last of them finishes and exports the run."""
        return RunResult(
            run_id,
            run_summary(self.store, run_id),
            EXIT_OK,
            f"this worker is done; {left} sample(s) of run {run_id} are still with other "
            "workers, and the last of them finishes the run (a dead worker's return to the "
            f"pool when its heartbeat expires: then `{hints.command('resume', run_id)}`)",
        )

    def _stopped_exporting(self, run_id: str, stop: KeyboardInterrupt) -> RunResult:
        """A signal during the export: what is recorded stands, and `resume` finishes
        the export (it exports a run with nothing left to send)."""
        return RunResult(
            run_id,
            {},
            stop_exit_code(stop),
            f"interrupted during the export; finish it with: {hints.command('resume', run_id)}",
        )

    def _over_budget(self, record: RunRecord, lease: Lease, budget: Budget) -> RunResult:
        """Stopped by the budget: recorded as interrupted, so that resume continues it
        (by the run's last worker: while others remain, this one leaves it to them)."""
        run_id = record.run_id
        message = budget.message(run_id)
        if self.store.leave_to_others(lease):
            return replace(self._left_early(run_id, EXIT_SAMPLES_FAILED, message), over_budget=True)
        try:
            self.store.append(run_id, [RunInterrupted(message)], after_seq=None, fenced=lease)
            summary = self._export(run_id, record)
        finally:
            self.store.release_lease(lease)
        return RunResult(run_id, summary, EXIT_SAMPLES_FAILED, message, over_budget=True)

    # -- helpers ---------------------------------------------------------------

    def _export(
        self,
        run_id: str,
        record: RunRecord | None = None,
        streamed: StreamedExport | None = None,
    ) -> dict[str, Any]:
        """Export a recorded run: the files written as it answered, when they are whole
        (see _streamed_export); else from the store, handing over the dataset when we
        hold all of it (saves re-reading it)."""
        samples = None if record is None or record.partial else record.samples
        try:
            if streamed is not None and streamed.whole:
                return streamed.complete(self.store, run_id)
            return export_run(self.store, run_id, self.output_dir / run_id, samples)
        except ExprofError as exc:
            # Exit 1, not 2: the run is recorded (exit 2 promises that nothing was).
            raise ExprofError(
                f"{exc.message}; the run is recorded: once that is fixed, write its files "
                f"with `{hints.command('export', run_id)}`",
                EXIT_SAMPLES_FAILED,
            ) from None
