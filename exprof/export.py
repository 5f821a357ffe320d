"""Writing a run's artifacts from its events: requests.jsonl, responses.jsonl,
summary.json, and scores.jsonl (per-sample metrics, so exports can be compared).

The same events give the same bytes: lines follow dataset order, keys keep their
recorded order, and each file is replaced atomically so a crash never leaves half.

An export directory carries a marker naming its run (MARKER). exprof writes into a
directory only when it is new, empty, or already that run's export; anything else is
another program's (or another run's) and is refused unless the user says `--force`.
`runs` checks that FILES are all there, which is how an export that failed (a full
disk, say) shows as missing until `exprof export RUN` completes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from exprof.atomic import AtomicFile, remove_stale_temps, temp_target, write_atomic
from exprof.clients.caching import record as cache_record
from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.files import EXPORT_FILES, read_text
from exprof.jsonio import dumps, dumps_pretty, loads
from exprof.mock_responses import RESERVED_KEYS
from exprof.scoring import recorded
from exprof.store.engine import Store
from exprof.store.events import Event, ResponseReceived, RunStarted, SampleScored, TurnRecorded
from exprof.store.record import iter_samples, load_started, recorded_turns
from exprof.summary import run_summary

FILES = EXPORT_FILES
LINE_FILES = tuple(name for name in FILES if name.endswith(".jsonl"))  # then summary.json
MARKER = ".exprof-export.json"
TRAJECTORIES = "trajectories.jsonl"  # a tool run's: one line per answer, its turns
# The store's sidecar files: a run id (a folder name) may never be one of these.
STORE_SIDECARS = ("", "-wal", "-shm", "-journal")


def check_export_dir(
    out: Path, run_id: str, store: Store | None = None, force: bool = False
) -> None:
    """Refuse, before anything is written, a target that is not ours to write: the store
    file or one of its sidecars, a file, or a non-empty folder that is not an export of
    this run (unless `force`)."""
    store_file = _store_file(store) if store is not None else None
    if store_file is not None:
        target = out.absolute()
        for suffix in STORE_SIDECARS:
            if target == Path(f"{store_file.absolute()}{suffix}"):
                raise ExprofError(
                    f"{out}: is the store's own file{' ' + suffix if suffix else ''}; "
                    "choose another run id or --to"
                )
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise ExprofError(f"{out}: exists and is not a directory; choose another run id or --to")
    if force or _is_export_of(out, run_id):
        return
    try:
        # `exprof report` may have put its pages into a run's folder before any export.
        empty = all(_is_report_page(p.name) or _is_unfinished_export(p.name) for p in out.iterdir())
    except OSError as exc:
        raise ExprofError(f"{out}: cannot read the export directory: {exc.strerror}") from None
    if not empty:
        raise ExprofError(
            f"{out}: not empty and not an export of run {run_id!r}; "
            "choose another directory, or pass --force to write into it anyway"
        )


def _is_report_page(name: str) -> bool:
    return name == "report.html" or (name.startswith("compare-") and name.endswith(".html"))


def _is_unfinished_export(name: str) -> bool:
    """A temporary of an export file or the marker, left by an export killed before it
    wrote the marker (kill -9 mid-export): the folder is still this run's to fill."""
    return temp_target(name) in (MARKER, *FILES)


def _store_file(store: Store) -> Path | None:
    return store.file_path()


def _is_export_of(out: Path, run_id: str) -> bool:
    """The marker names the run; an export from before the marker has its summary.json."""
    for name in (MARKER, "summary.json"):
        path = out / name
        if path.is_file() and not path.is_symlink():
            try:
                data = loads(read_text(path, "export marker", limit=1024 * 1024))
            except (ExprofError, ValueError):
                return False
            return isinstance(data, dict) and data.get("run_id") == run_id
    return False


