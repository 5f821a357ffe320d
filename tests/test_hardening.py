"""Store safety, doctor, locked and foreign stores, a kill during export, and fuzzing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import _assert_clean_failure, store_state

from conftest import make_samples, write_experiment
from exprof.config import load_config
from exprof.dataset import load_dataset
from exprof.errors import ExprofError
from exprof.store.engine import SCHEMA_HEAD

FUZZ_EXAMPLES = int(os.environ.get("EXPROF_FUZZ_EXAMPLES", "300"))  # CI: 300 each

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
config_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "experiment_id": json_values
            | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
            "model": json_values,
            "max_tokens": json_values,
            "temperature": json_values | st.floats(0, 1),
            "dataset_path": json_values | st.just("d.json"),
            "metrics": json_values,
            "concurrency": json_values,
            "pricing": json_values,
        },
    )
    | json_values
)
sample_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "dialogue_id": json_values | st.text(min_size=1, max_size=5),
            "system": json_values | st.text(max_size=5),
            "user": json_values | st.text(min_size=1, max_size=5),
            "required_facts": json_values | st.lists(st.text(max_size=5), max_size=3),
        },
    )
    | json_values
)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=config_like, as_text=st.booleans(), garbage=st.binary(max_size=30))
def test_config_loader_fuzz(tmp_path, value, as_text, garbage):
    (tmp_path / "d.json").write_text('[{"dialogue_id": "a", "system": "", "user": "u"}]')
    path = tmp_path / "c.yaml"
    if as_text:
        path.write_text(yaml.safe_dump(value), encoding="utf-8")
    else:
        path.write_bytes(yaml.safe_dump(value).encode() + garbage)
    try:
        load_config(path)
    except ExprofError as exc:
        assert "\n" not in exc.message and exc.exit_code == 2


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(items=st.lists(sample_like, max_size=5) | json_values, jsonl=st.booleans())
def test_dataset_loader_fuzz(tmp_path, items, jsonl):
    path = tmp_path / ("d.jsonl" if jsonl else "d.json")
    if jsonl and isinstance(items, list):
        path.write_text("\n".join(json.dumps(i) for i in items), encoding="utf-8")
    else:
        path.write_text(json.dumps(items), encoding="utf-8")
    try:
        samples = load_dataset(path)
    except ExprofError as exc:
        assert "\n" not in exc.message and exc.exit_code == 2
    else:
        assert samples and len({s.dialogue_id for s in samples}) == len(samples)


@pytest.fixture
def one_run(tmp_path, invoke):
    samples, mocks = make_samples(20)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    return config, tmp_path / "runs" / "exprof.db"


def test_doctor_passes_a_sound_store_and_fails_a_tampered_one(one_run, invoke):
    healthy = invoke("doctor", "--format", "json")
    assert healthy.exit_code == 0
    rows = {r["check"]: r for r in json.loads(healthy.stdout)}
    assert rows["schema revision"]["detail"] == SCHEMA_HEAD
    assert rows["events"]["detail"] == 3 + 20 * 3 + 1  # start, dataset, answers; 3 per sample; end
    assert rows["integrity_check"]["status"] == "ok"
    raw = sqlite3.connect(one_run[1])
    raw.execute("UPDATE samples SET fact_coverage = 0.5 WHERE idx = 3")  # projections aren't events
    raw.commit()
    raw.close()
    broken = invoke("doctor", "--format", "json")
    assert broken.exit_code == 1
    rows = {r["check"]: r for r in json.loads(broken.stdout)}
    assert rows["projections"] == {
        "check": "projections",
        "status": "FAILED",
        "detail": "exp: samples differs",
    }
    raw = sqlite3.connect(one_run[1])
    assert raw.execute("SELECT fact_coverage FROM samples WHERE idx = 3").fetchone() == (0.5,)


def test_store_from_a_newer_exprof_is_a_clean_error(one_run, invoke):
    config, db = one_run
    raw = sqlite3.connect(db)
    raw.execute("UPDATE alembic_version SET version_num = 'ffff'")
    raw.commit()
    raw.close()
    before = store_state(db)
    for args in (["runs"], ["run", "--config", str(config)]):
        result = invoke(*args)
        _assert_clean_failure(result, "made by a newer exprof; upgrade exprof", before, db)


def test_store_path_that_cannot_be_created(tmp_path, invoke, one_run):
    (tmp_path / "afile").write_text("x")
    result = invoke("run", "--config", str(one_run[0]), "--db", str(tmp_path / "afile" / "s.db"))
    _assert_clean_failure(result, "cannot create store", None, tmp_path / "afile" / "s.db")


def test_locked_store_waits_then_fails_clearly(one_run, invoke):
    config, db = one_run
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer, holding the write lock
    try:
        before = store_state(db)
        started = time.monotonic()
        result = invoke("run", "--config", str(config), "--quiet")
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _assert_clean_failure(result, "store is busy or unwritable: database is locked", before, db)
    assert str(db) in result.stderr
    assert waited >= 4.5  # it waited for the busy timeout (5 s) rather than failing at once


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
