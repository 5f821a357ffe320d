"""The bad-input battery: every case exits 2 with one `Error:` line and writes no store."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_experiment

GOOD = {
    "experiment_id": "exp",
    "model": "claude-3-opus",
    "max_tokens": 100,
    "temperature": 0.5,
    "dataset_path": "dialogues.json",
}
SAMPLES = [{"dialogue_id": "a", "system": "s", "user": "u", "required_facts": ["x"]}]
MOCKS = {"a": {"completion": "x", "metadata": {}}}


def without(key):
    return {k: v for k, v in GOOD.items() if k != key}


# (case id, config mapping or raw text, dataset (list, or raw text), expected fragment)
CONFIG_CASES = [
    *[(f"missing-{k}", without(k), None, f"missing required key '{k}'") for k in GOOD],
    ("max_tokens-string", {**GOOD, "max_tokens": "100"}, None, "max_tokens: must be an integer"),
    ("max_tokens-zero", {**GOOD, "max_tokens": 0}, None, "max_tokens: must be an integer >= 1"),
    ("max_tokens-float", {**GOOD, "max_tokens": 1.5}, None, "max_tokens: must be an integer"),
    ("temperature-bool", {**GOOD, "temperature": True}, None, "temperature: must be a number"),
    (
        "temperature-negative",
        {**GOOD, "temperature": -0.1},
        None,
        "temperature: must be a number in [0, 1]",
    ),
    (
        "temperature-high",
        {**GOOD, "temperature": 1.5},
        None,
        "temperature: must be a number in [0, 1]",
    ),
    ("temperature-string", {**GOOD, "temperature": "hot"}, None, "temperature: must be a number"),
    ("model-list", {**GOOD, "model": ["a"]}, None, "model: must be a non-empty string"),
    ("model-empty", {**GOOD, "model": ""}, None, "model: must be a non-empty string"),
    (
        "unknown-key",
        {**GOOD, "temprature": 0.3},
        None,
        "unknown key 'temprature'; did you mean 'temperature'?",
    ),
    ("unknown-key-no-hint", {**GOOD, "zzz": 1}, None, "unknown key 'zzz'"),
    (
        "id-dotdot",
        {**GOOD, "experiment_id": "../evil"},
        None,
        "experiment_id: '../evil' is not a valid id",
    ),
    ("id-slash", {**GOOD, "experiment_id": "a/b"}, None, "experiment_id: 'a/b' is not a valid id"),
    ("id-empty", {**GOOD, "experiment_id": ""}, None, "experiment_id: '' is not a valid id"),
    ("id-300", {**GOOD, "experiment_id": "x" * 300}, None, "is not a valid id"),
    ("id-int", {**GOOD, "experiment_id": 7}, None, "experiment_id: 7 is not a valid id"),
    ("concurrency-zero", {**GOOD, "concurrency": 0}, None, "concurrency: must be an integer >= 1"),
    (
        "max_retries-negative",
        {**GOOD, "max_retries": -1},
        None,
        "max_retries: must be an integer >= 0",
    ),
    ("timeout-string", {**GOOD, "timeout_s": "10s"}, None, "timeout_s: must be a number"),
    ("metrics-unknown", {**GOOD, "metrics": ["bleu"]}, None, "metrics: 'bleu' is not one of"),
    (
        "schema-version-2",
        {**GOOD, "log_schema_version": 2},
        None,
        "log_schema_version: must be an integer in [1, 1]",
    ),
    ("pricing-shape", {**GOOD, "pricing": {"m": 3}}, None, "pricing.m: must be"),
    ("yaml-syntax", "experiment_id: exp\nmodel: [unclosed\n", None, "YAML syntax error at line 3"),
    ("top-level-list", "- a\n- b\n", None, "config must be a mapping of keys, got a list"),
    ("empty-file", "", None, "config is empty"),
    ("binary-file", b"\x00\x01\x02binary", None, "binary or not UTF-8"),
    (
        "dataset-missing",
        {**GOOD, "dataset_path": "nope.json"},
        None,
        "dataset_path: 'nope.json' not found; tried",
    ),
    (
        "mock-missing",
        {**GOOD, "mock_responses_path": "gone.json"},
        None,
        "mock responses (mock_responses_path) not found",
    ),
]

DATASET_CASES = [
    ("malformed-json", GOOD, '[{"dialogue_id": "a",,}]', "malformed JSON at line 1, column 22"),
    ("empty-list", GOOD, "[]", "dataset is empty"),
    ("not-array", GOOD, '{"a": 1}', "dataset must be a JSON array"),
    (
        "duplicate-id",
        GOOD,
        SAMPLES + SAMPLES,
        "index 1: duplicate dialogue_id 'a' (first at index 0)",
    ),
    ("missing-user", GOOD, [{"dialogue_id": "a", "system": "s"}], "index 0: missing field 'user'"),
    (
        "empty-user",
        GOOD,
        [{"dialogue_id": "a", "system": "s", "user": ""}],
        "index 0: user must be a non-empty string",
    ),
    (
        "empty-id",
        GOOD,
        [{"dialogue_id": "", "system": "s", "user": "u"}],
        "index 0: dialogue_id must be a non-empty string",
    ),
    (
        "facts-not-list",
        GOOD,
        [{**SAMPLES[0], "required_facts": "x"}],
        "index 0: required_facts must be a list of strings",
    ),
    (
        "facts-not-strings",
        GOOD,
        [{**SAMPLES[0], "required_facts": [1]}],
        "index 0: required_facts must be a list of strings",
    ),
    ("non-object", GOOD, [SAMPLES[0], 5], "index 1: each dialogue must be an object"),
    (
        "system-not-string",
        GOOD,
        [{**SAMPLES[0], "system": None}],
        "index 0: system must be a string",
    ),
    ("utf16", GOOD, json.dumps(SAMPLES).encode("utf-16"), "not valid UTF-8 (it is UTF-16"),
    ("invalid-utf8", GOOD, b'[{"dialogue_id": "\xff"}]', "not valid UTF-8 (byte offset 18)"),
    (
        "jsonl-bad-line",
        {**GOOD, "dataset_path": "d.jsonl"},
        json.dumps(SAMPLES[0]) + "\n{oops\n",
        "line 2: malformed JSON at column 2",
    ),
    (
        "jsonl-dup",
        {**GOOD, "dataset_path": "d.jsonl"},
        json.dumps(SAMPLES[0]) + "\n" + json.dumps(SAMPLES[0]) + "\n",
        "line 2: duplicate dialogue_id 'a'",
    ),
]


def _write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")


def store_state(db: Path) -> tuple:
    """What "unchanged" means: the same events and runs (the file's bytes may move as
    SQLite checkpoints its WAL)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT id, run_id, seq, type, payload FROM events").fetchall()
        runs = conn.execute("SELECT * FROM runs").fetchall()
        return events, runs
    finally:
        conn.close()