def export_run(
    store: Store,
    run_id: str,
    out_dir: str | Path,
    samples: Iterable[Sample] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the export files under out_dir; return the summary. `samples`, when given,
    is the run's whole dataset in order (as recorded), so it need not be read back."""
    out = Path(out_dir)
    started = load_started(store, run_id)  # an unknown run fails here, leaving no folder
    check_export_dir(out, run_id, store, force)
    _make_export_dir(out)
    lines = ExportLines(started)
    repeats = lines.config.repeats

    def request_lines() -> Iterator[str]:
        # Both in dataset order: the requested pairs are merged in, never held as a set.
        requested = store.requested_slots(run_id)
        wanted = next(requested, None)
        for s in iter_samples(store, run_id) if samples is None else samples:
            for repeat in range(repeats):
                if wanted == (s.dialogue_id, repeat):
                    wanted = next(requested, None)
                    yield lines.request(s, repeat)

    # The score lines are written beside the responses in the same pass, to their own
    # temporary file: a million of them are never held in memory.
    requests, responses, scores = files = _line_files(out)
    try:
        for line in request_lines():
            requests.write(line)
        custom = recorded.per_sample(store, run_id, started.config)  # {} without metrics
        answered: list[tuple[str, int]] = []
        for scored in store.scored_responses(run_id):
            response = scored.response
            responses.write(lines.response(response))
            values = custom.get((response.dialogue_id, response.repeat), {})
            scores.write(lines.score(response, scored, values))
            answered.append((response.dialogue_id, response.repeat))
    except BaseException:
        for file in files:
            file.discard()
        raise
    if lines.config.tools:
        turns = recorded_turns(store, run_id)
        write_atomic(
            out / TRAJECTORIES, (lines.trajectory(key, turns.get(key, [])) for key in answered)
        )
    return _complete(store, run_id, out, files)


def _make_export_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExprofError(f"{out}: cannot create the export directory: {exc.strerror}") from None
    remove_stale_temps(out)  # left by an export that was killed mid-write


def _line_files(out: Path) -> tuple[AtomicFile, ...]:
    """The temporaries of requests.jsonl, responses.jsonl and scores.jsonl."""
    files: list[AtomicFile] = []
    try:
        for name in LINE_FILES:
            files.append(AtomicFile(out / name))
    except BaseException:
        for file in files:
            file.discard()
        raise
    return tuple(files)


def _complete(
    store: Store, run_id: str, out: Path, files: tuple[AtomicFile, ...]
) -> dict[str, Any]:
    """Put the written files in place, the marker first, and the summary last."""
    try:
        write_atomic(out / MARKER, [dumps_pretty({"run_id": run_id, "written_by": "exprof"})])
        for file in files:
            file.commit()
    finally:
        for file in files:
            file.discard()  # what was not committed
    summary = run_summary(store, run_id)
    write_atomic(out / "summary.json", [dumps_pretty(summary)])
    return summary


class Scores(Protocol):
    """An answer's recorded built-in scores: a SampleScored event, or the store's row."""

    @property
    def fact_coverage(self) -> float: ...
    @property
    def refused(self) -> bool: ...
    @property
    def facts_missing(self) -> Sequence[str]: ...


class ExportLines:
    """The one place for how a run's requests and answers become export lines, whether
    the answers are read back from the store (export_run) or are in hand as a mock run
    records them (StreamedExport)."""

    def __init__(self, started: RunStarted) -> None:
        self.config = config = Config.from_dict(started.config)
        self.fields = config.output_fields
        # Every request line's settings, after its dialogue_id (and repeat).
        self.sent = {
            "model": config.model,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        }
        # The mock's answer may carry no model or temperature; the request's are the truth.
        self.defaults = (
            {"model": config.model, "temperature": config.temperature}
            if started.mode == "mock"
            else {}
        )
        # With repeats every line is one (sample, repeat) and names its repeat;
        # without, the lines are exactly what they were before repeats existed.
        self.with_repeat = config.repeats > 1
        # Metadata never shadows the line's own fields (the mock loader refuses such
        # keys; a store from an older exprof may hold them).
        self.shadowing = frozenset(
            (*RESERVED_KEYS, "repeat") if self.with_repeat else RESERVED_KEYS
        )

    def request(self, sample: Sample, repeat: int) -> str:
        line: dict[str, Any] = {"dialogue_id": sample.dialogue_id}
        if self.with_repeat:
            line["repeat"] = repeat
        config = self.config
        line.update(self.sent)
        line["prompt"] = sample.prompt()
        if config.prompt_cache is not None:  # where its breakpoints went
            line.update(cache_record(config, sample))
        return _line(line)

    def response(self, response: ResponseReceived) -> str:
        line: dict[str, Any] = {"dialogue_id": response.dialogue_id}
        if self.with_repeat:
            line["repeat"] = response.repeat
        if "completion" in self.fields:
            line["completion"] = response.completion
        if "metadata" in self.fields:
            line.update(self.defaults)
            meta = response.metadata
            if self.shadowing.isdisjoint(meta):
                line.update(meta)
            else:
                line.update((k, v) for k, v in meta.items() if k not in self.shadowing)
        return _line(line)

    def trajectory(self, key: tuple[str, int], turns: Sequence[TurnRecorded]) -> str:
        """An answer's trajectories.jsonl line: each turn's messages sent, the reply's
        blocks, the results of its tool calls, its usage and stop reason."""
        line: dict[str, Any] = {"dialogue_id": key[0]}
        if self.with_repeat:
            line["repeat"] = key[1]
        line["turns"] = [
            {
                "sent": t.sent,
                "received": t.received,
                "tool_results": t.tool_results,
                "usage": t.usage,
                "stop_reason": t.stop_reason,
            }
            for t in turns
        ]
        return _line(line)

    def score(self, response: ResponseReceived, scored: Scores, values: dict[str, Any]) -> str:
        """The answer's scores.jsonl line: its built-in scores, the names of the facts it
        missed, and its custom metric `values` (see recorded.in_config_order)."""
        line: dict[str, Any] = {"dialogue_id": response.dialogue_id}
        if self.with_repeat:
            line["repeat"] = response.repeat
        line.update(
            fact_coverage=scored.fact_coverage,
            refused=bool(scored.refused),
            facts_missing=list(scored.facts_missing),
        )
        line.update(values)
        return _line(line)


class StreamedExport:
    """A whole mock run's export, written as it answers (as any tool without a store
    would) instead of read back from the store at the end, which cost a 100k-sample run
    a sixth of its time. The lines are ExportLines', from the very events the run
    appends, so the files are byte for byte what `exprof export` writes from the store
    (tests/test_streamed_export.py and the crash loops compare the two). The runner uses
    it only where that holds: every (sample, repeat) of the run answered by one loop, in
    dataset order, and the run finished; anything else is exported from the store. Any
    write failure drops it, and the export from the store then says what is wrong."""

    def __init__(self, out: Path, started: RunStarted, expected: int) -> None:
        self.out = out
        self.lines = ExportLines(started)
        self.names = recorded.metric_names(started.config)
        self.expected = expected  # answers owed: the export is whole once all are in
        self.added = 0
        try:
            _make_export_dir(out)
            self.files = _line_files(out)
        except (ExprofError, OSError):  # left to the export from the store, which says why
            self.files = ()

    def __enter__(self) -> StreamedExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # a no-op once complete

    @property
    def whole(self) -> bool:
        return bool(self.files) and self.added == self.expected

    def add(self, sample: Sample, events: Sequence[Event]) -> None:
        """One (sample, repeat)'s events, as sample_events made them."""
        if not self.files:
            return
        requests, responses, scores = self.files
        try:
            requests.write(self.lines.request(sample, sample.repeat))
            response = scored = None
            for event in events:
                if isinstance(event, ResponseReceived):
                    response = event
                elif isinstance(event, SampleScored):
                    scored = event
            if response is not None and scored is not None:  # else failed: no answer
                responses.write(self.lines.response(response))
                values = (
                    recorded.in_config_order(
                        self.names, scored.metrics or {}, scored.metric_errors or {}
                    )
                    if self.names
                    else {}
                )
                scores.write(self.lines.score(response, scored, values))
        except ExprofError:
            self.discard()
            return
        self.added += 1

    def complete(self, store: Store, run_id: str) -> dict[str, Any]:
        """Put the files in place, once the folder is still this run's to write (another
        export may have been written into it meanwhile): refused as export_run would."""
        assert self.whole, "only a whole run's export is put in place"
        files, self.files = self.files, ()
        try:
            check_export_dir(self.out, run_id, store)
        except BaseException:
            for file in files:
                file.discard()
            raise
        return _complete(store, run_id, self.out, files)

    def discard(self) -> None:
        files, self.files = self.files, ()
        for file in files:
            file.discard()


def _line(obj: dict[str, Any]) -> str:
    return dumps(obj) + "\n"
