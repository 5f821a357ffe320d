"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 for the real SDK to call.

Answers are derived from the request: the completion echoes the user text, so facts
named in a prompt are "covered", and a prompt containing REFUSE gets a refusal.
Faults are injected by script (per user text, per attempt) or by a seeded rate.
Errors that hit every request are answered as the API does: a retired model (404), a key
not in `valid_keys` (401), a request-level parameter it rejects (400 naming it).
Rate limits (`rpm`, `itpm`, `otpm`) are token buckets reported with the API's own
headers, `anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining,reset}`,
and a 429 with `retry-after` (whole seconds, as the API sends) when one is empty.
A successful answer may be mangled on request (`mangle`: its payload and headers in,
any bytes or payload and headers out), for a server that sends garbage.
A grader prompt (a system prompt starting "You grade", as exprof's judge metrics send)
is answered "Score: N", N from `judge_score` of the user text.
"""

from __future__ import annotations

import datetime
import json
import math
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fake_models
from fake_batches import PREFIX as BATCHES
from fake_batches import FakeBatches
from fake_cache import PromptCache

FAULTS = ("429", "529", "500", "drop", "hang")
# Faults a script may name besides FAULTS: a credential echoed back (as a 401, as a
# retryable 500, as a text body), a 403, a 400 naming a parameter and one about the sample.
LEAKS = ("leak", "leak500", "leaktext")
CREDENTIAL_HEADERS = ("x-api-key", "authorization")
SDK_VERSION = "2026-10-21"
SAMPLING = ("temperature", "top_p", "top_k")


@dataclass
class FakeState:
    latency: float = 0.0
    jitter: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULTS
    seed: int = 0
    script: dict[str, list[str]] = field(default_factory=dict)  # user text -> faults by attempt
    always_fail: set[str] = field(default_factory=set)  # user texts answered 500 forever
    retry_after: float | str = 0.05  # a string is sent as it is: "nan", "-3", "1e300"
    # (payload, headers) of a successful answer -> what is sent instead (bytes go raw)
    mangle: Callable[[dict, dict[str, str]], tuple[dict | bytes, dict[str, str]]] | None = None
    hang_s: float = 3.0
    first_token_s: float = 0.0  # a streamed answer's wait before its first delta
    token_s: float = 0.0  # ... and between its words
    retired_models: set[str] = field(default_factory=set)  # answered 404 not_found_error
    unknown_models: set[str] = field(default_factory=set)  # not in the Models API either
    vanished_models: set[str] = field(default_factory=set)  # active there, 404 on messages
    model_reads: int = 0  # GET /v1/models/{id} calls
    valid_keys: set[str] | None = None  # when set, any other credential is answered 401
    rpm: int | None = None  # rate limits, per minute, as token buckets
    itpm: int | None = None
    otpm: int | None = None
    burst_s: float = 1.0  # each bucket holds this many seconds of its refill
    buckets: dict[str, Bucket] = field(default_factory=dict)
    rate_limited: int = 0  # requests answered 429 by a bucket
    output_tokens: int = 0  # in successful answers
    first_success: float | None = None
    last_success: float | None = None
    requests: int = 0
    token_counts: int = 0  # messages.count_tokens calls, not counted in requests
    successes: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    seen: list[dict] = field(default_factory=list)  # {"headers", "body"} of every request
    cache: PromptCache = field(default_factory=PromptCache)  # tests/fake_cache.py
    # Count the system prompt and earlier turns in input_tokens without a breakpoint too
    # (a run with caching off, priced like one with it on); else they count only where
    # the request has a breakpoint, as the fake's answers always had.
    count_prefix: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for name, limit in (("requests", self.rpm), ("input-tokens", self.itpm)):
            if limit:
                self.buckets[name] = Bucket(limit, self.burst_s)
        if self.otpm:
            self.buckets["output-tokens"] = Bucket(self.otpm, self.burst_s)

    def set_limit(self, name: str, limit: int) -> None:
        """Change a limit mid-run, as when a colleague's job starts on the same key."""
        with self.lock:
            self.buckets[name].set_limit(limit, time.monotonic())

    def fault_for(self, user: str, attempt: int) -> str | None:
        if user in self.always_fail:
            return "500"
        planned = self.script.get(user)
        if planned is not None:
            return planned[attempt - 1] if attempt <= len(planned) else None
        if self.fault_rate:
            rng = random.Random(zlib.crc32(f"{self.seed}:{user}:{attempt}".encode()))
            if rng.random() < self.fault_rate:
                return rng.choice(self.fault_kinds)
        return None


def _last_user_text(body: dict) -> str:
    """The text of the request's last user turn: what the fake answers."""
    turns = [m for m in body.get("messages") or [{}] if m.get("role", "user") == "user"]
    content = (turns or [{}])[-1].get("content", "")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content)
    return content