def _assert_clean_failure(result, fragment: str, store_before: tuple | None, db: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    if store_before is None:
        assert not db.exists()
    else:
        assert store_state(db) == store_before


@pytest.mark.parametrize(
    "case, config, dataset, fragment",
    CONFIG_CASES + DATASET_CASES,
    ids=[c[0] for c in CONFIG_CASES + DATASET_CASES],
)
def test_bad_config_or_dataset(tmp_path, invoke, case, config, dataset, fragment):
    folder = tmp_path / "exp"
    folder.mkdir()
    _write(folder / "config.yaml", config)
    jsonl = isinstance(config, dict) and config.get("dataset_path") == "d.jsonl"
    dataset_name = "d.jsonl" if jsonl else "dialogues.json"
    _write(folder / dataset_name, dataset if dataset is not None else SAMPLES)
    _write(folder / "mock_responses.json", MOCKS)
    result = invoke("run", "--config", str(folder / "config.yaml"))
    _assert_clean_failure(result, fragment, None, tmp_path / "runs" / "exprof.db")
    if isinstance(config, dict) or case in (
        "yaml-syntax",
        "top-level-list",
        "empty-file",
        "binary-file",
    ):
        assert str(folder / "config.yaml") in result.stderr or str(folder) in result.stderr


def test_every_line_names_the_file(tmp_path, invoke):
    folder = tmp_path / "e"
    path = write_experiment(folder, SAMPLES, MOCKS, temperature=2)
    result = invoke("run", "--config", str(path))
    assert result.stderr == f"Error: {path}: temperature: must be a number in [0, 1], got 2\n"


def test_config_is_a_directory(tmp_path, invoke):
    (tmp_path / "conf").mkdir()
    result = invoke("run", "--config", "conf")
    _assert_clean_failure(
        result, "conf: config is a directory", None, tmp_path / "runs" / "exprof.db"
    )


def test_config_missing(tmp_path, invoke):
    result = invoke("run", "--config", "nope.yaml")
    _assert_clean_failure(
        result, "nope.yaml: config not found", None, tmp_path / "runs" / "exprof.db"
    )


def without_root_powers(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run exprof in a subprocess that cannot bypass file permissions, even as root
    (CI runs as root): setpriv drops the capabilities that override them."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv")
        prefix = [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-all",
            "--",
        ]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "exprof", *args], cwd=cwd, capture_output=True, text=True
    )


