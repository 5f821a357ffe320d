"""Why an answer stopped, from its recorded metadata: the one reading of stop reasons
that scoring, the projections and compare share.

An answer that ran out of room (`max_tokens`, `model_context_window_exceeded`, a tool
loop's `max_turns`) or was paused mid-turn (`pause_turn`) is *cut off*: it is not a
wrong answer, and the summary keeps it apart. A `refusal` stop reason is a refusal
whatever the text says; its `stop_details.category` names the policy, `uncategorized`
when it names none (or when only the text rule found the refusal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CUT_OFF = ("max_tokens", "model_context_window_exceeded", "pause_turn", "max_turns")
UNCATEGORIZED = "uncategorized"


def is_cut_off(metadata: Mapping[str, Any]) -> bool:
    return metadata.get("stop_reason") in CUT_OFF


def refusal_category(metadata: Mapping[str, Any]) -> str:
    """The policy category of a refusal (call it for refused answers only)."""
    details = metadata.get("stop_details")
    if metadata.get("stop_reason") == "refusal" and isinstance(details, Mapping):
        category = details.get("category")
        if isinstance(category, str) and category:
            return category
    return UNCATEGORIZED
