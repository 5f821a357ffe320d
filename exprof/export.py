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

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from exprof.config import Config
from exprof.dataset import RESERVED_KEYS, Sample
from exprof.errors import ExprofError
from exprof.files import (
    EXPORT_FILES,
    read_text,
    remove_stale_temps,
    temp_target,
    write_atomic,
)
from exprof.jsonio import dumps, dumps_pretty, loads
from exprof.scoring import recorded
from exprof.store.engine import Store
from exprof.store.record import iter_samples, load_started
from exprof.summary import run_summary

FILES = EXPORT_FILES
MARKER = ".exprof-export.json"
# The store's sidecar files: a run id (a folder name) may never be one of these.
STORE_SIDECARS = ("", "-wal", "-shm", "-journal")
SPOOL_BYTES = 8 * 1024 * 1024  # score lines kept in memory before they spill to disk


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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExprofError(f"{out}: cannot create the export directory: {exc.strerror}") from None
    remove_stale_temps(out)  # left by an export that was killed mid-write
    write_atomic(out / MARKER, [dumps_pretty({"run_id": run_id, "written_by": "exprof"})])
    recorded_config = started.config
    config = Config.from_dict(recorded_config)
    # The mock's answer may carry no model or temperature; the request's are the truth.
    defaults = (
        {"model": config.model, "temperature": config.temperature} if started.mode == "mock" else {}
    )
    # With repeats (issue 12) every line is one (sample, repeat) and names its repeat;
    # without, the lines are exactly what they were before repeats existed.
    repeats = config.repeats

    def request_lines() -> Iterator[str]:
        # Both in dataset order: the requested pairs are merged in, never held as a set.
        requested = store.requested_slots(run_id)
        wanted = next(requested, None)
        for s in iter_samples(store, run_id) if samples is None else samples:
            for repeat in range(repeats):
                if wanted != (s.dialogue_id, repeat):
                    continue
                wanted = next(requested, None)
                line: dict[str, Any] = {"dialogue_id": s.dialogue_id}
                if repeats > 1:
                    line["repeat"] = repeat
                line.update(
                    model=config.model,
                    temperature=config.temperature,
                    max_tokens=config.max_tokens,
                    prompt={"system": s.system, "user": s.user},
                )
                yield _line(line)

    write_atomic(out / "requests.jsonl", request_lines())
    custom = recorded.per_sample(store, run_id, recorded_config)  # {} without custom metrics
    # The score lines are written beside the responses in the same pass, spooled to a
    # temporary file: a million of them are never held in memory.
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+", encoding="utf-8") as scores:
        responses = _response_lines(
            store, run_id, config.output_fields, defaults, scores, custom, config.repeats > 1
        )
        write_atomic(out / "responses.jsonl", responses)
        scores.seek(0)
        write_atomic(out / "scores.jsonl", scores)  # line by line, as write_atomic buffers
    summary = run_summary(store, run_id)
    write_atomic(out / "summary.json", [dumps_pretty(summary)])
    return summary


def _response_lines(
    store: Store,
    run_id: str,
    fields: list[str],
    defaults: dict[str, Any],
    scores: IO[str],
    custom: dict[tuple[str, int], dict[str, Any]],
    with_repeat: bool,
) -> Iterator[str]:
    """responses.jsonl lines, in dataset order; each score line is written to `scores`,
    with the metrics recorded for it and the names of the facts its answer missed."""
    for scored in store.scored_responses(run_id):
        response = scored.response
        line: dict[str, Any] = {"dialogue_id": response.dialogue_id}
        first: dict[str, Any] = {"dialogue_id": response.dialogue_id}
        if with_repeat:
            line["repeat"] = first["repeat"] = response.repeat
        if "completion" in fields:
            line["completion"] = response.completion
        if "metadata" in fields:
            line.update(defaults)
            # Metadata never shadows the line's own fields (the mock loader refuses such
            # keys; a store from an older exprof may hold them).
            line.update(
                (k, v)
                for k, v in response.metadata.items()
                if k not in RESERVED_KEYS and not (with_repeat and k == "repeat")
            )
        yield _line(line)
        scores.write(
            _line(
                {
                    **first,
                    "fact_coverage": scored.fact_coverage,
                    "refused": scored.refused,
                    "facts_missing": scored.facts_missing,
                    **custom.get((response.dialogue_id, response.repeat), {}),
                }
            )
        )


def _line(obj: dict[str, Any]) -> str:
    return dumps(obj) + "\n"
