"""The files exprof writes: exports never touch files exprof did not write, survive a full
disk or a kill, honour the umask; run ids stay clear of the store; compare's gate flags each
check their own metric; JSON Lines split on "\\n" only; `python -m exprof.cli` works."""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_input import _assert_clean_failure, store_state, without_root_powers
from test_compare import make_run

from conftest import make_samples, write_experiment
from exprof.export import FILES, MARKER, export_run
from exprof.run.runner import Runner
from exprof.store.engine import Store, store_url

SAMPLES = [{"dialogue_id": "a", "system": "s", "user": "u", "required_facts": ["x"]}]
MOCKS = {"a": {"completion": "x", "metadata": {}}}


@pytest.fixture
def exported_run(tmp_path, invoke):
    config = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    return config, tmp_path / "runs" / "exprof.db"


def _exprof(*args: str, cwd: Path, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exprof", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


# -- item 2: export writes only where it may, and removes only its own files ----------


FOREIGN = {  # files another program keeps in a folder, some named like ours
    "summary.json": b'{"mine": true}',
    "notes.txt": b"keep me",
    ".cache.tmp": b"someone's temp file",
    ".summary.json.abc123.tmp": b"looks like an old exprof temp name",
    ".requests.jsonl.exprof-x-abcdefgh.tmp": b"almost our pattern, but not quite",
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_export_refuses_a_folder_with_anything_foreign(tmp_path, invoke, exported_run, name):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / name).write_bytes(FOREIGN[name])
    before = store_state(exported_run[1])
    result = invoke("export", "exp", "--to", str(folder))
    _assert_clean_failure(
        result, "not empty and not an export of run 'exp'", before, exported_run[1]
    )
    assert "--force" in result.stderr
    assert [p.name for p in folder.iterdir()] == [name]
    assert (folder / name).read_bytes() == FOREIGN[name]


def test_export_with_force_writes_beside_foreign_files_and_deletes_none(
    tmp_path, invoke, exported_run
):
    folder = tmp_path / "theirs"
    folder.mkdir()
    for name, data in FOREIGN.items():
        (folder / name).write_bytes(data)
    assert invoke("export", "exp", "--to", str(folder), "--force").exit_code == 0
    for name, data in FOREIGN.items():
        if name != "summary.json":  # --force: the user asked for ours to replace theirs
            assert (folder / name).read_bytes() == data
    assert json.loads((folder / "summary.json").read_text())["run_id"] == "exp"
    assert invoke("export", "exp", "--to", str(folder)).exit_code == 0  # now it is ours


def test_export_refuses_another_runs_export(tmp_path, invoke, exported_run):
    assert invoke("run", "--config", str(exported_run[0]), "--quiet").exit_code == 0  # exp-2
    exp2 = tmp_path / "runs" / "exp-2"
    before = {p.name: p.read_bytes() for p in exp2.iterdir()}
    result = invoke("export", "exp", "--to", str(exp2))
    _assert_clean_failure(
        result, "not an export of run 'exp'", store_state(exported_run[1]), exported_run[1]
    )
    assert {p.name: p.read_bytes() for p in exp2.iterdir()} == before


def test_export_into_its_own_folder_or_an_empty_one_needs_no_force(tmp_path, invoke, exported_run):
    assert invoke("export", "exp").exit_code == 0
    (tmp_path / "empty").mkdir()
    assert invoke("export", "exp", "--to", "empty").exit_code == 0
    # an export from before the marker existed is recognised by its summary.json
    (tmp_path / "runs" / "exp" / MARKER).unlink()
    assert invoke("export", "exp").exit_code == 0


def test_export_target_that_is_a_file_is_refused(tmp_path, invoke, exported_run):
    folder = tmp_path / "runs" / "exp"
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_text("x")
    result = invoke("export", "exp")
    before = store_state(exported_run[1])
    _assert_clean_failure(
        result, "runs/exp: exists and is not a directory", before, exported_run[1]
    )
    assert folder.read_text() == "x"
    assert "is a file" in invoke("export", "exp", "--to", str(folder)).stderr


def test_only_our_dead_temp_files_are_cleaned(tmp_path, invoke, exported_run):
    folder = tmp_path / "runs" / "exp"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours_dead = folder / f".responses.jsonl.exprof-{dead.pid}-abcd_123.tmp"
    ours_alive = folder / f".responses.jsonl.exprof-{os.getppid()}-abcd_123.tmp"
    lookalike = folder / ".responses.jsonl.foo-abcd1234.tmp"
    for path in (ours_dead, ours_alive, lookalike):
        path.write_text("partial")
    assert invoke("export", "exp").exit_code == 0
    assert not ours_dead.exists()  # a killed export's leftover
    assert ours_alive.exists()  # another export, still writing
    assert lookalike.exists()  # not a name exprof makes


def test_a_run_refuses_a_foreign_export_folder_before_recording(tmp_path, invoke):
    config = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    (tmp_path / "runs" / "exp").mkdir(parents=True)
    (tmp_path / "runs" / "exp" / "summary.json").write_text("{}")
    assert invoke("run", "--config", str(config), "--run-id", "other").exit_code == 0
    db = tmp_path / "runs" / "exprof.db"
    before = store_state(db)
    result = invoke("run", "--config", str(config))
    _assert_clean_failure(result, "runs/exp: not empty and not an export", before, db)
    assert (tmp_path / "runs" / "exp" / "summary.json").read_text() == "{}"


# -- item 10: a full disk or an unwritable folder during export ------------------------


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _runs_row(invoke, run_id: str) -> dict:
    rows = json.loads(invoke("runs", "--format", "json").stdout)
    return next(r for r in rows if r["run_id"] == run_id)


def test_full_disk_during_export_then_export_finishes_the_job(tmp_path, invoke):
    samples, mocks = make_samples(2000)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    folder = tmp_path / "runs" / "exp"
    whole = {name: (folder / name).read_bytes() for name in FILES}
    assert _runs_row(invoke, "exp")["status"] == "complete"
    for name in FILES:
        (folder / name).unlink()
    db = tmp_path / "runs" / "exprof.db"
    before = store_state(db)
    # The disk fills up at each big file in turn: the limit is just under its size (and
    # above what opening the store needs: its 32 KiB shared-memory file).
    limits = sorted(len(data) - 1 for data in whole.values() if len(data) > 100_000)
    assert len(limits) == 3
    for limit in limits:
        full = _exprof("export", "exp", cwd=tmp_path, preexec=_file_size_limit(limit))
        assert full.returncode == 2, full.stderr
        [line] = full.stderr.splitlines()
        assert line.startswith("Error: runs/exp/") and "File too large" in line, line
        assert store_state(db) == before
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        row = _runs_row(invoke, "exp")
        assert row["status"] == "complete (export missing)"
        assert row["next step"] == "exprof export exp"
    assert invoke("export", "exp").exit_code == 0
    assert {name: (folder / name).read_bytes() for name in FILES} == whole
    assert _runs_row(invoke, "exp") | {"created": None} == _runs_row(invoke, "exp") | {
        "created": None,
        "status": "complete",
        "next step": "",
    }


def test_unwritable_export_folder_at_the_end_of_a_run(tmp_path):
    """The run is recorded, its export fails: one line, and the way out. Exit 1, as for
    a run with failed samples: exit 2 promises that nothing was recorded."""
    config = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = without_root_powers(
            "run", "--config", str(config), "--output-dir", "out", "--db", "s.db", cwd=tmp_path
        )
    finally:
        out.chmod(0o755)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: out/exp: cannot create the export directory: Permission denied")
    hint = "exprof export exp --output-dir out --db s.db"  # the same store: pasted, it works
    assert line.endswith(f"write its files with `{hint}`")
    runs = _exprof("runs", "--output-dir", "out", "--db", "s.db", "--format", "json", cwd=tmp_path)
    assert json.loads(runs.stdout)[0]["status"] == "complete (export missing)"
    assert json.loads(runs.stdout)[0]["next step"] == hint
    assert _exprof(*shlex.split(hint)[1:], cwd=tmp_path).returncode == 0
    runs = _exprof("runs", "--output-dir", "out", "--db", "s.db", "--format", "json", cwd=tmp_path)
    assert json.loads(runs.stdout)[0]["status"] == "complete"


def test_unwritable_to_is_one_line(tmp_path, exported_run):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        nested = without_root_powers("export", "exp", "--to", "locked/sub", cwd=tmp_path)
        inside = without_root_powers("export", "exp", "--to", "locked", cwd=tmp_path)
    finally:
        locked.chmod(0o755)
    for result in (nested, inside):
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: locked") and "Permission denied" in line, line
    assert list(locked.iterdir()) == []


# -- item 17: modes, unknown runs, the mock's model and temperature --------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_every_export_file_honours_the_umask(tmp_path, exported_run, umask):
    result = _exprof("export", "exp", "--to", "out", cwd=tmp_path, preexec=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    written = list((tmp_path / "out").iterdir())
    assert sorted(p.name for p in written) == sorted([*FILES, MARKER])
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


@pytest.mark.parametrize("to", [None, "new", "new/deeper"])
def test_export_of_an_unknown_run_leaves_no_folder(tmp_path, invoke, exported_run, to):
    args = ["export", "nope"] + (["--to", to] if to else [])
    result = invoke(*args)
    _assert_clean_failure(result, "no run 'nope'", store_state(exported_run[1]), exported_run[1])
    assert not (tmp_path / (to or "runs/nope")).exists()
    assert not (tmp_path / "new").exists()


def test_mock_responses_get_model_and_temperature_from_the_config(tmp_path, invoke):
    samples = [dict(SAMPLES[0], dialogue_id=d) for d in ("none", "empty", "own", "partial")]
    mocks = {
        "none": {"completion": "x"},
        "empty": {"completion": "x", "metadata": {}},
        "own": {"completion": "x", "metadata": {"model": "m2", "temperature": 0.9, "k": 1}},
        "partial": {"completion": "x", "metadata": {"token_count": 3}},
    }
    config = write_experiment(tmp_path / "e", samples, mocks, temperature=0.3)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    text = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text()
    assert [json.loads(line) for line in text.splitlines()] == [
        {"dialogue_id": "none", "completion": "x", "model": "claude-3-opus", "temperature": 0.3},
        {"dialogue_id": "empty", "completion": "x", "model": "claude-3-opus", "temperature": 0.3},
        {"dialogue_id": "own", "completion": "x", "model": "m2", "temperature": 0.9, "k": 1},
        {
            "dialogue_id": "partial",
            "completion": "x",
            "model": "claude-3-opus",
            "temperature": 0.3,
            "token_count": 3,
        },
    ]


# -- item 12: metadata never shadows a line's own fields --------------------------------


def test_recorded_metadata_never_shadows_dialogue_id_or_completion(tmp_path, store):
    """The mock loader refuses such keys; here they are recorded anyway (through the
    library, as a store from an older exprof may hold them) and the export still keeps
    each line's own fields."""
    from exprof.config import load_config
    from exprof.dataset import load_dataset

    mocks = {
        "a": {
            "completion": "real",
            "metadata": {"dialogue_id": "spoof", "completion": "fake", "model": "m", "n": 1},
        }
    }
    config = load_config(write_experiment(tmp_path / "e", SAMPLES, mocks))
    runner = Runner(store, tmp_path / "runs")
    runner.run(config, load_dataset(config.dataset_path), "mock", mocks=mocks)
    [line] = (tmp_path / "runs" / "exp" / "responses.jsonl").read_text().splitlines()
    assert json.loads(line) == {
        "dialogue_id": "a",
        "completion": "real",
        "model": "m",
        "temperature": 0.5,
        "n": 1,
    }


# -- item 11: run ids and the store's files ---------------------------------------------


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_run_id_naming_a_custom_store_file_is_refused_before_writing(tmp_path, invoke, suffix):
    config = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    assert invoke("run", "--config", str(config), "--db", "runs/my.sqlite").exit_code == 0
    db = tmp_path / "runs" / "my.sqlite"
    before = store_state(db)
    result = invoke(
        "run", "--config", str(config), "--db", str(db), "--run-id", f"my.sqlite{suffix}"
    )
    _assert_clean_failure(result, "is the store's own file", before, db)
    assert db.is_file()


def test_automatic_ids_of_a_long_experiment_id_stay_within_128(tmp_path, invoke):
    long_id = "x" * 120 + ".abcdefg"  # 128 characters, the most an id may have
    config = write_experiment(tmp_path / "e", SAMPLES, MOCKS, experiment_id=long_id)
    ids = []
    for _ in range(3):
        result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
        assert result.exit_code == 0, result.output
        ids.append(json.loads(result.stdout)["run_id"])
    assert ids == [long_id, long_id[:126] + "-2", long_id[:126] + "-3"]
    assert all(len(i) <= 128 for i in ids)
    for run_id in ids:
        assert (tmp_path / "runs" / run_id / "summary.json").is_file()
        assert invoke("summarize", run_id).exit_code == 0


# -- item 4: each gate flag checks only its own metric ----------------------------------


@pytest.fixture
def gate_runs(tmp_path, invoke):
    n = 40
    make_run(tmp_path, invoke, "base", [2] * n)
    make_run(tmp_path, invoke, "cov", [0] * n)  # coverage falls, refusals do not change
    make_run(tmp_path, invoke, "ref", [2] * n, refused={f"d{i:04d}" for i in range(20)})


@pytest.mark.parametrize(
    "b, flags, code",
    [
        ("cov", ["--max-refusal-increase", "0.5"], 0),  # refusals did not rise
        ("cov", ["--fail-on-regression"], 1),
        ("ref", ["--fail-on-regression"], 0),  # coverage did not fall
        ("ref", ["--max-refusal-increase", "0.4"], 1),
        ("ref", ["--max-refusal-increase", "0.6"], 0),
        ("cov", [], 0),
        ("ref", [], 0),
    ],
)
def test_each_gate_flag_checks_only_its_metric(gate_runs, invoke, b, flags, code):
    result = invoke("compare", "base", b, *flags, "--format", "json")
    assert result.exit_code == code, result.stderr
    reasons = [line for line in result.stderr.splitlines() if line.startswith("regression:")]
    assert len(reasons) == code
    if code:
        metric = "fact_coverage" if "--fail-on-regression" in flags else "refusal_rate"
        assert reasons[0].startswith(f"regression: {metric}")


# -- item 9: JSON Lines split on "\n" only ----------------------------------------------

SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"]


def test_jsonl_with_unicode_line_separators_in_strings(tmp_path, invoke):
    """Every character str.splitlines() splits on, inside ids and texts, round-trips
    through a JSONL dataset, the exports, and compare of two export folders."""
    samples = [
        {
            "dialogue_id": f"id{sep}{i}",
            "system": f"s{sep}",
            "user": f"u{sep}",
            "required_facts": ["f"],
        }
        for i, sep in enumerate(SEPARATORS)
    ]
    mocks = {s["dialogue_id"]: {"completion": f"f{s['user']}", "metadata": {}} for s in samples}
    folder = tmp_path / "e"
    write_experiment(folder, [], mocks, dataset_path="d.jsonl")
    text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    (folder / "d.jsonl").write_text(text, encoding="utf-8", newline="")
    config = folder / "config.yaml"
    for run_id in ("a", "b"):
        result = invoke("run", "--config", str(config), "--run-id", run_id, "--quiet")
        assert result.exit_code == 0, result.output
    requests = (tmp_path / "runs" / "a" / "requests.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line)["dialogue_id"] for line in requests.split("\n")[:-1]] == [
        s["dialogue_id"] for s in samples
    ]
    result = invoke("compare", "runs/a", "runs/b", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == {
        "common": len(samples),
        "a_only": 0,
        "b_only": 0,
    }
    report = invoke("report", "runs/a", "runs/b", "--out", "r.html")
    assert report.exit_code == 0, report.output
    assert samples[0]["dialogue_id"] in (tmp_path / "r.html").read_text(encoding="utf-8")


# -- item 17: python -m exprof.cli ------------------------------------------------------


def test_python_m_exprof_cli_runs_the_cli(tmp_path, sample_config):
    result = subprocess.run(
        [sys.executable, "-m", "exprof.cli", "run", "--config", str(sample_config), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "run id: demo_run" in result.stdout
    assert (tmp_path / "runs" / "demo_run" / "summary.json").is_file()


def test_export_run_from_python_refuses_foreign_folders_too(tmp_path, store):
    """The library entry point keeps the same rule as the CLI (Runner and export share it)."""
    from exprof.config import load_config
    from exprof.dataset import load_dataset
    from exprof.errors import ExprofError

    config = load_config(write_experiment(tmp_path / "e", SAMPLES, MOCKS))
    Runner(store, tmp_path / "runs").run(
        config, load_dataset(config.dataset_path), "mock", mocks=MOCKS
    )
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "data.csv").write_text("1,2")
    with pytest.raises(ExprofError, match="not empty and not an export"):
        export_run(store, "exp", tmp_path / "x")
    export_run(store, "exp", tmp_path / "x", force=True)
    assert (tmp_path / "x" / "data.csv").read_text() == "1,2"
    assert isinstance(Store.open(store_url(None, tmp_path / "runs")), Store)


@pytest.mark.slow
def test_kill_during_export_leaves_the_previous_files_whole(tmp_path, invoke):
    samples, mocks = make_samples(40_000)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    folder = tmp_path / "runs" / "exp"
    original = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}
    command = [sys.executable, "-m", "exprof", "export", "exp"]
    started = time.monotonic()
    subprocess.run(command, cwd=tmp_path, check=True, stderr=subprocess.DEVNULL)
    whole = time.monotonic() - started  # only to place the kills inside an export
    killed = 0
    for fraction in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
        time.sleep(whole * fraction)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        files = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}
        assert files == original
    assert killed >= 3
    assert invoke("export", "exp").exit_code == 0
    # temp files cleaned; the marker naming the run stays
    assert sorted(p.name for p in folder.iterdir()) == sorted([*original, ".exprof-export.json"])
