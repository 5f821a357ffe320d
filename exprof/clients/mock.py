"""Clients that answer a sample: the deterministic offline mock, and the live SDK client.

Both return an Outcome. The live client lives in exprof/clients/live.py so that mock
runs never import the anthropic SDK (about 1.4 s of start-up).

The mock answers from `mock_responses.json` verbatim, and plays the parts of today's API
that change an answer's record: with `effort` or `thinking` set it thinks (a number of
thinking tokens fixed by the effort and the dialogue id), and an answer longer than
`max_tokens`, thinking included, is cut off there (`stop_reason: max_tokens`), and a
`type: refusal` answer it records anew gets the refusal stop reason. A file entry may
give its own `stop_reason` and `stop_details`. An answer the mock does not change (no
knob set, within max_tokens: the seed's case) keeps exactly the metadata its file gives.
"""

from __future__ import annotations

import zlib
from typing import Any

from exprof.clients.outcome import Failure, Outcome, Response
from exprof.dataset import Sample

# Thinking tokens per answer at each effort, before a per-dialogue spread of up to +50%.
# Adaptive thinking with no effort thinks at the API's default, high.
THINKING_BY_EFFORT = {"low": 32, "medium": 128, "high": 512, "xhigh": 1024, "max": 2048}
DEFAULT_EFFORT = "high"


class MockClient:
    """Answers from `mock_responses.json`; a missing entry is a failed sample."""

    def __init__(
        self,
        responses: dict[str, dict[str, Any]],
        max_tokens: int | None = None,
        knobs: dict[str, Any] | None = None,
    ) -> None:
        self.responses = responses
        self.max_tokens = max_tokens
        self.knobs = knobs or {}

    def complete(self, sample: Sample) -> Outcome:
        entry = self.responses.get(sample.dialogue_id)
        if entry is None:
            return Failure(
                "MockResponseMissing",
                f"no mock response for dialogue_id {sample.dialogue_id!r} in mock_responses.json",
            )
        if "turns" in entry:
            return _turn(entry, sample)
        completion, metadata = entry["completion"], entry.get("metadata", {})
        thinking = self.thinking_tokens(sample.dialogue_id)
        answer = _tokens(metadata, completion)
        if thinking is None and (self.max_tokens is None or answer <= self.max_tokens):
            return Response(completion, metadata)
        metadata = dict(metadata)
        if metadata.get("type") == "refusal":
            metadata.setdefault("stop_reason", "refusal")
        thinking = thinking or 0
        if thinking:
            metadata["thinking_tokens"] = thinking
        if self.max_tokens is not None and thinking + answer > self.max_tokens:
            kept = max(self.max_tokens - thinking, 0)
            completion = " ".join(completion.split()[:kept])
            answer, metadata["stop_reason"] = kept, "max_tokens"
        metadata["token_count"] = answer
        metadata["output_tokens"] = thinking + answer
        return Response(completion, metadata)

    def thinking_tokens(self, dialogue_id: str) -> int | None:
        """How much the mock thinks on this dialogue; None when no knob asks it to think,
        0 when thinking is off."""
        effort, thinking = self.knobs.get("effort"), self.knobs.get("thinking")
        if effort is None and thinking is None:
            return None
        kind = (thinking or {"type": "adaptive"})["type"]
        if kind in ("disabled", "between_tools"):
            return 0
        base = THINKING_BY_EFFORT[effort or DEFAULT_EFFORT]
        if kind == "enabled":
            base = min(base, thinking["budget_tokens"])  # type: ignore[index]
        spread = zlib.crc32(dialogue_id.encode("utf-8", "surrogatepass")) % 51
        return base + base * spread // 100


def _turn(entry: dict[str, Any], sample: Sample) -> Outcome:
    """The answer to the dialogue's k-th request, k counted from the tool results it
    carries: a tool_use turn (stop_reason tool_use), or the text that ends it, with the
    entry's metadata. Usage is fixed by the request's and the answer's lengths."""
    messages = sample.turns()
    k = sum(
        1
        for m in messages
        if m["role"] == "user"
        and isinstance(m["content"], list)
        and any(b.get("type") == "tool_result" for b in m["content"])
    )
    turns = entry["turns"]
    if k >= len(turns):
        return Failure(
            "MockResponseMissing",
            f"no mock turn {k + 1} for dialogue_id {sample.dialogue_id!r} "
            f"(mock_responses.json gives {len(turns)})",
        )
    turn = turns[k]
    input_tokens = len(sample.transcript().split()) + 3
    if isinstance(turn, str):
        metadata = {
            "stop_reason": "end_turn",
            "input_tokens": input_tokens,
            "output_tokens": len(turn.split()),
            **entry.get("metadata", {}),
        }
        return Response(turn, metadata)
    calls = turn["tool_use"] if isinstance(turn["tool_use"], list) else [turn["tool_use"]]
    text = turn.get("text", "")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for i, call in enumerate(calls):
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_mock_{k + 1}_{i + 1}",
                "name": call["name"],
                "input": call.get("input", {}),
            }
        )
    metadata = {
        "stop_reason": "tool_use",
        "input_tokens": input_tokens,
        "output_tokens": len(text.split()) + 10 * len(calls),
        "content": blocks,
    }
    return Response(text, metadata)


def _tokens(metadata: dict[str, Any], completion: str) -> int:
    """An answer's length in tokens: its `token_count`, else its words."""
    count = metadata.get("token_count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return len(completion.split())
