"""The rescore client: answers each sample with the response another run
recorded for it, so a run can be scored again with new metrics and no API call."""

from __future__ import annotations

from typing import Any

from exprof.clients.outcome import Failure, Outcome, Response
from exprof.dataset import Sample


class ReplayClient:
    """Answers from `responses` ((dialogue_id, repeat) -> (completion, metadata)),
    verbatim: repeat i gets the source's repeat i. A sample the source run never
    answered is a failed sample here too."""

    def __init__(
        self, source_run_id: str, responses: dict[tuple[str, int], tuple[str, dict[str, Any]]]
    ):
        self.source_run_id = source_run_id
        self.responses = responses

    def complete(self, sample: Sample) -> Outcome:
        found = self.responses.get((sample.dialogue_id, sample.repeat))
        if found is None:
            return Failure(
                "NoRecordedResponse",
                f"run {self.source_run_id!r} has no response for {sample.dialogue_id!r}",
                attempts=0,
            )
        return Response(found[0], found[1], attempts=0)
