"""Input-token counts from the API's free messages.count_tokens endpoint, for
`exprof run --dry-run` in live mode. Nothing is recorded.

Each distinct request body is counted once (exprof.estimate decides which ones are
needed: counts already in the store are reused, and past MAX_COUNTS_ENV the rest are
estimated), with at most COUNT_THREADS calls in flight."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from exprof.clients.credentials import redact
from exprof.config import Config
from exprof.dataset import Sample
from exprof.errors import ExprofError
from exprof.files import env_number
from exprof.jsonio import dumps

COUNT_THREADS = 4
MAX_COUNTS_ENV = "EXPROF_MAX_TOKEN_COUNTS"  # distinct bodies one dry run counts
MAX_COUNTS = 2000


def max_counts() -> int:
    return int(env_number(MAX_COUNTS_ENV, MAX_COUNTS, int, 0))


def count_body(model: str, tools: Any, sample: Sample) -> dict[str, Any]:
    """What count_tokens is asked for one sample: the input of its request."""
    body: dict[str, Any] = {"model": model, "messages": sample.turns()}
    if sample.system:
        body["system"] = sample.system
    if tools:
        body["tools"] = tools
    return body


def body_key(model: str, tools: Any, sample: Sample) -> str:
    """The identity of a request's input: equal keys, equal counts."""
    return hashlib.sha256(dumps(count_body(model, tools, sample)).encode()).hexdigest()


def count_input_tokens(config: Config, samples: list[Sample]) -> list[int]:
    """Each sample's input tokens for config.model, as the API counts them: one call per
    distinct body, COUNT_THREADS at a time, with the SDK's own retries."""
    import anthropic

    client = anthropic.Anthropic(
        base_url=os.environ.get("ANTHROPIC_BASE_URL") or None, timeout=config.timeout_s
    )
    bodies = {body_key(config.model, config.tools, s): s for s in samples}

    def count(sample: Sample) -> int:
        body = count_body(config.model, config.tools, sample)
        return int(client.messages.count_tokens(**body).input_tokens)

    try:
        with ThreadPoolExecutor(max_workers=COUNT_THREADS) as pool:
            counted = dict(zip(bodies, pool.map(count, bodies.values()), strict=True))
    except anthropic.APIError as exc:
        raise ExprofError(f"--dry-run: counting tokens failed: {redact(str(exc))}") from None
    finally:
        client.close()
    return [counted[body_key(config.model, config.tools, s)] for s in samples]
