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

PRICE = {"input": 1.0, "output": 2.0}
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
    *[
        (f"missing-{k}", without(k), None, f"missing required key '{k}'")
        for k in GOOD
        if k != "temperature"
    ],
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


# The trust cases. Each list below covers a class, not one example.
GOOD_YAML = "".join(f"{k}: {json.dumps(v)}\n" for k, v in GOOD.items())
LAUGHS = "".join(
    f"{name}: &{name} [{', '.join(['*' + prev] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
CONFIG_CASES += [
    # a budget that could never be reached: a model without a price, NaN, inf
    *[
        (f"budget-unpriced-{i}", config, None, "budget_usd: my-model has no price")
        for i, config in enumerate(
            [
                {**GOOD, "model": "my-model", "budget_usd": 1},
                {**GOOD, "matrix": {"model": ["claude-3-opus", "my-model"]}, "budget_usd": 1},
                {**GOOD, "model": "my-model", "budget_usd": 1, "pricing": {"other": PRICE}},
            ]
        )
    ],
    *[
        (f"budget-{v}", GOOD_YAML + f"budget_usd: {v}\n", None, "budget_usd: must be a")
        for v in (".nan", ".inf", "-1", "'1'")
    ],
]
CONFIG_CASES += [
    # resources: aliases that expand past the limit, directly or through a cycle
    ("yaml-alias-bomb", GOOD_YAML + LAUGHS, None, "aliases expand to more than 10000 values"),
    ("yaml-alias-bomb-in-a-key", LAUGHS + GOOD_YAML, None, "aliases expand to more than"),
    ("yaml-alias-cycle", GOOD_YAML + "x: &x [*x]\n", None, "line 6: an alias refers to itself"),
    ("yaml-deep-nesting", GOOD_YAML + "x: " + "[" * 20000, None, "nested too deeply"),
    ("config-over-1mib", GOOD_YAML + "#" * (1024 * 1024), None, "over the limit of 1.0 MiB"),
    # duplicate keys, at the top level and nested, plain or quoted
    (
        "yaml-duplicate-key",
        GOOD_YAML + "model: other\n",
        None,
        "line 6: duplicate key 'model' (first at line 2)",
    ),
    (
        "yaml-duplicate-quoted-key",
        GOOD_YAML + '"temperature": 0.1\n',
        None,
        "line 6: duplicate key 'temperature' (first at line 4)",
    ),
    (
        "yaml-duplicate-nested-key",
        GOOD_YAML + "pricing:\n  m: {input: 1, output: 2, input: 3}\n",
        None,
        "line 7: duplicate key 'input' (first at line 7)",
    ),
    # numbers that are not finite, wherever the config takes a number
    ("temperature-nan", GOOD_YAML.replace("0.5", ".nan"), None, "temperature: must be a finite"),
    ("temperature-inf", GOOD_YAML.replace("0.5", ".inf"), None, "temperature: must be a finite"),
    ("timeout-inf", GOOD_YAML + "timeout_s: .inf\n", None, "timeout_s: must be a finite number"),
    (
        "pricing-inf",
        GOOD_YAML + "pricing: {m: {input: .inf, output: 1}}\n",
        None,
        "pricing.m.input: must be a finite number",
    ),
    # ids that would collide with the store's files in the output folder
    *[
        (f"id-reserved-{name}", {**GOOD, "experiment_id": name}, None, "is reserved")
        for name in (
            "exprof.db",
            "exprof.db-wal",
            "exprof.db-shm",
            "exprof.db-journal",
            "EXPROF.DB",
        )
    ],
]
DUP_OBJECT = '[{"dialogue_id": "a", "system": "s",\n "user": "u", "user": "v"}]'
DATASET_CASES += [
    ("json-duplicate-key", GOOD, DUP_OBJECT, "line 1: duplicate key 'user'"),
    (
        "json-duplicate-key-nested-line",
        GOOD,
        '[\n{"dialogue_id": "a", "system": "s", "user": "u"},\n'
        '{"dialogue_id": "b", "system": "s", "user": "u", "dialogue_id": "c"}]',
        "line 3: duplicate key 'dialogue_id'",
    ),
    (
        "jsonl-duplicate-key",
        {**GOOD, "dataset_path": "d.jsonl"},
        json.dumps(SAMPLES[0]) + '\n{"dialogue_id": "b", "dialogue_id": "c"}\n',
        "line 2: duplicate key 'dialogue_id'",
    ),
    ("json-nan", GOOD, '[{"dialogue_id": "a", "system": "s", "user": NaN}]', "'user' is NaN"),
    ("json-infinity", GOOD, '[{"dialogue_id": "a", "user": "u", "x": -Infinity}]', "'x' is NaN"),
    ("json-overflow", GOOD, '[{"dialogue_id": "a", "user": "u", "x": 1e999}]', "'x' is NaN"),
    (
        "json-nan-in-list",
        GOOD,
        '[{"dialogue_id": "a", "required_facts": [NaN]}]',
        "item 0 of a list",
    ),
    (
        "jsonl-nan",
        {**GOOD, "dataset_path": "d.jsonl"},
        '{"dialogue_id": "a", "system": "s", "user": "u", "n": NaN}\n',
        "line 1: 'n' is NaN or Infinity",
    ),
    ("json-deep-nesting", GOOD, "[" * 100_000, "JSON nested too deeply"),
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
    # compare's numbers out of range, and nan, which passes a plain range check
    ("compare-seed-negative", ["compare", "exp", "exp", "--seed", "-1"], "'--seed': -1 is not"),
    (
        "compare-resamples-huge",
        ["compare", "exp", "exp", "--resamples", "2000000000"],
        "'--resamples': 2000000000 is not in the range 100<=x<=1000000",
    ),
    *[
        (
            f"compare-max-refusal-increase-{value}",
            ["compare", "exp", "exp", "--max-refusal-increase", value],
            "'--max-refusal-increase'",
        )
        for value in ("nan", "-nan", "inf", "-1", "1.5", "x")
    ],
    # run ids that would collide with the store or its sidecars, in any case
    *[
        (
            f"run-id-reserved-{name}",
            ["run", "--config", "e/config.yaml", "--run-id", name],
            "is reserved",
        )
        for name in (
            "exprof.db",
            "exprof.db-wal",
            "exprof.db-shm",
            "exprof.db-journal",
            "Exprof.DB",
        )
    ],
    ("export-unknown-to", ["export", "nope", "--to", "newdir"], "no run 'nope'"),
    # resume's budget is checked as run's is (NaN passed a plain range check)
    *[
        (f"resume-budget-{value}", ["resume", "exp", "--budget-usd", value], "--budget-usd: must")
        for value in ("nan", "-nan", "inf", "-1")
    ],
    # a NUL byte (a caller, not a shell, can pass one): found by the CLI fuzz
    *[
        (f"nul-byte-{i}", args, "an argument contains a NUL byte")
        for i, args in enumerate(
            [
                ["export", "exp", "--output-dir", "\x00"],
                ["run", "--config", "e/config.yaml\x00"],
                ["summarize", "--log-dir", "a\x00b"],
                ["compare", "exp", "\x00"],
            ]
        )
    ],
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
        result, "not an exprof store (not a SQLite database); refusing it", None, tmp_path / "x"
    )
    assert bogus.read_bytes() == b"this is not a database, just text" * 100


# Mock answers: the same strict JSON, and metadata may not shadow a response's own fields.
MOCK_CASES = [
    (
        "mock-duplicate-id",
        '{"a": {"completion": "x"},\n "a": {"completion": "y"}}',
        "line 1: duplicate key 'a'",
    ),
    (
        "mock-nan",
        '{"a": {"completion": "x", "metadata": {"token_count": NaN}}}',
        "'token_count' is NaN",
    ),
    ("mock-infinity", '{"a": {"completion": "x", "metadata": {"t": Infinity}}}', "'t' is NaN"),
    ("mock-overflow", '{"a": {"completion": "x", "metadata": {"t": -1e400}}}', "'t' is NaN"),
    *[
        (
            f"mock-shadows-{field}",
            json.dumps({"a": {"completion": "x", "metadata": {field: "spoof"}}}),
            f"'a': metadata.{field}: reserved",
        )
        for field in ("dialogue_id", "completion")
    ],
]


@pytest.mark.parametrize("case, mocks, fragment", MOCK_CASES, ids=[c[0] for c in MOCK_CASES])
def test_bad_mock_responses(tmp_path, invoke, case, mocks, fragment):
    path = write_experiment(tmp_path / "e", SAMPLES, {})
    (tmp_path / "e" / "mock_responses.json").write_text(mocks, encoding="utf-8")
    result = invoke("run", "--config", str(path), "--mock")
    _assert_clean_failure(result, fragment, None, tmp_path / "runs" / "exprof.db")
    assert str(tmp_path / "e" / "mock_responses.json") in result.stderr


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _sparse_over_limit(path: Path) -> None:
    with open(path, "wb") as f:  # sparse: costs no disk, and is refused before reading
        f.truncate(256 * 1024 * 1024 + 1)


# Inputs that are not regular files, or too big: each must fail at once, without reading.
SPECIAL_INPUTS = [
    ("dataset-dev-zero", "dataset", lambda p: p.symlink_to("/dev/zero"), "is a device or socket"),
    ("dataset-fifo", "dataset", _fifo, "is a FIFO, not a regular file"),
    ("dataset-over-limit", "dataset", _sparse_over_limit, "over the limit of 256.0 MiB"),
    ("dataset-directory", "dataset", lambda p: p.mkdir(), "is a directory"),
    ("mock-dev-zero", "mock", lambda p: p.symlink_to("/dev/zero"), "is a device or socket"),
    ("mock-fifo", "mock", _fifo, "is a FIFO, not a regular file"),
    ("mock-over-limit", "mock", _sparse_over_limit, "over the limit of 256.0 MiB"),
    ("config-fifo", "config", _fifo, "is a FIFO, not a regular file"),
    ("config-dev-zero", "config", lambda p: p.symlink_to("/dev/zero"), "is a device or socket"),
    (
        "config-over-limit",
        "config",
        lambda p: p.write_text("#" * (1024 * 1024 + 1)),
        "over the limit of 1.0 MiB",
    ),
]


@pytest.mark.parametrize(
    "case, which, make, fragment", SPECIAL_INPUTS, ids=[c[0] for c in SPECIAL_INPUTS]
)
def test_special_or_huge_inputs_fail_at_once(tmp_path, case, which, make, fragment):
    """In a subprocess with a memory cap: reading /dev/zero or waiting on a FIFO would
    exhaust it or hang (the test's timeout is the bound, not a pass/fail measure)."""
    path = write_experiment(tmp_path / "e", SAMPLES, MOCKS)
    target = {
        "dataset": tmp_path / "e" / "dialogues.json",
        "mock": tmp_path / "e" / "mock_responses.json",
        "config": path,
    }[which]
    target.unlink()
    make(target)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
    code = limit + "from exprof.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "run", "--config", str(path), "--mock"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    named = (f"Error: {target}: ", f"Error: {target.resolve()}: ")  # a symlink may be followed
    assert line.startswith(named) and fragment in line
    assert not (tmp_path / "runs").exists()


def test_resume_budget_needs_a_price_for_the_runs_model(tmp_path, invoke):
    """A run of an unpriced model may go without a budget; `resume --budget-usd` on it
    is refused before the store changes, since that budget could never be reached."""
    path = write_experiment(tmp_path / "e", SAMPLES, MOCKS, model="my-model")
    assert invoke("run", "--config", str(path), "--quiet").exit_code == 0
    db = tmp_path / "runs" / "exprof.db"
    before = store_state(db)
    result = invoke("resume", "exp", "--budget-usd", "1")
    _assert_clean_failure(result, "--budget-usd: my-model has no price", before, db)


def test_a_priced_model_of_its_own_keeps_its_budget(tmp_path, invoke):
    """The pricing block that the refusal asks for is enough: the budget then holds."""
    samples = [{**SAMPLES[0], "dialogue_id": f"d{i}"} for i in range(20)]
    mocks = {f"d{i}": {"completion": "x", "metadata": {"token_count": 1000}} for i in range(20)}
    path = write_experiment(
        tmp_path / "e",
        samples,
        mocks,
        model="my-model",
        concurrency=1,
        budget_usd=0.002,
        pricing={"my-model": PRICE},
    )
    result = invoke("run", "--config", str(path), "--yes", "--quiet", "--format", "json")
    assert result.exit_code == 1, result.output
    # each answer is cut off at max_tokens (100 of its 1,000 tokens): $0.0002 apiece,
    # which the budget counts as recorded, not as the mock file's 1,000 tokens
    assert json.loads(result.stdout)["samples_completed"] == 10


def test_a_budget_below_the_p95_estimate_needs_yes_without_a_terminal(tmp_path, invoke):
    """With no earlier run to learn output lengths from, the P95 estimate bounds
    every answer at max_tokens; a budget below it is refused (no terminal can ask), one
    line naming the key, nothing written; --yes runs it, and a budget above needs none."""
    samples = [{**SAMPLES[0], "dialogue_id": f"d{i}"} for i in range(20)]
    mocks = {f"d{i}": {"completion": "x", "metadata": {"token_count": 10}} for i in range(20)}
    # 20 answers at max_tokens 100 and $2 per million output tokens: $0.004 at most
    low = write_experiment(
        tmp_path / "low", samples, mocks, budget_usd=0.003, pricing={"claude-3-opus": PRICE}
    )
    refused = invoke("run", "--config", str(low), "--quiet")
    _assert_clean_failure(
        refused, "budget_usd: $0.003 is below this run's P95", None, tmp_path / "runs" / "exprof.db"
    )
    assert "pass --yes to run anyway" in refused.stderr
    flag = invoke("run", "--config", str(low), "--budget-usd", "0.001", "--quiet")
    assert flag.exit_code == 2 and flag.stderr.startswith("Error: --budget-usd: $0.001 is below")
    assert invoke("run", "--config", str(low), "--quiet", "--yes").exit_code == 0
    high = write_experiment(
        tmp_path / "high", samples, mocks, budget_usd=0.005, pricing={"claude-3-opus": PRICE}
    )
    assert invoke("run", "--config", str(high), "--quiet", "--run-id", "h").exit_code == 0
