"""Live runs a user can trust: no credential recorded or printed, fail fast on errors that
hit every request, SIGTERM handled as Ctrl-C. The real SDK against the fake server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_live import experiment

from exprof.clients.credentials import redact
from exprof.clients.fatal import fatal_cause
from exprof.store.engine import Store, store_url
from exprof.store.events import RunInterrupted, SampleFailed

CREDENTIALS = [
    ("ANTHROPIC_API_KEY", "sk-ant-api03-LEAKTEST-abcdef0123456789"),
    ("ANTHROPIC_API_KEY", "plain-key-without-the-prefix-4242"),
    ("ANTHROPIC_AUTH_TOKEN", "oauth-token-LEAKTEST-98765"),
]


def users(tmp_path: Path) -> list[str]:
    return [s["user"] for s in json.loads((tmp_path / "e" / "dialogues.json").read_text())]


def everything_written(tmp_path: Path) -> list[bytes]:
    """Every file exprof wrote: the store (with its WAL) and every export."""
    roots = [tmp_path / "runs", tmp_path / "again"]
    return [p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(("variable", "secret"), CREDENTIALS)
def test_no_credential_is_recorded_or_printed(
    tmp_path, invoke, fake, monkeypatch, variable, secret
):
    config = experiment(tmp_path, 4, max_retries=0, concurrency=1)
    script = dict(zip(users(tmp_path), [["leak500"], ["leaktext"], [], ["leak"]], strict=True))
    server = fake(script=script)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv(variable, secret)
    result = invoke("run", "--config", str(config), "--live", "--quiet", "--format", "json")
    assert result.exit_code == 2, result.output  # the echoing 401 stops the run
    sent = [s["headers"] for s in server.state.seen]
    assert all(secret in " ".join(h.values()) for h in sent)  # it was sent, and echoed
    outputs = [result.stdout, result.stderr]
    for command in (["runs"], ["summarize", "exp"], ["export", "exp", "--to", "again"]):
        shown = invoke(*command, "--format", "json") if command[0] != "export" else invoke(*command)
        outputs += [shown.stdout, shown.stderr]
    blobs = everything_written(tmp_path)
    assert len(blobs) > 4
    assert all(secret.encode() not in blob for blob in blobs)
    assert all(secret not in text for text in outputs)
    store = Store.open(store_url(None, "runs"))
    messages = [e.payload["message"] for e in store.events("exp", types=(SampleFailed,))]
    assert len(messages) >= 2 and all("[redacted]" in m for m in messages)


def test_redact_masks_labelled_credentials_not_in_the_environment(monkeypatch):
    # A proxy may echo a credential exprof was never given in this process.
    text = redact(
        'x-api-key: k3y-one, {"Authorization": "Bearer t0ken-two"}, authorization=b4sic-three'
    )
    assert not any(s in text for s in ("k3y-one", "t0ken-two", "b4sic-three"))
    assert text.count("[redacted]") == 3


FATAL = {
    "retired model": (
        {"vanished_models": {"claude-3-opus"}},  # retired after the model check
        404,
        "model 'claude-3-opus' not found (retired?); set model: in the config, or run with --mock",
    ),
    "bad key": (
        {"valid_keys": {"some-other-key"}},
        401,
        "the API rejected the credentials (401: invalid x-api-key); "
        "check ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN, or run with --mock",
    ),
    "forbidden": (
        {"fault_rate": 1.0, "fault_kinds": ("403",)},
        403,
        "the API key may not make this request (403: Your API key does not have permission "
        "to use the specified resource.); check its workspace and model access, "
        "or run with --mock",
    ),
    "rejected parameter": (
        {"fault_rate": 1.0, "fault_kinds": ("400param",)},
        400,
        "the API rejects max_tokens (400: max_tokens: 100 > 64, which is the maximum allowed "
        "number of output tokens for claude-3-opus); fix max_tokens: in the config, "
        "or run with --mock",
    ),
}


@pytest.mark.parametrize("case", FATAL)
def test_an_error_every_request_would_hit_stops_the_run_at_once(tmp_path, invoke, fake, case):
    settings, status, cause = FATAL[case]
    server = fake(latency=0.02, **settings)
    config = experiment(tmp_path, 60, concurrency=4, api_version="2023-06-01")  # no warning
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {cause}\n"
    assert server.state.requests <= 4  # only what was in flight when the first one failed
    store = Store.open(store_url(None, "runs"))
    failed = [e.payload for e in store.events("exp", types=(SampleFailed,))]
    assert failed and {f["status"] for f in failed} == {status}
    [stopped] = [e.payload for e in store.events("exp", types=(RunInterrupted,))]
    assert stopped["reason"] == f"stopped: {cause}"


def test_after_a_bad_key_is_fixed_resume_finishes_the_run(tmp_path, invoke, fake, monkeypatch):
    server = fake(valid_keys={"sk-ant-the-right-one"})
    config = experiment(tmp_path, 30, concurrency=2)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 2
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-the-right-one")
    resumed = invoke("resume", "exp", "--quiet", "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["samples_completed"] == 30
    assert server.state.successes == 30


def test_an_error_about_one_sample_does_not_stop_the_run(tmp_path, invoke, fake):
    config = experiment(tmp_path, 12, concurrency=2)
    too_long = users(tmp_path)[3]
    server = fake(script={too_long: ["400sample"]})
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["samples_completed"] == 11
    assert server.state.requests == 12


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_errors_are_never_fatal(status):
    assert fatal_cause(status, "model: claude-3-opus", "claude-3-opus") is None


def test_a_400_about_the_messages_is_not_fatal():
    assert fatal_cause(400, "messages.0.content: must not be empty", "m") is None
    assert fatal_cause(400, "prompt is too long: 250000 tokens > 200000 maximum", "m") is None
    assert fatal_cause(400, "temperature: Extra inputs are not permitted", "m") is not None
