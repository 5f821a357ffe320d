"""The fake API's prompt cache, as the real one behaves (the prompt caching page).

A request's blocks are read in the API's order (tools, system, messages); each block
marked with `cache_control` is a breakpoint, and the prefix up to it is cached when it
reaches the model's minimum cacheable length (fake_models.MIN_CACHEABLE), never when it
is shorter. A request reads the longest of its prefixes that is cached and alive, which
keeps that entry alive for its TTL again, and writes the rest up to its last
breakpoint, each part at its own breakpoint's TTL. A write lands only once the answer is
made, so requests that arrive while the first is in flight miss and each write too.

The fake's tokenizer: ceil(characters / 4) a block, as exprof's estimate counts; the
last user turn is counted by its words, as the fake always has.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field

import fake_models

TTL_S = {"5m": 300.0, "1h": 3600.0}
MAX_BREAKPOINTS = 4


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


@dataclass
class Lookup:
    """One request's cache outcome, decided when it arrives; `commit` stores its writes."""

    prefix_tokens: int  # the tokens in front of the last user turn
    read: int = 0
    written: dict[str, int] = field(default_factory=lambda: {"5m": 0, "1h": 0})
    entries: list[tuple[str, str]] = field(default_factory=list)  # (key, ttl) to store
    marked: bool = False  # the request had a breakpoint

    @property
    def write(self) -> int:
        return self.written["5m"] + self.written["1h"]


@dataclass
class PromptCache:
    ttl_s: dict[str, float] = field(default_factory=lambda: dict(TTL_S))
    entries: dict[str, tuple[float, str]] = field(default_factory=dict)  # key -> (expiry, ttl)
    writes: int = 0  # requests that wrote an entry
    reads: int = 0  # requests that read one
    write_tokens: int = 0
    read_tokens: int = 0

    def lookup(self, body: dict, model: str) -> Lookup | str:
        """The request's outcome, or the 400 message for breakpoints the API refuses.
        The caller holds the state's lock."""
        blocks = _blocks(body)
        marks = [i for i, (_, _, ttl) in enumerate(blocks) if ttl is not None]
        if len(marks) > MAX_BREAKPOINTS:
            return f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided."
        ttls = [blocks[i][2] for i in marks]
        if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
            return "cache_control: a 1h breakpoint must come before any 5m breakpoint"
        sums, running = [], 0
        for _, text, _ in blocks:
            running += tokens(text)
            sums.append(running)
        # The last user turn is the sample's own text: the fake counts it by words.
        start = _last_user_start(body, blocks)
        prefix = sums[start - 1] if start else 0
        found = Lookup(prefix, marked=bool(marks))
        least = fake_models.min_cacheable(model)
        now = time.monotonic()
        usable = [i for i in marks if sums[i] >= least]
        hit = None
        for i in reversed(usable):
            key = _key(model, blocks[: i + 1])
            entry = self.entries.get(key)
            if entry is not None and entry[0] > now:
                hit = i
                self.entries[key] = (now + self.ttl_s[entry[1]], entry[1])  # used: alive again
                break
        done = 0
        if hit is not None:
            found.read = done = sums[hit]
            self.reads += 1
            self.read_tokens += found.read
        for i in usable:
            if hit is not None and i <= hit:
                continue
            ttl = blocks[i][2] or "5m"
            found.written[ttl] += sums[i] - done
            done = sums[i]
            found.entries.append((_key(model, blocks[: i + 1]), ttl))
        return found

    def commit(self, found: Lookup) -> None:
        """Store a request's writes, once its answer is made (caller holds the lock)."""
        now = time.monotonic()
        for key, ttl in found.entries:
            self.entries[key] = (now + self.ttl_s[ttl], ttl)
        if found.write:
            self.writes += 1
            self.write_tokens += found.write


def _blocks(body: dict) -> list[tuple[str, str, str | None]]:
    """(where, text, the breakpoint's ttl or None) of every block, in the API's order."""
    out: list[tuple[str, str, str | None]] = []
    for tool in body.get("tools") or []:
        out.append(("tool", json.dumps(tool, sort_keys=True), _ttl(tool)))
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append(("system", system, None))
    elif isinstance(system, list):
        out.extend(("system", b.get("text", ""), _ttl(b)) for b in system)
    for turn in body.get("messages") or []:
        content = turn.get("content", "")
        if isinstance(content, str):
            out.append((turn.get("role", "user"), content, None))
        else:
            out.extend((turn.get("role", "user"), b.get("text", ""), _ttl(b)) for b in content)
    return out


def _ttl(block: dict) -> str | None:
    control = block.get("cache_control")
    return None if not isinstance(control, dict) else control.get("ttl", "5m")


def _last_user_start(body: dict, blocks: list) -> int:
    """The index of the first block of the last user turn (0: there is no prefix)."""
    turns = body.get("messages") or []
    last = max((i for i, t in enumerate(turns) if t.get("role", "user") == "user"), default=0)
    before = len(blocks) - sum(
        1 if isinstance(t.get("content", ""), str) else len(t["content"]) for t in turns
    )
    for turn in turns[:last]:
        content = turn.get("content", "")
        before += 1 if isinstance(content, str) else len(content)
    return before


def _key(model: str, blocks: list[tuple[str, str, str | None]]) -> str:
    """A cache entry's key: the model and the prefix's blocks, breakpoints left out."""
    data = json.dumps([model, [(where, text) for where, text, _ in blocks]])
    return hashlib.sha256(data.encode()).hexdigest()
