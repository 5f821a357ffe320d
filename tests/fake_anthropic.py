"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 for the real SDK to call.

Answers are derived from the request: the completion echoes the user text, so facts
named in a prompt are "covered", and a prompt containing REFUSE gets a refusal.
Faults are injected by script (per user text, per attempt) or by a seeded rate.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "529", "500", "drop", "hang")
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
    retry_after: float = 0.05
    hang_s: float = 3.0
    requests: int = 0
    successes: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    seen: list[dict] = field(default_factory=list)  # {"headers", "body"} of every request
    lock: threading.Lock = field(default_factory=threading.Lock)

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        user = body.get("messages", [{}])[0].get("content", "")
        if isinstance(user, list):
            user = "".join(part.get("text", "") for part in user)
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

    def _leave_flight(self) -> None:
        """Called before the answer's bytes go out, so a client that has its answer never
        finds this request still counted as in flight."""
        if not self.answered:
            self.answered = True
            with self.server.state.lock:
                self.server.state.in_flight -= 1

    def _answer(self, state: FakeState, body: dict, user: str, attempt: int) -> None:
        delay = state.latency + random.uniform(-state.jitter, state.jitter)
        time.sleep(max(delay, 0.0))
        if self.path.split("?")[0] != "/v1/messages":
            return self._error(404, "not_found_error", f"no route {self.path}")
        version = self.headers.get("anthropic-version")
        sent = [k for k in SAMPLING if k in body]
        if version == SDK_VERSION and sent:
            return self._error(
                400, "invalid_request_error", f"{sent[0]}: Extra inputs are not permitted"
            )
        fault = state.fault_for(user, attempt)
        if fault == "429":
            return self._error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
                {"retry-after": str(state.retry_after)},
            )
        if fault == "leak":  # an error that echoes the caller's key, as some proxies do
            key = self.headers.get("x-api-key") or self.headers.get("authorization", "")
            return self._error(401, "authentication_error", f"invalid credentials: {key}")
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
        text = "I'm sorry, I can't help with that." if refused else f"Answer: {user}"
        with state.lock:
            state.successes += 1
        self._send(
            200,
            {
                "id": f"msg_{zlib.crc32(user.encode()):08x}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "unknown") + "-fake",
                "content": [
                    {"type": "text", "text": text[:10]},
                    {"type": "text", "text": text[10:]},
                ],
                "stop_reason": "refusal" if refused else "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": len(user.split()) + 3,
                    "output_tokens": len(text.split()),
                },
            },
        )
        return None

    def _error(self, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", self.request_id)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self._leave_flight()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    state: FakeState

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client killed mid-request (the crash tests) is expected, not news


class FakeAnthropic:
    """`with FakeAnthropic(latency=0.02) as fake: ... fake.url ... fake.state.requests`"""

    def __init__(self, **settings: object) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = FakeState(**settings)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def state(self) -> FakeState:
        return self.server.state

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
    args = parser.parse_args()
    with FakeAnthropic(latency=args.latency, jitter=args.jitter) as fake:
        print(fake.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
