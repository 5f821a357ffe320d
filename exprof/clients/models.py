"""The Models API: a model's entry (ModelInfo) as JSON, read through the official SDK.

exprof.models checks a config against it before a live run sends anything.
"""

from __future__ import annotations

import os
from typing import Any

from exprof.clients.credentials import redact
from exprof.errors import ExprofError


class ModelsClient:
    def __init__(self, timeout_s: float) -> None:
        import anthropic

        self.anthropic = anthropic
        self.client = anthropic.Anthropic(
            base_url=os.environ.get("ANTHROPIC_BASE_URL") or None,
            timeout=timeout_s,
            max_retries=2,
        )

    def fetch(self, model: str) -> dict[str, Any] | None:
        """The model's entry; None when the API knows no such model. Any other error is
        one ExprofError: nothing can be checked, so nothing is sent."""
        try:
            info = self.client.models.retrieve(model)
        except self.anthropic.NotFoundError:
            return None
        except self.anthropic.APIError as exc:
            raise ExprofError(
                f"reading model {model!r} from the Models API failed: {redact(str(exc))}"
            ) from None
        return info.model_dump(mode="json")

    def close(self) -> None:
        self.client.close()
