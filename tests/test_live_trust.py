"""Live runs a user can trust: no credential recorded or printed, fail fast on errors that
hit every request, SIGTERM handled as Ctrl-C. The real SDK against the fake server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_live import experiment

from exprof.clients.credentials import redact
from exprof.store.engine import Store, store_url

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
    assert result.exit_code in (1, 2), result.output
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
    messages = [e.payload["message"] for e in store.events("exp", types=("sample_failed",))]
    assert len(messages) >= 2 and all("[redacted]" in m for m in messages)


def test_redact_masks_labelled_credentials_not_in_the_environment(monkeypatch):
    # A proxy may echo a credential exprof was never given in this process.
    text = redact(
        'x-api-key: k3y-one, {"Authorization": "Bearer t0ken-two"}, authorization=b4sic-three'
    )
    assert not any(s in text for s in ("k3y-one", "t0ken-two", "b4sic-three"))
    assert text.count("[redacted]") == 3
