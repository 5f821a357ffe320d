"""The fake's Message Batches endpoints, mounted into tests/fake_anthropic.py.

create (a streamed, chunked body is fine), retrieve, list (newest first, paged by
after_id), cancel and results (JSONL, shuffled, streamed in chunks). Batches take
`processing_s` to end. Per-request outcomes come from `script` (user text -> outcome
per batch attempt: "errored", "invalid", "expired"); the next `expire_batches` batches
expire whole. The counters prove what was paid: `created` batches, `billed` requests
(succeeded results), `submitted` requests.

Run standalone for benchmarks: python tests/fake_batches.py --processing-s 1
"""

from __future__ import annotations

import datetime
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/v1/messages/batches"
KEEP_USER = 10_000  # longer prompts (the 256 MB split) are answered from their head


@dataclass
class FakeBatch:
    id: str
    number: int
    created_at: datetime.datetime
    created_mono: float
    requests: list[tuple[str, str]]  # (custom_id, user text)
    model: str
    expire: bool
    cancelled: bool = False
    # Set when it ends: the JSONL lines, serialised once so that streaming them is cheap.
    results: list[bytes] | None = None
    ended_counts: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        if self.results is not None:
            return dict(self.ended_counts)
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        counts["processing"] = len(self.requests)
        return counts


