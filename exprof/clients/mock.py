"""Clients that answer a sample: the deterministic offline mock, and the live SDK client.

Both return an Outcome. The live client lives in exprof/live.py so that mock runs
never import the anthropic SDK (about 1.4 s of start-up).
"""

from __future__ import annotations

from typing import Any

from exprof.clients.outcome import Failure, Outcome, Response
from exprof.dataset import Sample


class MockClient:
    """Answers from `mock_responses.json`, verbatim; a missing entry is a failed sample."""

    def __init__(self, responses: dict[str, dict[str, Any]]) -> None:
        self.responses = responses

    def complete(self, sample: Sample) -> Outcome:
        entry = self.responses.get(sample.dialogue_id)
        if entry is None:
            return Failure(
                "MockResponseMissing",
                f"no mock response for dialogue_id {sample.dialogue_id!r} in mock_responses.json",
            )
        return Response(entry["completion"], entry.get("metadata", {}))
