"""Nothing from outside breaks the readers. A value is checked where it
enters: a file exprof reads refuses it with one Error line and writes nothing, and a
value a user's code or a judge gives becomes that sample's metric error. Either way,
`runs`, `summarize`, `compare`, `export` and `report` go on working, and every JSON they
write is standard JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_samples, write_experiment

BIG = "9" * 5000  # int() of it raises past Python's digit limit
DEEP = "[" * 100_000 + "]" * 100_000


def strict(text: str) -> object:
    """Standard JSON only: NaN and Infinity raise."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def readers_work(invoke, tmp_path: Path, run_id: str = "exp", files: bool = True) -> None:
    """Every reading command on the store exits 0, with standard JSON where it gives JSON."""
    for args in (
        ["runs", "--format", "json"],
        ["summarize", run_id, "--format", "json"],
        ["compare", run_id, run_id, "--format", "json"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        strict(result.stdout)
    assert invoke("report", run_id, "--out", str(tmp_path / "r.html")).exit_code == 0
    if not files:
        return
    for line in (tmp_path / "runs" / run_id / "scores.jsonl").read_text().splitlines():
        strict(line)
    strict((tmp_path / "runs" / run_id / "summary.json").read_text())


@pytest.mark.parametrize(
    "returned",
    ["1.7e308", "-1.7e308", "float('nan')", "float('inf')", "10**30", "{'a': {'b': 1}}", "[1]"],
)
def test_a_python_metric_out_of_bounds_is_that_samples_error(tmp_path, invoke, returned):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "hostile_metric.py").write_text(
        f"def score(sample, completion, metadata):\n    return {returned}\n"
    )
    metric = {"name": "hostile", "type": "python", "function": "hostile_metric:score"}
    config = write_experiment(folder, *make_samples(4), metrics=["fact_coverage", metric])
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = strict(result.stdout)
    assert summary["metric_errors"] == {"hostile": 4}
    readers_work(invoke, tmp_path)


@pytest.mark.parametrize("reply", [f"Score: {BIG}", "Score: " + "9" * 20, "Score: -" + "9" * 30])
def test_a_judge_reply_out_of_bounds_is_that_samples_error(tmp_path, invoke, reply):
    folder = tmp_path / "e"
    samples, mocks = make_samples(3)
    judge = {"name": "helpful", "type": "judge", "rubric": "Rate 1-5.", "judge_responses": "g.json"}
    config = write_experiment(folder, samples, mocks, metrics=["fact_coverage", judge])
    (folder / "g.json").write_text(json.dumps({s["dialogue_id"]: reply for s in samples}))
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert strict(result.stdout)["metric_errors"] == {"helpful": 3}
    readers_work(invoke, tmp_path)


def _big_int_text(path: Path, key: str) -> None:
    """Put a 5,000-digit integer literal at `key` of the JSON object in `path`."""
    text = path.read_text()
    path.write_text(text.replace(f'"{key}": ', f'"{key}": {BIG}, "was": ', 1))


def _dataset(folder: Path) -> Path:
    return folder / "dialogues.json"


def _mock(folder: Path) -> Path:
    return folder / "mock_responses.json"


# (case, how to spoil the experiment folder, the file the error must name, fragment)
SPOILED = [
    (
        "dataset-big-int",
        lambda f: _dataset(f).write_text(f'[{{"dialogue_id": "a", "n": {BIG}}}]'),
        _dataset,
        "beyond 64 bits",
    ),
    (
        "mock-big-int",
        lambda f: _mock(f).write_text(f'{{"d00000": {{"completion": "x", "n": {BIG}}}}}'),
        _mock,
        "beyond 64 bits",
    ),
    ("dataset-deep", lambda f: _dataset(f).write_text(DEEP), _dataset, "nested"),
    ("mock-deep", lambda f: _mock(f).write_text('{"a": ' + DEEP + "}"), _mock, "nested"),
    (
        "dataset-surrogate-id",
        lambda f: _dataset(f).write_text(
            '[{"dialogue_id": "\\ud800", "system": "s", "user": "u", "required_facts": []}]'
        ),
        _dataset,
        "lone surrogate",
    ),
    (
        "dataset-surrogate-prompt",
        lambda f: _dataset(f).write_text(
            '[{"dialogue_id": "a", "system": "s", "user": "\\udfff", "required_facts": []}]'
        ),
        _dataset,
        "lone surrogate",
    ),
    (
        "mock-surrogate-answer",
        lambda f: _mock(f).write_text('{"d00000": {"completion": "x\\ud83d"}}'),
        _mock,
        "lone surrogate",
    ),
    (
        "dataset-nul-id",
        lambda f: _dataset(f).write_text(
            '[{"dialogue_id": "a\\u0000b", "system": "s", "user": "u", "required_facts": []}]'
        ),
        _dataset,
        "U+0000",
    ),
    (
        "mock-nul-answer",
        lambda f: _mock(f).write_text('{"d00000": {"completion": "x\\u0000"}}'),
        _mock,
        "U+0000",
    ),
    (
        "dataset-infinity",
        lambda f: _dataset(f).write_text('[{"dialogue_id": "a", "x": Infinity}]'),
        _dataset,
        "Infinity",
    ),
]


@pytest.mark.parametrize("case, spoil, named, fragment", SPOILED, ids=[c[0] for c in SPOILED])
def test_a_spoiled_input_file_is_refused_before_anything_is_written(
    tmp_path, invoke, case, spoil, named, fragment
):
    folder = tmp_path / "e"
    config = write_experiment(folder, *make_samples(2))
    spoil(folder)
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {named(folder)}") and fragment in line, line
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


CONFIG_VALUES = [
    ("max-tokens-10**400", f"max_tokens: 1{'0' * 400}\n", "max_tokens"),
    ("pricing-1e308", "pricing: {claude-3-opus: {input: 1.0e+308, output: 1}}\n", "pricing"),
    ("pricing-inf", "pricing: {claude-3-opus: {input: .inf, output: 1}}\n", "pricing"),
    ("concurrency-big", f"concurrency: {BIG}\n", "concurrency"),
    ("repeats-nan", "repeats: .nan\n", "repeats"),
]


@pytest.mark.parametrize("case, line, key", CONFIG_VALUES, ids=[c[0] for c in CONFIG_VALUES])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_config_value_out_of_bounds_is_refused_naming_its_key(
    tmp_path, invoke, case, line, key, dry_run
):
    folder = tmp_path / "e"
    config = write_experiment(folder, *make_samples(2))
    settings = json.loads(config.read_text())
    settings.pop(key, None)
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()) + line)
    result = invoke("run", "--config", str(config), *(["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.output
    [error] = result.stderr.splitlines()
    assert error.startswith(f"Error: {config}") and key in error, error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "schema",
    [
        '{"type": "object", "maximum": NaN}',
        '{"type": "object", "maximum": Infinity}',
        f'{{"type": "object", "maxLength": {BIG}}}',
        '{"type": "object", "properties": ' + DEEP + "}",
    ],
    ids=["nan", "infinity", "big-int", "deep"],
)
def test_a_json_schema_out_of_bounds_is_refused_at_load(tmp_path, invoke, schema):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "schema.json").write_text(schema)
    metric = {"name": "shape", "type": "json", "schema_path": "schema.json"}
    config = write_experiment(folder, *make_samples(2), metrics=[metric])
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and "schema.json" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def exported(tmp_path, invoke) -> Path:
    config = write_experiment(tmp_path / "e", *make_samples(3))
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    return tmp_path / "runs" / "exp"


@pytest.mark.parametrize(
    "file, spoil",
    [
        ("scores.jsonl", lambda t: t.replace('"fact_coverage":', '"fact_coverage":1e999,"x":')),
        ("scores.jsonl", lambda t: t.replace('"fact_coverage":', '"fact_coverage":NaN,"x":')),
        ("summary.json", lambda t: json.dumps({"run_id": "exp"})),
        (
            "summary.json",
            lambda t: t.replace('"fact_coverage": ', '"fact_coverage": Infinity, "x": '),
        ),
        ("responses.jsonl", lambda t: t.replace('"dialogue_id":', f'"n":{BIG},"dialogue_id":')),
    ],
    ids=["scores-1e999", "scores-nan", "summary-missing-fields", "summary-inf", "responses-big"],
)
def test_a_spoiled_export_is_one_error_for_every_reader(tmp_path, invoke, exported, file, spoil):
    path = exported / file
    path.write_text(spoil(path.read_text()))
    refused = 0
    for args in (
        ["summarize", "--log-dir", str(exported)],
        ["compare", str(exported), str(exported)],
        ["report", str(exported), "--out", str(tmp_path / "r.html")],
    ):
        result = invoke(*args)
        if result.exit_code == 0:  # a reader that never reads this file
            continue
        assert result.exit_code == 2, (args, result.output)
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: ") and file in line, (args, line)
        refused += 1
    assert refused >= 1
    # the store is untouched by a spoiled export: its readers still work
    readers_work(invoke, tmp_path, files=False)


# Texts on the edges of parse_json's quick path (the C parser with no hook, then a few
# scans): each must give what the strict parse gives, the same value or the same error.
EDGES = [
    '{"a": 1, "b": [true, false, null, -0, 0.5, "x"]}',
    '{"a" : 1, "a" : 2, "b": "q\\":"}',  # a duplicate hidden by a quote and colon
    '{"a"\n:1,"a"\t:2}',
    '{"a": {"b": 1, "b": 1}}',
    '[{"k": "v: w"}, {"k": "\\":"}]',
    '{"s": "\\ud83d\\ude00", "t": "caf\\u00e9", "u": "é"}',
    '{"s": "\\ud83d"}',
    '{"u": "é ✓", "v": ["\\\\u"]}',
    '{"s": "\\uDFFF"}',
    '{"s": "a\\u0000"}',
    '{"a\\u0000": 1}',
    f'{{"n": {2**63 - 1}, "m": {-(2**63 - 1)}}}',
    f'{{"n": {2**63}}}',
    f"[{-(2**63)}]",
    f"[{BIG}]",
    "[1e18, -9.2e18, 9.3e18]",
    "[1e999]",
    "[NaN]",
    "-Infinity",
    "123",
    '"text"',
    "[" * 100 + "]" * 100,
    "[" * 101 + "]" * 101,
    "[" * 102 + "]" * 102,
    "[" * 100 + "1" + "]" * 100,
    "[" * 101 + "1" + "]" * 101,
    "[" * 99 + "{}" + "]" * 99,
    "[" * 100 + "{}" + "]" * 100,
    "[" * 100 + '{"a": 1}' + "]" * 100,
    "[" * 3000 + "]" * 3000,
    '{"a": 1,}',
    "",
]


@pytest.mark.parametrize("text", EDGES)
def test_the_quick_parse_agrees_with_the_strict_one(text, monkeypatch):
    from exprof import strict_json
    from exprof.errors import ExprofError

    def outcome() -> object:
        try:
            return ("value", strict_json.parse_json(text, "f.json"))
        except ExprofError as exc:
            return ("error", str(exc))

    quick = outcome()
    monkeypatch.setattr(strict_json, "_plain_json", lambda text: strict_json._DOUBTFUL)
    assert quick == outcome()