def test_config_unreadable(tmp_path):
    path = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    path.chmod(0)
    result = without_root_powers("run", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"Error: {path}: cannot read config: Permission denied\n"
    assert not (tmp_path / "runs").exists()


def test_read_only_store_directory(tmp_path, invoke):
    path = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    assert invoke("run", "--config", str(path), "--quiet").exit_code == 0
    db = tmp_path / "runs" / "exprof.db"
    before = store_state(db)
    (tmp_path / "runs").chmod(0o555)
    db.chmod(0o444)
    try:
        result = without_root_powers("run", "--config", str(path), cwd=tmp_path)
    finally:
        (tmp_path / "runs").chmod(0o755)
        db.chmod(0o644)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {db}: ") and "readonly" in line.replace("-", "")
    assert store_state(db) == before


@pytest.fixture
def existing_store(tmp_path, invoke):
    path = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    assert invoke("run", "--config", str(path), "--quiet").exit_code == 0
    return tmp_path / "runs" / "exprof.db"


FLAG_CASES = [
    (
        "run-concurrency-zero",
        ["run", "--config", "e/config.yaml", "--concurrency", "0"],
        "--concurrency: must be an integer >= 1, got 0",
    ),
    (
        "run-concurrency-negative",
        ["run", "--config", "e/config.yaml", "--concurrency", "-1"],
        "--concurrency: must be an integer >= 1, got -1",
    ),
    (
        "run-concurrency-text",
        ["run", "--config", "e/config.yaml", "--concurrency", "many"],
        "'many' is not a valid integer",
    ),
    (
        "run-id-slash",
        ["run", "--config", "e/config.yaml", "--run-id", "a/b"],
        "--run-id: 'a/b' is not a valid id",
    ),
    (
        "run-id-taken",
        ["run", "--config", "e/config.yaml", "--run-id", "exp"],
        "run 'exp' already exists",
    ),
    ("resume-unknown", ["resume", "nope"], "no run 'nope'"),
    ("summarize-unknown", ["summarize", "nope"], "no run 'nope'"),
    ("export-unknown", ["export", "nope"], "no run 'nope'"),
    ("summarize-neither", ["summarize"], "give either RUN_ID or --log-dir DIR"),
    (
        "summarize-log-dir-missing",
        ["summarize", "--log-dir", "nowhere"],
        "summary.json: exported summary not found",
    ),
    ("format-unknown", ["runs", "--format", "xml"], "'xml' is not one of"),
    ("unknown-option", ["runs", "--bogus"], "No such option '--bogus'"),
    ("unknown-command", ["frobnicate"], "No such command 'frobnicate'"),
]


@pytest.mark.parametrize("case, args, fragment", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_bad_flags(existing_store, invoke, case, args, fragment):
    before = store_state(existing_store)
    result = invoke(*args)
    _assert_clean_failure(result, fragment, before, existing_store)


def test_unknown_run_without_store_creates_nothing(tmp_path, invoke):
    result = invoke("summarize", "nope")
    _assert_clean_failure(result, "no exprof store here", None, tmp_path / "runs" / "exprof.db")


def test_db_not_sqlite(tmp_path, invoke):
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not a database, just text" * 100)
    result = invoke("runs", "--db", str(bogus))
    _assert_clean_failure(
        result, "not an exprof store: file is not a database", None, tmp_path / "x"
    )
    assert bogus.read_bytes() == b"this is not a database, just text" * 100
