"""The Messages API through the official anthropic SDK: one request's answer, with
retries, AIMD and the rate-limit pacer.

Retries are ours (the SDK's are turned off) so that each attempt is counted, the
in-flight limit can adapt to 429s, and a final failure records how many attempts it
took. The loop that drives many requests is exprof.run.live.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from exprof.clients import caching, sanitize
from exprof.clients.fatal import fatal_cause
from exprof.clients.limits import AdaptiveLimit, Gate, pacer_for
from exprof.clients.outcome import Failure, Outcome, Response
from exprof.config import Config
from exprof.dataset import Sample
from exprof.knobs import SAMPLING

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


def build_request(
    config: Config, sample: Sample, where: caching.Plan | None = None
) -> dict[str, Any]:
    """messages.create arguments: the sample's system prompt and turns, and the config's
    knobs (sampling parameters only where the API version takes them, sent as extra body
    fields since the SDK's own version no longer has them)."""
    request: dict[str, Any] = {
        "model": config.model,
        "max_tokens": config.max_tokens,
        "messages": sample.turns(),
    }
    if sample.system:
        request["system"] = sample.system
    if config.tools:
        request["tools"] = config.tools
        if config.tool_choice:
            request["tool_choice"] = config.tool_choice
    fields = config.wire_knobs()
    sampling = {k: fields.pop(k) for k in SAMPLING if k in fields}
    request.update(fields)
    if config.sends_temperature:
        request["extra_headers"] = {"anthropic-version": config.api_version}
        request["extra_body"] = sampling
    if config.prompt_cache is not None:
        where = where or caching.plan(config, sample)
        caching.with_breakpoints(request, config.prompt_cache, where)
    return request


class LiveClient:
    def __init__(self, config: Config, limiter: AdaptiveLimit) -> None:
        import anthropic

        self.anthropic = anthropic
        self.config = config
        self.limiter = limiter
        endpoint = os.environ.get("ANTHROPIC_BASE_URL") or ""
        # Shared by everything in this process that calls this model there.
        self.pacer = pacer_for(config.model, endpoint, config.rate_limit)
        self.gate = Gate(self.pacer)
        self.client = anthropic.AsyncAnthropic(
            base_url=endpoint or None,
            max_retries=0,
            timeout=config.timeout_s,
        )
        self.halted = False  # set after an error that will hit every request

    async def complete(self, sample: Sample) -> Outcome:
        """The sample's Response or final Failure; raises Halted instead of sending once
        the run is halted, so that the sample stays pending."""
        where = caching.plan(self.config, sample) if self.config.prompt_cache else None
        request = build_request(self.config, sample, where)
        chars = len(sample.transcript())
        attempts = 0
        while True:
            attempts += 1
            await self.limiter.acquire()  # every attempt, retries too, waits for a slot
            cost = self.pacer.estimate(chars, self.config.max_tokens)
            settled = False
            try:
                await self.gate.enter(cost)  # ... and for the rate limits
                if self.halted:
                    raise Halted
                started = time.perf_counter()
                if self.config.stream:
                    raw, answer, timing = await self._streamed(request, started)
                else:
                    raw = await self.client.messages.with_raw_response.create(**request)
                    answer, timing = sanitize.message(sanitize.body(await raw.read())), {}
            except self.anthropic.APIStatusError as exc:
                headers = exc.response.headers
                informed = self.pacer.settle(cost, headers, time.monotonic())
                settled = True
                if exc.status_code == 429 and not informed:
                    # No rate-limit headers to pace by: AIMD, and everyone waits it out.
                    self.limiter.on_rate_limited()
                    self.pacer.hold(_retry_after(headers) or 0.0, time.monotonic())
                retry = exc.status_code in RETRYABLE_STATUS
                said = _api_message(exc)
                fatal = fatal_cause(exc.status_code, said, self.config.model)
                failure = Failure(type(exc).__name__, said, exc.status_code, attempts, fatal)
            except self.anthropic.APIConnectionError as exc:
                retry, headers = True, None
                failure = Failure(type(exc).__name__, _said(str(exc)), None, attempts)
            except sanitize.Garbage as exc:  # a 200 that is not a message: worth a retry
                retry, headers = True, None
                failure = Failure("InvalidResponse", str(exc), 200, attempts)
            else:
                self.pacer.settle(
                    cost, raw.headers, time.monotonic(), usage=answer.usage, chars=chars
                )
                settled = True
                self.limiter.on_success()
                request_id = sanitize.text(raw.headers.get("request-id"))
                elapsed = time.perf_counter() - started
                timing = {**timing, **caching.record(self.config, sample, where)}
                return self._response(answer, request_id, attempts, elapsed, timing)
            finally:
                if not settled:  # no answer to learn from: only give the estimate back
                    self.pacer.settle(cost, None, time.monotonic())
                self.limiter.release()
            if failure.fatal:
                self.halted = True
                return failure
            if not retry or attempts > self.config.max_retries:
                return failure
            await asyncio.sleep(_backoff(attempts, headers))

    def status(self) -> str:
        """For the progress bar: the rate limit holding the run back, or the AIMD limit."""
        return self.pacer.status(time.monotonic()) or f"in-flight limit {self.limiter.limit}"

    async def _streamed(
        self, request: dict[str, Any], started: float
    ) -> tuple[Any, sanitize.Message, dict[str, float]]:
        """The answer streamed: its raw response (for the headers), the message, and its
        time to first token and output tokens per second after it."""
        first = None
        async with self.client.messages.stream(**request) as stream:
            async for event in stream:
                if first is None and event.type == "content_block_delta":
                    first = time.perf_counter()
            message = await stream.get_final_message()
            raw = stream.response
        ended = time.perf_counter()
        answer = sanitize.message(message.model_dump(mode="json"))
        timing: dict[str, float] = {}
        if first is not None:
            timing["ttft_ms"] = round((first - started) * 1000, 1)
            if answer.output_tokens and ended > first:
                timing["output_tokens_per_s"] = round(answer.output_tokens / (ended - first), 1)
        return raw, answer, timing

    def _response(
        self,
        answer: sanitize.Message,
        request_id: str | None,
        attempts: int,
        elapsed: float,
        streamed: dict[str, float],
    ) -> Response:
        timing = {"latency_ms": round(elapsed * 1000, 1), **streamed, "attempts": attempts}
        return answer_response(answer, self.config, {**timing, "request_id": request_id})

    async def close(self) -> None:
        await self.client.close()


def answer_response(
    answer: sanitize.Message, config: Config, timing: dict[str, Any] | None = None
) -> Response:
    """An answer's Response, live or from a batch: the responding model, the temperature
    where it was sent, the usage, stop reason and the rest the answer had, then `timing`.
    A refusal stop reason makes it a refusal, whatever the text says."""
    metadata: dict[str, Any] = {"model": answer.model}
    if config.sends_temperature and config.temperature is not None:
        metadata["temperature"] = config.temperature
    metadata.update(answer.counts())
    metadata.update(timing or {})
    metadata.update(answer.extra)
    if answer.stop_reason == "refusal":
        metadata["type"] = "refusal"
    return Response(answer.text, metadata)


class Halted(Exception):
    """A sample not sent because the run stopped on an error that hits every request."""


def _api_message(exc: Any) -> str:
    """The API's own error message where the body has one, else the SDK's text."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        said = sanitize.text(body["error"].get("message"))
        if said is not None:
            return said
    return _said(str(exc.message))


def _said(message: str) -> str:
    return sanitize.text(message) or ""


def _retry_after(headers: Any) -> float | None:
    """The server's retry-after(-ms), in seconds, if it sent a finite one."""
    if headers is not None:
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            after = sanitize.number(headers.get(name), 0.0, RETRY_AFTER_CAP_S / scale)
            if after is not None:
                return after * scale
    return None


def _backoff(attempt: int, headers: Any) -> float:
    """Honour retry-after(-ms) exactly when the server sends it; else exponential with
    full jitter."""
    after = _retry_after(headers)
    if after is not None:
        return after
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
