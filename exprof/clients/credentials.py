"""Credentials: require one before a live run, and keep every one out of what is recorded.

The SDK can send a key three ways: `x-api-key`, `Authorization: Bearer` (either variable),
and a proxy or a server error may echo any of them back. `redact` masks them all: the
values of the credential variables wherever they appear, anything shaped like an
Anthropic key, and whatever follows an Authorization / x-api-key / Bearer label.
"""

from __future__ import annotations

import os
import re

from exprof.errors import ExprofError

CREDENTIAL_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
REDACTED = "[redacted]"
# A credential shorter than this is not a real one; masking every "a" would only garble text.
MIN_SECRET_LEN = 4
KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")
LABELLED_PATTERN = re.compile(
    r"(?P<label>\b(?:authorization|x-api-key)\b[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?"
    r"|\bbearer\s+)(?P<value>[^\s\"',;}]+)",
    re.IGNORECASE,
)


def require_credentials(what: str) -> None:
    """Live mode needs a key; say so before anything is written, not deep in the SDK."""
    if not any(os.environ.get(name) for name in CREDENTIAL_VARIABLES):
        raise ExprofError(f"{what}: live mode needs ANTHROPIC_API_KEY set in the environment")


def redact(text: str) -> str:
    """`text` with every credential the client could send masked."""
    for name in CREDENTIAL_VARIABLES:
        secret = os.environ.get(name, "").strip()
        if len(secret) >= MIN_SECRET_LEN:
            text = text.replace(secret, REDACTED)
    text = KEY_PATTERN.sub("sk-ant-" + REDACTED, text)
    return LABELLED_PATTERN.sub(_mask_value, text)


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value")
    if value.endswith(REDACTED):  # already masked above: keep one marker, not two
        return match.group(0)
    return match.group("label") + REDACTED
