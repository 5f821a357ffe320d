"""Credentials: require one before a live run, and keep every one out of what is recorded."""

from __future__ import annotations

import os
import re

from exprof.errors import ExprofError

KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")


def require_credentials(what: str) -> None:
    """Live mode needs a key; say so before anything is written, not deep in the SDK."""
    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        raise ExprofError(f"{what}: live mode needs ANTHROPIC_API_KEY set in the environment")


def redact(text: str) -> str:
    """Recorded error messages never carry an API key, even if the SDK echoes headers."""
    key = os.environ.get("ANTHROPIC_API_KEY")
    if key:
        text = text.replace(key, "[redacted]")
    return KEY_PATTERN.sub("sk-ant-[redacted]", text)
