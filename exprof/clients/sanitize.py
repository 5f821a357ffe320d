"""What the API sends, made safe before anything else reads it.

Every number and string from a response passes through here on its way to the pacer,
the store or a float conversion: a header that says `nan`, `-1e300` or the year 9999, a
usage count of 2**80 or -5, answer text with lone surrogates or a credential echoed
back. A count is an integer in [0, MAX_COUNT] or None; a duration a finite number of
seconds in [0, cap] or None; text is valid Unicode with every credential redacted.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from exprof.clients.credentials import redact

MAX_COUNT = 2**53 - 1  # exact as a float too, so no sum or ratio of counts overflows
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def count(value: Any) -> int | None:
    """A token count from a JSON body: an integer (or integral float) in [0, MAX_COUNT];
    else None, strings included."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_COUNT else None


def number(value: Any, low: float, high: float) -> float | None:
    """A finite number read from a header or body, clamped to [low, high]; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        parsed = float(value)
    except (ValueError, OverflowError):
        return None
    return min(max(parsed, low), high) if math.isfinite(parsed) else None


def seconds_until(stamp: Any, cap: float, wall_now: float | None = None) -> float | None:
    """Seconds from now to an RFC 3339 time, in [0, cap]; None if it cannot be read."""
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if when.tzinfo is None:
            return None
        left = when.timestamp() - (time.time() if wall_now is None else wall_now)
    except (ValueError, OverflowError, OSError):
        return None
    return min(max(left, 0.0), cap)


def text(value: Any) -> str | None:
    """A string from the API as it may be recorded: lone surrogates and U+0000 (which
    PostgreSQL's text cannot hold) replaced, every credential redacted; None for
    anything that is not a string."""
    if not isinstance(value, str):
        return None
    return redact(LONE_SURROGATE.sub(REPLACEMENT, value).replace("\x00", REPLACEMENT))


class Garbage(ValueError):
    """An answer exprof cannot read: that request's failure, never a crash."""


# Usage counts beyond input and output, as a response's metadata names them.
USAGE_COUNTS = {
    "cache_creation_input_tokens": ("cache_creation_input_tokens",),
    "cache_read_input_tokens": ("cache_read_input_tokens",),
    "cache_write_5m_tokens": ("cache_creation", "ephemeral_5m_input_tokens"),
    "cache_write_1h_tokens": ("cache_creation", "ephemeral_1h_input_tokens"),
    "thinking_tokens": ("output_tokens_details", "thinking_tokens"),
}
USAGE_WORDS = ("service_tier", "speed")
STOP_DETAIL_WORDS = ("type", "category", "explanation")


@dataclass(frozen=True)
class Message:
    """The parts of a Messages API message that exprof records, each one checked."""

    text: str
    model: str | None
    stop_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    # Only what the answer had: its other blocks (thinking, redacted thinking) with the
    # text ones, when it had any; stop_sequence and stop_details; the usage's other
    # classes, service tier and speed.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def usage(self) -> tuple[int, int] | None:
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens, self.output_tokens

    def counts(self) -> dict[str, Any]:
        """The metadata that follows the model (and temperature) in a response; `extra`
        comes after the request's timing."""
        return {
            "token_count": self.output_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "stop_reason": self.stop_reason,
        }


def body(data: bytes) -> Any:
    """A response body as JSON; raises Garbage for anything else."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not JSON, too deep, or a 5,000-digit number
        raise Garbage("the answer is not JSON") from None


def message(data: Any) -> Message:
    """The message in a decoded answer (a live body or a batch result's `message`);
    raises Garbage when its shape is not a message's."""
    if not isinstance(data, dict):
        raise Garbage("the answer is not a JSON object")
    content = data.get("content")
    if not isinstance(content, list):
        raise Garbage("the answer's content is not a list of blocks")
    parts: list[str] = []
    blocks: list[dict[str, Any]] = []
    signatures: list[tuple[dict[str, Any], Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise Garbage("a content block is not an object")
        kind = block.get("type")
        if kind == "text":
            part = text(block.get("text"))
            if part is None:
                raise Garbage("a text block holds no text")
            parts.append(part)
            blocks.append({"type": "text", "text": part})
        elif kind == "thinking":
            blocks.append({"type": "thinking", "thinking": text(block.get("thinking")) or ""})
            signatures.append((blocks[-1], block.get("signature")))
        elif kind == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": text(block.get("data")) or ""})
        elif kind == "tool_use":  # kept whole: the loop answers it by its id
            tool_input = block.get("input")
            blocks.append(
                {
                    "type": "tool_use",
                    "id": text(block.get("id")) or "",
                    "name": text(block.get("name")) or "",
                    "input": tool_input if isinstance(tool_input, dict) else {},
                }
            )
        else:
            blocks.append({"type": text(kind) or "unknown"})
    if any(b["type"] == "tool_use" for b in blocks):
        # A tool loop sends its thinking back with the tool results, signed as received.
        for block, signature in signatures:
            if text(signature) is not None:
                block["signature"] = signature
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    extra: dict[str, Any] = {}
    if any(b["type"] != "text" for b in blocks):
        extra["content"] = blocks
    if text(data.get("stop_sequence")) is not None:
        extra["stop_sequence"] = text(data.get("stop_sequence"))
    details = data.get("stop_details")
    if isinstance(details, dict):
        extra["stop_details"] = {k: text(details.get(k)) for k in STOP_DETAIL_WORDS}
    for name, path in USAGE_COUNTS.items():
        found = _dig(usage, path)
        if count(found) is not None:
            extra[name] = count(found)
    server_tools = usage.get("server_tool_use")
    if isinstance(server_tools, dict):  # web searches and the like, priced per use
        uses = {str(k): count(v) for k, v in server_tools.items() if count(v) is not None}
        if uses:
            extra["server_tool_use"] = uses
    for name in USAGE_WORDS:
        if text(usage.get(name)) is not None:
            extra[name] = text(usage.get(name))
    return Message(
        "".join(parts),
        text(data.get("model")),
        text(data.get("stop_reason")),
        count(usage.get("input_tokens")),
        count(usage.get("output_tokens")),
        extra,
    )


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path[:-1]:
        data = data.get(key)  # type: ignore[assignment]
        if not isinstance(data, dict):
            return None
    return data.get(path[-1])