@dataclass
class FakeBatches:
    processing_s: float = 0.2
    seed: int = 0
    script: dict[str, list[str]] = field(default_factory=dict)
    expire_batches: int = 0
    create_delay_s: float = 0.0  # after the batch exists, before the answer goes out
    drop_creates: int = 0  # creates whose connection breaks before a batch exists
    list_lag_s: float = 0.0  # a batch shows in the list only this long after its creation
    # The first `spoil_results` result fetches are spoiled as `spoil` says (GARBAGE).
    spoil: str | None = None
    spoil_results: int = 0
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    created: int = 0
    billed: int = 0
    submitted: int = 0
    polls: int = 0  # retrieve calls
    body_sizes: list[int] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- routing ---------------------------------------------------------------

    def handle(self, handler: Any, method: str) -> None:
        handler.request_id = "req_batch"
        handler.answered = True  # not a Messages request: never counted as in flight
        url = urlsplit(handler.path)
        parts = url.path[len(PREFIX) :].strip("/").split("/")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if method == "POST" and parts == [""]:
            return self.create(handler)
        if method == "GET" and parts == [""]:
            return handler._send(200, self.list(query))
        if method == "GET" and parts == ["stats"]:
            with self.lock:
                stats = {"created": self.created, "billed": self.billed}
            return handler._send(200, {**stats, "submitted": self.submitted})
        batch = self.batches.get(parts[0])
        if batch is None:
            return handler._error(404, "not_found_error", f"no batch {parts[0]}")
        if method == "GET" and len(parts) == 1:
            with self.lock:
                self.polls += 1
            return handler._send(200, self.describe(batch, handler))
        if method == "POST" and parts[1:] == ["cancel"]:
            with self.lock:
                if not self.ended(batch):
                    batch.cancelled = True
            return handler._send(200, self.describe(batch, handler))
        if method == "GET" and parts[1:] == ["results"]:
            return self.stream_results(handler, batch)
        return handler._error(404, "not_found_error", f"no route {handler.path}")

    # -- endpoints -------------------------------------------------------------

    def create(self, handler: Any) -> None:
        raw = read_body(handler)
        if self.drop_creates > 0:  # the connection breaks before any batch exists
            self.drop_creates -= 1
            handler.answered = True
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.loads(raw)
        requests = [(r["custom_id"], _user(r["params"])[:KEEP_USER]) for r in body["requests"]]
        model = body["requests"][0]["params"]["model"] if requests else ""
        del body
        with self.lock:
            self.created += 1
            self.submitted += len(requests)
            self.body_sizes.append(len(raw))
            number = self.created
            batch = FakeBatch(
                f"msgbatch_fake_{number:06d}",
                number,
                datetime.datetime.now(datetime.UTC),
                time.monotonic(),
                requests,
                model,
                expire=self.expire_batches > 0,
            )
            self.expire_batches = max(self.expire_batches - 1, 0)
            self.batches[batch.id] = batch
        del raw
        time.sleep(self.create_delay_s)
        handler._send(200, self.describe(batch, handler))

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(query.get("limit", 20))
        with self.lock:
            newest = list(reversed(self.batches.values()))
        newest = [b for b in newest if time.monotonic() - b.created_mono >= self.list_lag_s]
        if "after_id" in query:
            ids = [b.id for b in newest]
            newest = newest[ids.index(query["after_id"]) + 1 :]
        page = newest[:limit]
        return {
            "data": [self.describe(b, None) for b in page],
            "has_more": len(newest) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    def stream_results(self, handler: Any, batch: FakeBatch) -> None:
        if not self.ended(batch):
            return handler._error(400, "invalid_request_error", "batch has not ended")
        assert batch.results is not None
        results = batch.results
        with self.lock:
            spoil = self.spoil if self.spoil_results > 0 else None
            self.spoil_results -= spoil is not None
        if spoil == "404":
            return handler._error(404, "not_found_error", "results not found")
        if spoil == "cut":  # the connection drops mid-line: no terminating chunk
            handler.send_response(200)
            handler.send_header("content-type", "application/binary")
            handler.send_header("content-length", str(sum(map(len, results))))
            handler.end_headers()
            handler.wfile.write(b"".join(results)[: sum(map(len, results)) // 2 + 3])
            handler.wfile.flush()
            handler.close_connection = True
            return None
        if spoil is not None:
            results = [GARBAGE[spoil](line) for line in results]
        order = list(range(len(results)))
        random.Random(self.seed * 7919 + batch.number).shuffle(order)  # results come unordered
        handler.send_response(200)
        handler.send_header("content-type", "application/binary")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        chunk: list[bytes] = []
        size = 0
        for k in order:
            line = results[k]
            chunk.append(line)
            size += len(line)
            if size >= 1 << 16:
                _write_chunk(handler, b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            _write_chunk(handler, b"".join(chunk))
        handler.wfile.write(b"0\r\n\r\n")

    # -- state -----------------------------------------------------------------

    def ended(self, batch: FakeBatch) -> bool:
        """Whether it has ended; the first time it has, its outcomes are drawn and billed.
        Call with the lock held."""
        if batch.results is not None:
            return True
        if not batch.cancelled and time.monotonic() - batch.created_mono < self.processing_s:
            return False
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        lines = []
        for cid, user in batch.requests:
            result = self.outcome(batch, cid, user)
            counts[result["result"]["type"]] += 1
            lines.append(json.dumps(result).encode() + b"\n")
        batch.results, batch.ended_counts = lines, counts
        self.billed += counts["succeeded"]
        return True

    def outcome(self, batch: FakeBatch, cid: str, user: str) -> dict[str, Any]:
        if batch.cancelled:
            return {"custom_id": cid, "result": {"type": "canceled"}}
        if batch.expire:
            return {"custom_id": cid, "result": {"type": "expired"}}
        attempt = self.attempts[user] = self.attempts.get(user, 0) + 1
        planned = self.script.get(user, [])
        kind = planned[attempt - 1] if attempt <= len(planned) else "succeeded"
        if kind == "expired":
            return {"custom_id": cid, "result": {"type": "expired"}}
        if kind in ("errored", "invalid"):
            error = ("api_error", "Internal server error")
            if kind == "invalid":
                error = ("invalid_request_error", "prompt is too long")
            return {
                "custom_id": cid,
                "result": {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": error[0], "message": error[1]}},
                },
            }
        refused = "REFUSE" in user
        text = "I'm sorry, I can't help with that." if refused else f"Answer: {user}"
        message = {
            "id": f"msg_{cid}",
            "type": "message",
            "role": "assistant",
            "model": batch.model + "-fake",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "refusal" if refused else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": len(user.split()) + 3, "output_tokens": len(text.split())},
        }
        return {"custom_id": cid, "result": {"type": "succeeded", "message": message}}

    def describe(self, batch: FakeBatch, handler: Any) -> dict[str, Any]:
        with self.lock:
            ended = self.ended(batch)
            counts = batch.counts()
            refuse = self.spoil == "refused" and self.spoil_results > 0
            self.spoil_results -= refuse and ended
        status = "ended" if ended else "in_progress"
        host = handler.headers.get("host") if handler is not None else None
        iso = batch.created_at.isoformat().replace("+00:00", "Z")
        expires = (batch.created_at + datetime.timedelta(days=1)).isoformat()
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": iso,
            "expires_at": expires.replace("+00:00", "Z"),
            "ended_at": iso if ended else None,
            "cancel_initiated_at": iso if batch.cancelled else None,
            "archived_at": None,
            "results_url": f"http://{host}{PREFIX}/{batch.id}/results" if ended and host else None,
            **({"results_url": f"http://127.0.0.1:{_closed_port()}/results"} if refuse else {}),
        }


def _spoil_message(line: bytes, change: Any) -> bytes:
    """A succeeded result line with its message changed by `change(message)`."""
    row = json.loads(line)
    if row["result"]["type"] == "succeeded":
        change(row["result"]["message"])
    return json.dumps(row).encode() + b"\n"


# Result lines as a broken server may send them (`spoil`); "cut", "404" and "refused"
# (a results URL nothing listens on) are the stream's own faults.
GARBAGE = {
    "not-objects": lambda line: b"[1, 2]\n" if b'"succeeded"' in line else line,
    "not-json": lambda line: b"{not json\n" if b'"succeeded"' in line else line,
    "no-content": lambda line: _spoil_message(line, lambda m: m.pop("content")),
    "null-content": lambda line: _spoil_message(line, lambda m: m.update(content=None)),
    "text-not-string": lambda line: _spoil_message(line, lambda m: m["content"][0].update(text=5)),
    "usage-huge": lambda line: _spoil_message(
        line, lambda m: m["usage"].update(output_tokens=2**80)
    ),
}


def _closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _user(params: dict[str, Any]) -> str:
    content = params["messages"][0]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return str(content)


def read_body(handler: Any) -> bytes:
    """The request body, sent with a length or chunked (the SDK streams iterable bodies)."""
    if handler.headers.get("transfer-encoding", "").lower() != "chunked":
        return bytes(handler.rfile.read(int(handler.headers.get("content-length", 0))))
    parts = []
    while True:
        size = int(handler.rfile.readline().split(b";")[0], 16)
        if size == 0:
            while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(handler.rfile.read(size))
        handler.rfile.readline()


def _write_chunk(handler: Any, data: bytes) -> None:
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def main() -> None:
    import argparse

    from fake_anthropic import FakeAnthropic

    parser = argparse.ArgumentParser()
    parser.add_argument("--processing-s", type=float, default=1.0)
    args = parser.parse_args()
    with FakeAnthropic() as fake:
        fake.batches.processing_s = args.processing_s
        print(fake.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
