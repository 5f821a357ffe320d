"""Batch runs at scale: the dataset is validated and recorded as a
stream, the batch loop reads its samples back from the snapshot, and the export merges
instead of holding sets. The 1M-sample figures are in benchmarks/bench_batch.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_input import DATASET_CASES, MOCKS, _write

import exprof.dataset
import exprof.dataset_stream
from conftest import KEY, write_experiment
from exprof.config import load_config
from exprof.dataset import load_dataset
from exprof.dataset_stream import dataset_sha256, scan_dataset
from exprof.errors import ExprofError
from exprof.run.runner import Runner
from exprof.store.engine import Store, store_url


def samples(n: int) -> list[dict]:
    return [
        {
            "dialogue_id": f"d{i}",
            "system": "sys \u00e9\u2028",
            "user": f"question {i} \U0001f600 fact{i}" + " pad" * (i % 40),
            "required_facts": [f"fact{i}"],
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_the_streamed_dataset_is_the_loaded_one(tmp_path, monkeypatch, suffix):
    """Parsed in reads far smaller than a sample (elements and lines cut anywhere, a
    multi-byte character included): the same samples, count and digest."""
    monkeypatch.setattr(exprof.dataset_stream, "STREAM_READ", 7)
    path = tmp_path / f"d{suffix}"
    rows = samples(60)
    if suffix == ".json":
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    loaded = load_dataset(path)
    scanned = scan_dataset(path)
    assert (scanned.count, scanned.sha256) == (len(loaded), dataset_sha256(loaded))
    assert list(scanned) == loaded


@pytest.mark.parametrize(
    "case, config, dataset, fragment",
    [c for c in DATASET_CASES if isinstance(c[1], dict)],
    ids=[c[0] for c in DATASET_CASES if isinstance(c[1], dict)],
)
def test_a_bad_dataset_fails_a_batch_run_as_it_fails_any_run(
    tmp_path, invoke, monkeypatch, case, config, dataset, fragment
):
    """The streaming pass names every problem exactly as the whole-file load does: one
    Error line, exit 2, no store."""
    folder = tmp_path / "exp"
    folder.mkdir()
    dataset_name = "d.jsonl" if config.get("dataset_path") == "d.jsonl" else "dialogues.json"
    _write(folder / dataset_name, dataset)
    _write(folder / "mock_responses.json", MOCKS)
    _write(folder / "config.yaml", config)
    expected = invoke("run", "--config", str(folder / "config.yaml")).stderr
    _write(folder / "config.yaml", {**config, "batch": True})
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # never reached
    result = invoke("run", "--config", str(folder / "config.yaml"))
    assert (result.exit_code, result.stderr, result.stdout) == (2, expected, "")
    assert fragment in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_batch_run_never_reads_the_dataset_whole(tmp_path, invoke, fake, monkeypatch):
    """The dataset is streamed twice (validate, then record) and the batches read the
    samples back from the snapshot: the whole-file reader is never called."""
    server = fake()
    server.batches.processing_s = 0.0

    def whole(*args, **kwargs):
        raise AssertionError("a batch run read its dataset whole")

    config = write_experiment(tmp_path, samples(30), {}, batch=True, batch_poll_s=0.02)
    monkeypatch.setattr(exprof.dataset, "read_text", whole)
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 0, result.output
    # Only "\n" ends a line: the prompts hold U+2028, which splitlines would cut at.
    lines = (tmp_path / "runs" / "exp" / "requests.jsonl").read_text().split("\n")[:-1]
    assert [json.loads(line)["dialogue_id"] for line in lines] == [f"d{i}" for i in range(30)]
    responses = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text()
    assert responses.count("\n") == 30
    assert server.batches.billed == 30


def test_a_dataset_changed_during_the_run_records_nothing(tmp_path):
    """Validated, then edited before the snapshot is recorded: the run is refused whole
    (its first events and the snapshot are one transaction)."""
    path = write_experiment(tmp_path, samples(5), {}, batch=True)
    config = load_config(path)
    scanned = scan_dataset(config.dataset_path)
    Path(config.dataset_path).write_text(json.dumps(samples(6)), encoding="utf-8")
    store = Store.open(store_url(None, tmp_path / "runs"), create=True)
    with pytest.raises(ExprofError, match="dataset changed while the run was reading it"):
        Runner(store, tmp_path / "runs").run(config, scanned, "live", run_id="r")
    assert not store.run_exists("r")
