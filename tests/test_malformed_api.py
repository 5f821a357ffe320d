"""Garbage from the API never hangs or crashes a run: each variant is that request's
failure (retried), an answer with the bad part dropped, or one Error line. The real SDK
against the fake server, which sends the garbage on request."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from test_live import experiment, read_jsonl

from exprof.clients import sanitize
from exprof.clients.limits import MAX_RESET_S, RatePacer
from exprof.clients.live import RETRY_AFTER_CAP_S, _retry_after
from exprof.store.engine import Store, store_url
from exprof.store.events import Event, ResponseReceived, SampleFailed

N = 3


def run_live(invoke, tmp_path: Path, **config):
    path = experiment(tmp_path, N, concurrency=1, timeout_s=5, **config)
    result = invoke("run", "--config", str(path), "--live", "--quiet", "--format", "json")
    assert "Traceback" not in result.output
    return result


def recorded(kind: type[Event]) -> list[dict]:
    store = Store.open(store_url(None, "runs"))
    return [e.payload for e in store.events("exp", types=(kind,))]


def with_headers(**headers: str):
    def mangle(payload: dict, sent: dict[str, str]) -> tuple[dict, dict[str, str]]:
        return payload, {**sent, **headers}

    return mangle


LIMIT = "anthropic-ratelimit-requests-{}"
BAD_LIMIT_HEADERS = {
    "remaining -1e300": {LIMIT.format("limit"): "50", LIMIT.format("remaining"): "-1e300"},
    "reset in the year 9999": {
        LIMIT.format("limit"): "50",
        LIMIT.format("remaining"): "0",
        LIMIT.format("reset"): "9999-12-31T23:59:59Z",
    },
    "limit nan": {LIMIT.format("limit"): "nan", LIMIT.format("remaining"): "nan"},
    "limit inf": {LIMIT.format("limit"): "inf", LIMIT.format("remaining"): "-inf"},
    "limit 1e300, reset garbage": {
        LIMIT.format("limit"): "1e300",
        LIMIT.format("remaining"): "0",
        LIMIT.format("reset"): "soon",
    },
    "limit negative": {LIMIT.format("limit"): "-7", LIMIT.format("remaining"): "5"},
}


@pytest.mark.parametrize("headers", BAD_LIMIT_HEADERS.values(), ids=BAD_LIMIT_HEADERS)
def test_rate_limit_headers_never_make_the_pacer_wait_unbounded(headers):
    pacer = RatePacer()
    cost = pacer.estimate(100, 100)
    assert pacer.reserve(cost, 0.0) == 0.0
    pacer.settle(cost, headers, 0.0, wall_now=time.time())
    wait = pacer.reserve(cost, 0.0)
    assert math.isfinite(wait) and 0 <= wait <= MAX_RESET_S


@pytest.mark.parametrize("headers", BAD_LIMIT_HEADERS.values(), ids=BAD_LIMIT_HEADERS)
def test_a_run_under_garbage_rate_limit_headers_ends(tmp_path, invoke, fake, headers):
    fake(mangle=with_headers(**headers))
    result = run_live(invoke, tmp_path)
    # Pacing from a bogus header may make a request wait a little (at most a minute's
    # reset), never forever: every sample is answered.
    assert result.exit_code == 0, result.output
    assert len(recorded(ResponseReceived)) == N


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("1e300", RETRY_AFTER_CAP_S),
        ("-5", 0.0),
        ("soon", None),
        ("9" * 5000, None),
    ],
)
def test_retry_after_is_finite_and_bounded(value, expected):
    assert _retry_after({"retry-after": value}) == expected
    after_ms = _retry_after({"retry-after-ms": value})
    assert after_ms is None or 0 <= after_ms <= RETRY_AFTER_CAP_S


@pytest.mark.parametrize("retry_after", ["nan", "-5", "inf", "soon", "-1e300"])
def test_a_429_with_a_garbage_retry_after_is_retried(tmp_path, invoke, fake, retry_after):
    config = experiment(tmp_path / "x", N)  # only to learn the prompts
    users = [s["user"] for s in json.loads((config.parent / "dialogues.json").read_text())]
    server = fake(script={u: ["429", "429"] for u in users}, retry_after=retry_after)
    result = run_live(invoke, tmp_path, max_retries=3)
    assert result.exit_code == 0, result.output
    assert len(recorded(ResponseReceived)) == N
    assert server.state.requests == 3 * N


def replace(body: dict | bytes, content_type: str = "application/json"):
    def mangle(payload: dict, sent: dict[str, str]) -> tuple[dict | bytes, dict[str, str]]:
        return body, {**sent, "content-type": content_type}

    return mangle


def changed(**fields: object):
    def mangle(payload: dict, sent: dict[str, str]) -> tuple[dict, dict[str, str]]:
        return {**payload, **fields}, sent

    return mangle


BAD_BODIES = {
    "not JSON, text/plain": replace(b"<html>bad gateway</html>", "text/plain"),
    "not JSON, said to be JSON": replace(b'{"content": [{"type": "te'),
    "a JSON list": replace(b"[1, 2, 3]"),
    "a JSON string": replace(b'"hello"'),
    "nested 100,000 deep": replace(b"[" * 100_000 + b"]" * 100_000),
    "a 5,000-digit number": replace(b'{"content": [], "usage": {"input_tokens": ' + b"9" * 5000),
    "content null": changed(content=None),
    "content a string": changed(content="Answer: hello"),
    "content a list of numbers": changed(content=[1, 2]),
    "a text block without text": changed(content=[{"type": "text"}]),
    "a text block whose text is a number": changed(content=[{"type": "text", "text": 5}]),
}


@pytest.mark.parametrize("mangle", BAD_BODIES.values(), ids=BAD_BODIES)
def test_a_200_that_is_not_a_message_is_that_requests_failure(tmp_path, invoke, fake, mangle):
    server = fake(mangle=mangle)
    result = run_live(invoke, tmp_path, max_retries=1)
    assert result.exit_code == 1, result.output  # recorded, with failed samples
    failures = recorded(SampleFailed)
    assert len(failures) == N and not recorded(ResponseReceived)
    assert {f["error_class"] for f in failures} == {"InvalidResponse"}
    assert server.state.requests == 2 * N  # each retried once, as a flaky proxy deserves


BAD_USAGE = [2**80, -5, 1.5, "12", None, [1], float("nan")]


@pytest.mark.parametrize("count", BAD_USAGE, ids=repr)
def test_usage_counts_out_of_range_are_dropped(tmp_path, invoke, fake, count):
    fake(mangle=changed(usage={"input_tokens": count, "output_tokens": count}))
    result = run_live(invoke, tmp_path)
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "runs" / "exp" / "responses.jsonl")
    assert len(rows) == N
    for row in rows:
        assert row["input_tokens"] is None and row["output_tokens"] is None


def test_usage_counts_in_range_are_kept_exactly():
    big = sanitize.MAX_COUNT
    assert sanitize.count(big) == big and sanitize.count(big + 1) is None
    assert sanitize.count(0) == 0 and sanitize.count(7.0) == 7 and sanitize.count(True) is None


def test_lone_surrogates_and_nul_in_answers_are_replaced(tmp_path, invoke, fake):
    """Neither can be written as UTF-8 text to both stores (PostgreSQL's text refuses
    U+0000): each becomes U+FFFD."""
    text = "half a pair \ud83d and the other half \ude00 alone\x00"
    fake(mangle=changed(content=[{"type": "text", "text": text}], model="m\udfff"))
    result = run_live(invoke, tmp_path)
    assert result.exit_code == 0, result.output
    raw = (tmp_path / "runs" / "exp" / "responses.jsonl").read_bytes()
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines()]  # valid UTF-8
    expected = "half a pair \ufffd and the other half \ufffd alone\ufffd"
    assert [r["completion"] for r in rows] == [expected] * N
    assert {r["model"] for r in rows} == {"m\ufffd"}
    assert all(e["completion"] == expected for e in recorded(ResponseReceived))


@pytest.mark.parametrize(
    "field", ["content", "model", "request-id"], ids=lambda f: f"echoed-in-{f}"
)
def test_a_server_echoing_the_key_has_it_redacted_everywhere(tmp_path, invoke, fake, field):
    """A server that puts the API key into the answer text, the model
    name or the request id got it into the store and the exports."""

    def echo(payload: dict, sent: dict[str, str]) -> tuple[dict, dict[str, str]]:
        value = f"before {os.environ['ANTHROPIC_API_KEY']} after"
        if field == "request-id":  # a header: the SDK's _request_id
            return payload, {**sent, field: value}
        text = [{"type": "text", "text": value}] if field == "content" else value
        return {**payload, field: text}, sent

    fake(mangle=echo)
    key = os.environ["ANTHROPIC_API_KEY"]
    result = run_live(invoke, tmp_path)
    assert result.exit_code == 0, result.output
    shown = [result.stdout, result.stderr]
    for command in (["runs"], ["summarize", "exp"], ["export", "exp", "--to", "again"]):
        done = invoke(*command)
        shown += [done.stdout, done.stderr]
    files = [p for root in ("runs", "again") for p in Path(root).rglob("*") if p.is_file()]
    assert len(files) > 4
    assert all(key.encode() not in p.read_bytes() for p in files)
    assert all(key not in text for text in shown)
    answers = recorded(ResponseReceived)
    assert len(answers) == N and "[redacted]" in json.dumps(answers)