def _tool_turns(body: dict) -> tuple[int, str | None]:
    """How many tool loops the request carries (each an assistant turn of tool_use blocks
    answered by a user turn of tool_results), and the 400 the API would answer, if any: a
    tool_result whose id matches no tool_use of the turn before it, or a tool_use left
    without its tool_result in the next turn."""
    messages = body.get("messages") or []
    loops = 0
    for i, message in enumerate(messages):
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        results = [b for b in blocks if b.get("type") == "tool_result"]
        if message.get("role") == "assistant" and uses:
            loops += 1
            after = messages[i + 1]["content"] if i + 1 < len(messages) else []
            answered = {b.get("tool_use_id") for b in after if isinstance(after, list)} & set(uses)
            if i + 1 < len(messages) and answered != set(uses):
                missing = ", ".join(u for u in uses if u not in answered)
                return loops, (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {missing}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
        if results:
            before = messages[i - 1].get("content") if i else None
            ids = (
                {b.get("id") for b in before if b.get("type") == "tool_use"}
                if isinstance(before, list)
                else set()
            )
            for j, result in enumerate(blocks):
                if result.get("type") == "tool_result" and result.get("tool_use_id") not in ids:
                    return loops, (
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {result.get('tool_use_id')}. Each "
                        "`tool_result` block must have a corresponding `tool_use` block in "
                        "the previous message."
                    )
    return loops, None


def _unsigned_thinking(body: dict) -> str | None:
    """With thinking on, the API wants the last assistant turn of a tool loop to start
    with its thinking block, signed as it was sent."""
    messages = body.get("messages") or []
    turns = [(i, m) for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not turns or not isinstance(turns[-1][1].get("content"), list):
        return None
    i, last = turns[-1]
    blocks = last["content"]
    if not any(b.get("type") == "tool_use" for b in blocks):
        return None
    first = blocks[0]
    if first.get("type") == "thinking" and first.get("signature"):
        return None
    if first.get("type") == "redacted_thinking":
        return None
    return (
        f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
        f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must "
        "start with a thinking block (preceeding the lastmost set of `tool_use` and "
        "`tool_result` blocks)."
    )


def _planned_calls(body: dict, prompt: str, loops: int) -> list[dict] | None:
    """The tool_use blocks of this turn, when the request offers tools (and tool_choice
    allows them) and the first user turn plans calls: `CALL lookup:paris add:2+lookup:x`
    is one call per word, a turn per word, calls joined by '+' in one turn."""
    offered = {t.get("name") for t in body.get("tools") or []}
    if not offered or (body.get("tool_choice") or {}).get("type") == "none":
        return None
    plan = prompt.split("CALL ", 1)[1].split() if "CALL " in prompt else []
    if loops >= len(plan):
        return None
    calls = []
    for i, call in enumerate(plan[loops].split("+")):
        name, _, arg = call.partition(":")
        if name in offered:
            digest = zlib.crc32(f"{prompt}:{loops}:{i}".encode())
            calls.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{digest:08x}{loops:02d}{i:02d}",
                    "name": name,
                    "input": {"q": arg},
                }
            )
    return calls or None


