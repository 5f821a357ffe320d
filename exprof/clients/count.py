"""Input-token counts from the API's free messages.count_tokens endpoint, for
`exprof run --dry-run` in live mode. Nothing is recorded."""

from __future__ import annotations

import os

from exprof.clients.credentials import redact
from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError


def count_input_tokens(config: Config, samples: list[Sample]) -> list[int]:
    """Each sample's input tokens for config.model, as the API counts them; one call per
    distinct (system, user) pair, with the SDK's own retries."""
    import anthropic

    client = anthropic.Anthropic(
        base_url=os.environ.get("ANTHROPIC_BASE_URL") or None, timeout=config.timeout_s
    )
    seen: dict[tuple[str, str], int] = {}
    out = []
    try:
        for sample in samples:
            key = sample.identity()
            if key not in seen:
                extra = {"system": sample.system} if sample.system else {}
                counted = client.messages.count_tokens(
                    model=config.model,
                    messages=sample.turns(),  # type: ignore[arg-type]
                    **extra,  # type: ignore[arg-type]
                )
                seen[key] = counted.input_tokens
            out.append(seen[key])
    except anthropic.APIError as exc:
        raise ExprofError(f"--dry-run: counting tokens failed: {redact(str(exc))}") from None
    finally:
        client.close()
    return out
