"""What a client returns for a sample: a Response or a Failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Response:
    completion: str
    metadata: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1  # API requests it took; 0 for an answer replayed from the store


@dataclass(frozen=True)
class Failure:
    error_class: str
    message: str
    status: int | None = None
    attempts: int = 1
    fatal: str | None = None  # set when the same error will hit every request: stop the run


Outcome = Response | Failure