def _results_text(body: dict) -> str:
    """The tool results the request carries, as the fake's answer quotes them."""
    texts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_result":
                inner = block.get("content", "")
                if isinstance(inner, list):
                    inner = "".join(b.get("text", "") for b in inner)
                texts.append(("ERROR " if block.get("is_error") else "") + str(inner))
    return " | ".join(texts)


def judge_score(user: str) -> int:
    """The fake grader's score for a prompt: 1 to 5, fixed by the text."""
    return 1 + zlib.crc32(user.encode()) % 5


class Bucket:
    """A token bucket: refilled continuously at limit/60 per second up to `burst_s`
    seconds' worth. Output tokens are charged after the answer (their count is not known
    before), so that bucket only has to be non-empty to admit a request."""

    def __init__(self, limit: int, burst_s: float) -> None:
        self.burst_s = burst_s
        self.limit = limit
        self.capacity = max(limit * burst_s / 60, 1.0)
        self.level = self.capacity
        self.at = time.monotonic()

    def set_limit(self, limit: int, now: float) -> None:
        self.refill(now)
        self.limit = limit
        self.capacity = max(limit * self.burst_s / 60, 1.0)
        self.level = min(self.level, self.capacity)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.limit / 60)
        self.at = now

    def wait_for(self, need: float) -> float:
        """Seconds until the level reaches `need` (0 if it has)."""
        return max(need - self.level, 0.0) * 60 / self.limit

    def headers(self, name: str) -> dict[str, str]:
        full_in = max(self.capacity - self.level, 0.0) * 60 / self.limit
        reset = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=full_in)
        prefix = f"anthropic-ratelimit-{name}"
        return {
            f"{prefix}-limit": str(self.limit),
            f"{prefix}-remaining": str(max(math.floor(self.level), 0)),
            f"{prefix}-reset": reset.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith(BATCHES):
            return self.server.batches.handle(self, "POST")
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        user = _last_user_text(body)
        loops, self.tool_error = _tool_turns(body)
        self.prompt = user
        if loops:  # a turn of a tool loop: faults and attempts are counted per turn
            first = [m for m in body.get("messages") or [] if m.get("role") == "user"][0]
            self.prompt = _last_user_text({"messages": [first]})
            user = f"{self.prompt} #turn{loops + 1}"
        self.calls = _planned_calls(body, self.prompt, loops)
        if self.path.split("?")[0] == "/v1/messages/count_tokens":
            return self._count_tokens(state, body, user)
        with state.lock:
            state.requests += 1
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            attempt = state.attempts[user] = state.attempts.get(user, 0) + 1
            self.request_id = f"req_fake_{state.requests:06d}"
            state.seen.append(
                {
                    "headers": dict(self.headers),
                    "body": body,
                    "t": time.monotonic(),
                    "in_flight": state.in_flight,
                    "attempt": attempt,
                }
            )
        self.answered = False
        try:
            self._answer(state, body, user, attempt)
        finally:
            self._leave_flight()

    def _count_tokens(self, state: FakeState, body: dict, user: str) -> None:
        """messages.count_tokens: free, not a message request; the same count the answers
        report, plus the system prompt's words."""
        self.request_id = "req_count"
        self.answered = True
        with state.lock:
            state.token_counts += 1
        system = body.get("system") or ""
        if isinstance(system, list):
            system = "".join(part.get("text", "") for part in system)
        self._send(200, {"input_tokens": len(user.split()) + len(system.split()) + 3})

    def _leave_flight(self) -> None:
        """Called before the answer's bytes go out, so a client that has its answer never
        finds this request still counted as in flight."""
        if not self.answered:
            self.answered = True
            with self.server.state.lock:
                self.server.state.in_flight -= 1

    def do_GET(self) -> None:  # noqa: N802
        """/stats: the counters a benchmark in another process needs."""
        if self.path.startswith(BATCHES):
            return self.server.batches.handle(self, "GET")
        state = self.server.state
        if self.path.startswith("/v1/models/"):
            return self._model(state, self.path.split("?")[0].removeprefix("/v1/models/"))
        self.request_id = "req_stats"
        self.answered = True
        with state.lock:
            stats = {
                "requests": state.requests,
                "successes": state.successes,
                "rate_limited": state.rate_limited,
                "output_tokens": state.output_tokens,
                "first_success": state.first_success,
                "last_success": state.last_success,
                "cache_writes": state.cache.writes,
                "cache_reads": state.cache.reads,
                "cache_write_tokens": state.cache.write_tokens,
                "cache_read_tokens": state.cache.read_tokens,
            }
        self._send(200, stats)

    def _model(self, state: FakeState, model: str) -> None:
        """models.retrieve: the model's ModelInfo, or 404 for a model the API does not know."""
        self.request_id = "req_model"
        self.answered = True
        with state.lock:
            state.model_reads += 1
        info = fake_models.lookup(model, state.retired_models, state.unknown_models)
        if info is None:
            return self._error(404, "not_found_error", f"model: {model}")
        self._send(200, info)
        return None

    def _answer(self, state: FakeState, body: dict, user: str, attempt: int) -> None:
        input_tokens = len(user.split()) + 3
        with state.lock:
            limited = self._admit(state, input_tokens)
            cached = state.cache.lookup(body, body.get("model", ""))
        if limited is not None:
            return limited()
        if isinstance(cached, str):
            return self._error(400, "invalid_request_error", cached)
        if cached.marked or state.count_prefix:
            input_tokens += cached.prefix_tokens - cached.read - cached.write
        delay = state.latency + random.uniform(-state.jitter, state.jitter)
        time.sleep(max(delay, 0.0))
        if self.path.split("?")[0] != "/v1/messages":
            return self._error(404, "not_found_error", f"no route {self.path}")
        model = body.get("model", "")
        if model in state.retired_models or model in state.vanished_models:
            return self._error(404, "not_found_error", f"model: {model}")
        if state.valid_keys is not None and self._credential() not in state.valid_keys:
            return self._error(401, "authentication_error", "invalid x-api-key")
        version = self.headers.get("anthropic-version")
        sent = [k for k in SAMPLING if k in body]
        if version == SDK_VERSION and sent:
            return self._error(
                400, "invalid_request_error", f"{sent[0]}: Extra inputs are not permitted"
            )
        info = fake_models.lookup(model, state.retired_models, state.unknown_models)
        if info is None:
            return self._error(404, "not_found_error", f"model: {model}")
        rejected = fake_models.rejects(body, info)
        if rejected is not None:
            return self._error(400, "invalid_request_error", rejected)
        if self.tool_error is None and fake_models.thinks(body, model):
            self.tool_error = _unsigned_thinking(body)
        if self.tool_error is not None:
            return self._error(400, "invalid_request_error", self.tool_error)
        fault = state.fault_for(user, attempt)
        if fault == "429":
            return self._error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
                {"retry-after": str(state.retry_after)},
            )
        if fault in LEAKS:
            return self._leak(fault)
        if fault == "403":
            return self._error(
                403,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            )
        if fault == "400param":
            return self._error(
                400,
                "invalid_request_error",
                f"max_tokens: {body.get('max_tokens')} > 64, which is the maximum allowed "
                f"number of output tokens for {model}",
            )
        if fault == "400sample":
            return self._error(
                400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"
            )
        if fault == "529":
            return self._error(529, "overloaded_error", "Overloaded")
        if fault == "500":
            return self._error(500, "api_error", "Internal server error")
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "hang":
            time.sleep(state.hang_s)
            self.close_connection = True
            return None
        refused = "REFUSE" in user
        text = "I'm sorry, I can't help with that." if refused else f"Answer: {self.prompt}"
        if self.calls is None and body.get("tools") and _results_text(body):
            text = f"{text} with {_results_text(body)}"
        if (body.get("output_config") or {}).get("format") and not refused:
            text = json.dumps({"answer": user})
        if str(body.get("system", "")).startswith("You grade"):  # exprof's judge prompt
            text = f"Score: {judge_score(user)}"
        thinking = fake_models.thinks(body, model)
        stop_reason, stop_sequence = ("refusal" if refused else "end_turn"), None
        for sequence in body.get("stop_sequences") or ():
            if sequence in text:
                text, stop_reason, stop_sequence = (
                    text.split(sequence)[0],
                    "stop_sequence",
                    sequence,
                )
                break
        room = body.get("max_tokens", 0) - thinking
        if not refused and len(text.split()) + thinking > body.get("max_tokens", 0):
            text, stop_reason = " ".join(text.split()[: max(room, 0)]), "max_tokens"
        output_tokens = len(text.split()) + thinking
        with state.lock:
            state.cache.commit(cached)
            state.successes += 1
            state.output_tokens += output_tokens
            now = time.monotonic()
            state.first_success = state.first_success or now
            state.last_success = now
            if "output-tokens" in state.buckets:
                state.buckets["output-tokens"].level -= output_tokens  # may go below zero
            limits = self._limit_headers(state)
        payload: dict | bytes = {
            "id": f"msg_{zlib.crc32(user.encode()):08x}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown") + "-fake",
            "content": [
                *(
                    [{"type": "thinking", "thinking": "Let me think.", "signature": "c2ln"}]
                    if thinking
                    else []
                ),
                {"type": "text", "text": text[:10]},
                {"type": "text", "text": text[10:]},
            ],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        if cached.marked:
            payload["usage"].update(
                cache_creation_input_tokens=cached.write,
                cache_read_input_tokens=cached.read,
                cache_creation={
                    "ephemeral_5m_input_tokens": cached.written["5m"],
                    "ephemeral_1h_input_tokens": cached.written["1h"],
                },
            )
        if self.calls is not None and not refused:
            thought = [b for b in payload["content"] if b["type"] == "thinking"]
            payload["content"] = [*thought, {"type": "text", "text": "Let me check."}, *self.calls]
            payload["stop_reason"] = "tool_use"
            payload["usage"]["output_tokens"] = output_tokens = 5 + 10 * len(self.calls)
        if refused:
            category = "cyber" if "CYBER" in user else None
            payload["stop_details"] = {"type": "refusal", "category": category, "explanation": None}
        if model in fake_models.CATALOGUE:  # today's models report today's usage
            usage = payload["usage"]
            usage.setdefault("cache_creation_input_tokens", 0)
            usage.setdefault("cache_read_input_tokens", 0)
            usage.update(
                service_tier="standard",
                speed=body.get("speed") or "standard",
            )
            if thinking:
                usage["output_tokens_details"] = {"thinking_tokens": thinking}
        if state.mangle is not None:
            payload, limits = state.mangle(payload, limits)  # type: ignore[arg-type]
        if body.get("stream") and isinstance(payload, dict):
            return self._stream(state, payload, limits)
        self._send(200, payload, limits)
        return None

    def _stream(self, state: FakeState, message: dict, headers: dict[str, str]) -> None:
        """The answer as server-sent events, in the order the Messages API sends them:
        message_start, each block's start, deltas and stop, message_delta (stop reason and
        the final usage), message_stop. The first delta waits `first_token_s`; each text
        word after it `token_s`."""
        self.send_response(200)
        for key, value in {
            "content-type": "text/event-stream",
            "request-id": self.request_id,
            "connection": "close",
            **headers,
        }.items():
            self.send_header(key, value)
        self.end_headers()
        self._leave_flight()
        self.close_connection = True

        def event(kind: str, data: dict) -> None:
            self.wfile.write(
                f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
            )
            self.wfile.flush()

        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage, "output_tokens": 1}
        event("message_start", {"message": start})
        time.sleep(state.first_token_s)
        for index, block in enumerate(message["content"]):
            if block["type"] == "thinking":
                event(
                    "content_block_start",
                    {
                        "index": index,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                    },
                )
                event(
                    "content_block_delta",
                    {
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": block["thinking"]},
                    },
                )
                event(
                    "content_block_delta",
                    {
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block["signature"]},
                    },
                )
            elif block["type"] == "tool_use":  # its input as partial JSON, as the API streams it
                start = {**block, "input": {}}
                event("content_block_start", {"index": index, "content_block": start})
                partial = json.dumps(block["input"])
                for at in range(0, len(partial), 8):
                    piece = {"type": "input_json_delta", "partial_json": partial[at : at + 8]}
                    event("content_block_delta", {"index": index, "delta": piece})
            else:
                event(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "text", "text": ""}},
                )
                text = block["text"]
                for at in range(0, len(text), 8):
                    piece = {"type": "text_delta", "text": text[at : at + 8]}
                    event("content_block_delta", {"index": index, "delta": piece})
                    time.sleep(state.token_s)
            event("content_block_stop", {"index": index})
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        if message.get("stop_details"):
            delta["stop_details"] = message["stop_details"]
        event("message_delta", {"delta": delta, "usage": usage})
        event("message_stop", {})

    def _admit(self, state: FakeState, input_tokens: int) -> Callable[[], None] | None:
        """Charge the buckets for a request (caller holds the lock); if one is short,
        charge nothing and return the 429 to send."""
        now = time.monotonic()
        need = {"requests": 1.0, "input-tokens": float(input_tokens), "output-tokens": 1.0}
        waits = []
        for name, bucket in state.buckets.items():
            bucket.refill(now)
            waits.append(bucket.wait_for(need[name]))
        if max(waits, default=0.0) > 0:
            state.rate_limited += 1
            headers = self._limit_headers(state)
            headers["retry-after"] = str(max(math.ceil(max(waits)), 1))
            return lambda: self._error(
                429, "rate_limit_error", "This request would exceed your rate limit", headers
            )
        for name in ("requests", "input-tokens"):
            if name in state.buckets:
                state.buckets[name].level -= need[name]
        return None

    def _limit_headers(self, state: FakeState) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, bucket in state.buckets.items():
            headers.update(bucket.headers(name))
        return headers

    def _credential(self) -> str:
        key = self.headers.get("x-api-key")
        if key:
            return key
        return self.headers.get("authorization", "").removeprefix("Bearer ")

    def _leak(self, fault: str) -> None:
        """Errors that echo the caller's credentials, as some proxies and gateways do."""
        sent = [self.headers[h] for h in CREDENTIAL_HEADERS if self.headers.get(h)]
        if fault == "leak":
            return self._error(
                401, "authentication_error", f"invalid credentials: {' '.join(sent)}"
            )
        if fault == "leak500":
            echoed = json.dumps(dict(self.headers))
            return self._error(500, "api_error", f"upstream failed; request headers: {echoed}")
        data = ("bad gateway\n" + str(self.headers)).encode()  # a text body, not JSON
        self.send_response(502)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self._leave_flight()
        self.wfile.write(data)
        return None

    def _error(self, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    def _send(self, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"content-type": "application/json", "request-id": self.request_id} | (
            headers or {}
        )
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self._leave_flight()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    state: FakeState
    batches: FakeBatches

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client killed mid-request (the crash tests) is expected, not news


class FakeAnthropic:
    """`with FakeAnthropic(latency=0.02) as fake: ... fake.url ... fake.state.requests`"""

    def __init__(self, **settings: object) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = FakeState(**settings)  # type: ignore[arg-type]
        self.server.batches = FakeBatches()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def state(self) -> FakeState:
        return self.server.state

    @property
    def batches(self) -> FakeBatches:
        return self.server.batches

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    """Run standalone (for benchmarks): python tests/fake_anthropic.py --latency 0.1"""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--rpm", type=int, help="requests per minute (a token bucket)")
    parser.add_argument("--itpm", type=int, help="input tokens per minute")
    parser.add_argument("--otpm", type=int, help="output tokens per minute")
    parser.add_argument("--burst-s", type=float, default=1.0, help="bucket size, in seconds")
    parser.add_argument(
        "--count-prefix", action="store_true", help="system prompts count as input uncached too"
    )
    args = parser.parse_args()
    limits = {"rpm": args.rpm, "itpm": args.itpm, "otpm": args.otpm, "burst_s": args.burst_s}
    with FakeAnthropic(
        latency=args.latency, jitter=args.jitter, count_prefix=args.count_prefix, **limits
    ) as fake:
        print(fake.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
