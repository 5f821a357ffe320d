"""API errors that will hit every request of a run, and the one line that names the cause.

A retired model, a bad key, or a request-level parameter the API rejects fail every
sample the same way; sending the rest only burns time and quota and ends in a resume
hint that cannot help. Such an error stops the run (exit 2). An error about one sample
(a prompt too long, say) or a retryable one (429, 5xx, timeouts) does not.
"""

from __future__ import annotations

import re

from exprof.clients.credentials import redact

# Request parameters that come from the config, so a 400 naming one is the same for
# every sample. `messages` and `system` are not here: they differ per sample.
CONFIG_PARAMETERS = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "output_config",
        "thinking",
        "service_tier",
        "speed",
    }
)
# The config keys a parameter of the request comes from, where they differ.
CONFIG_KEYS = {"output_config": "effort: or output_schema:"}
# A model that takes no prefill rejects every sample that ends with an assistant turn:
# the dataset's shape, not one sample.
PREFILL = re.compile(r"does not support assistant message prefill", re.IGNORECASE)
NAMED_PARAMETER = re.compile(r"^\s*([A-Za-z_][\w-]*)(?:[.\[][^:]*)?\s*:")
MAX_DETAIL = 300
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def fatal_cause(status: int, message: str, model: str) -> str | None:
    """The one-line cause when an error with this status and API message will hit every
    request; None when it is about this sample only, or worth retrying."""
    detail = _one_line(message)
    mock = "or run with --mock"
    if status == 404:
        if detail.startswith("model") or model in detail:
            return f"model {model!r} not found (retired?); set model: in the config, {mock}"
        return f"the API answered 404 not found ({detail}); check ANTHROPIC_BASE_URL, {mock}"
    if status == 401:
        return (
            f"the API rejected the credentials (401: {detail}); "
            f"check ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN, {mock}"
        )
    if status == 403:
        return (
            f"the API key may not make this request (403: {detail}); "
            f"check its workspace and model access, {mock}"
        )
    if status == 400:
        named = NAMED_PARAMETER.match(detail)
        if named and named.group(1) in CONFIG_PARAMETERS:
            param = named.group(1)
            key = CONFIG_KEYS.get(param, f"{param}:")
            return f"the API rejects {param} (400: {detail}); fix {key} in the config, {mock}"
        if PREFILL.search(detail):
            return (
                f"{model} takes no prefill (400: {detail}); end every conversation in the "
                f"dataset with a user turn, or choose a model that takes a prefill"
            )
    return None


def _one_line(message: str) -> str:
    """Redacted, without control characters (it is printed), and not a page long."""
    text = CONTROL.sub(" ", redact(message)).strip()
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
