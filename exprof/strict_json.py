"""Strict JSON for the user's files, and the values exprof can carry.

Every JSON document exprof parses from a user goes through `parse_json`:

- JSON with a duplicate key, NaN or Infinity is refused, naming the line;
- so is a value no part of exprof can carry (`check_tree`): an integer beyond 64 bits, a
  float that is not finite, a string with a lone surrogate (UTF-8 cannot encode it) or
  nesting deeper than MAX_DEPTH. The config's YAML goes through the same check.
"""

from __future__ import annotations

import itertools
import json
import json.decoder
import json.scanner
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from exprof.errors import ExprofError

# Every number from outside lies within 64 bits: integers are kept exact (orjson and
# both stores carry them), and sums, squares and products of such numbers stay finite.
MAX_INT = 2**63 - 1
MAX_DEPTH = 100  # levels of nested lists and objects in a document we read


class _Invalid(Exception):
    """Raised inside the fast parse; the slow parse then finds where."""


def parse_json(text: str, where: str, one_line: bool = False) -> Any:
    """Strict JSON for a user's file: a duplicate key, NaN or Infinity is an error that
    names the line (standard JSON allows neither NaN nor Infinity, and Python's parser
    would keep the last duplicate silently). `where` names the file, and for one line
    of a JSON Lines file (`one_line`), the line too."""
    value = _plain_json(text)
    if value is not _DOUBTFUL:
        return value
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_pairs,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno}, column {exc.colno}"
        raise ExprofError(f"{where}: malformed JSON at {at}: {exc.msg}") from None
    except _Invalid:
        pass
    except RecursionError:
        raise ExprofError(f"{where}: JSON nested too deeply") from None
    else:
        return check_tree(value, where)
    line, problem = _locate_invalid(text)
    raise ExprofError(f"{where}: {problem}" if one_line else f"{where}: line {line}: {problem}")


_DOUBTFUL = object()
_KINDS = frozenset({str, bool, type(None), int, float, dict, list})


def _plain_json(text: str) -> Any:
    """`text` parsed by the standard library's C parser with only the duplicate-key hook,
    where a scan of the text and one pass over the tree show parse_json's strict parse
    would return the same value and check_tree would pass it; else _DOUBTFUL, and
    parse_json parses strictly (and names what is wrong, if anything is). The 100k-sample
    benchmark's dataset and mock answers parse 1.6 to 2.2 times as fast this way.

    - A NUL or a lone surrogate can only come from a `\\u` escape (a NUL byte is refused
      on reading, a raw control character is malformed JSON), or from a surrogate in a
      text no file decoded: no such escape and UTF-8-encodable text mean no such string.
    - Numbers, and nesting deeper than MAX_DEPTH, are checked on the tree (_plain_tree).
    """
    if "\\u" in text and ("\\u0000" in text or "\\ud" in text or "\\uD" in text):
        return _DOUBTFUL
    if not text.isascii() and not _encodable(text):
        return _DOUBTFUL
    try:
        value = json.loads(text, object_pairs_hook=_unique_pairs)
    except (ValueError, RecursionError, _Invalid):
        return _DOUBTFUL
    return value if _plain_tree(value) else _DOUBTFUL


def _plain_tree(value: Any) -> bool:
    """Whether every number in a parsed JSON tree lies within 64 bits (floats finite)
    and its depth is within MAX_DEPTH. A level of the tree at a time, so that most of
    the work is done in C."""
    nodes = [value]  # every node at this depth (the length of its path)
    for depth in range(MAX_DEPTH + 1):
        kinds = set(map(type, nodes))
        if not kinds <= _KINDS:
            return False
        if int in kinds:
            ints = [node for node in nodes if type(node) is int]
            if -MAX_INT > min(ints) or max(ints) > MAX_INT:
                return False
        if float in kinds:
            floats = [node for node in nodes if type(node) is float]
            # A NaN or an infinity makes the sum non-finite.
            if not math.isfinite(sum(floats)) or -MAX_INT > min(floats) or max(floats) > MAX_INT:
                return False
        dicts = [node for node in nodes if type(node) is dict] if dict in kinds else []
        lists = [node for node in nodes if type(node) is list] if list in kinds else []
        if depth == MAX_DEPTH and (any(dicts) or any(lists)):
            return False  # their children lie deeper than check_tree allows
        nodes = [
            *itertools.chain.from_iterable(map(dict.values, dicts)),
            *itertools.chain.from_iterable(lists),
        ]
        if not nodes:
            break
    return True


def strict_decoder() -> json.JSONDecoder:
    """parse_json's decoder, for reading a large file a value at a time: it raises on a
    duplicate key, NaN, Infinity or an integer beyond 64 bits (without naming them;
    parse_json does that). Each value it decodes still needs `check_tree`."""
    return json.JSONDecoder(
        object_pairs_hook=_unique_pairs,
        parse_constant=_no_constant,
        parse_float=_finite_float,
        parse_int=_bounded_int,
    )


# PostgreSQL's text cannot hold U+0000 (SQLite's can): refused from every file, so that
# both backends take the same input.
NUL_REFUSED = "holds U+0000 (NUL), which a store cannot keep as text"


class LongInteger:
    """A parser's stand-in for an integer literal too long to convert (int() of 5,000
    digits raises): check_tree refuses it, naming its field."""


def check_tree(value: Any, where: str) -> Any:
    """`value` (parsed JSON or YAML) if every part of it can be recorded and written
    back as standard JSON; else one error naming the field (`where: key[2].name: ...`)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        node, at = stack.pop()
        if len(at) > MAX_DEPTH:
            raise ExprofError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, str):
            if not node.isascii() and not _encodable(node):
                _refuse(where, at, "holds a lone surrogate (\\ud800-\\udfff), not text")
            if "\x00" in node:
                _refuse(where, at, NUL_REFUSED)
        elif isinstance(node, LongInteger):
            _refuse(where, at, "an integer beyond 64 bits")
        elif isinstance(node, bool) or node is None:
            pass
        elif isinstance(node, int):
            if not -MAX_INT <= node <= MAX_INT:
                _refuse(where, at, "an integer beyond 64 bits")
        elif isinstance(node, float):
            if not math.isfinite(node) or abs(node) > MAX_INT:
                _refuse(where, at, f"must be a finite number within +-2**63, got {node}")
        elif isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    _refuse(where, at, "a key holds a lone surrogate (\\ud800-\\udfff)")
                if isinstance(key, str) and "\x00" in key:
                    _refuse(where, at, f"a key {NUL_REFUSED}")
                stack.append((child, (*at, key)))
        elif isinstance(node, list):
            stack.extend((child, (*at, i)) for i, child in enumerate(node))
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse(where: str, at: tuple[Any, ...], problem: str) -> NoReturn:
    field = "".join(f"[{k}]" if isinstance(k, int) else f".{_key_word(k)}" for k in at)
    field = field.lstrip(".")
    raise ExprofError(f"{where}: {field or 'the value'}: {problem}")


def _key_word(key: Any) -> str:
    """A key as an error line names it: plain words as they are, anything else quoted
    with its escapes (a key may hold a newline or a control character)."""
    text = str(key)
    return text if text.isidentifier() or re.fullmatch(r"[\w.-]+", text) else repr(text)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Invalid
    return out


def _no_constant(name: str) -> Any:
    raise _Invalid


def _bounded_int(text: str) -> int:
    # The length first: int() of 5,000 digits raises ValueError (Python's str limit).
    if len(text) > 20 or not -MAX_INT <= (value := int(text)) <= MAX_INT:
        raise _Invalid
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise _Invalid
    return value


_NOT_FINITE = object()
_TOO_BIG = object()


def _locate_invalid(text: str) -> tuple[int, str]:
    """Parse again with the pure-Python scanner, whose object and array hooks see the
    position in the text, to say which key is repeated or not finite, and on which line."""
    decoder = json.JSONDecoder(
        parse_constant=lambda name: _NOT_FINITE,
        parse_int=lambda text: _TOO_BIG if len(text) > 20 or abs(int(text)) > MAX_INT else 0,
    )

    def line_of(s: str, end: int) -> int:
        return s.count("\n", 0, end) + 1

    def check(value: Any, label: str, s: str, end: int) -> None:
        if value is _TOO_BIG:
            raise _Located(line_of(s, end), f"{label} is an integer beyond 64 bits")
        if value is _NOT_FINITE or (isinstance(value, float) and not math.isfinite(value)):
            raise _Located(
                line_of(s, end),
                f"{label} is NaN or Infinity, which JSON does not allow (write null or a number)",
            )

    def parse_object(s_and_end: tuple[str, int], *args: Any, **kwargs: Any) -> tuple[Any, int]:
        s, end = s_and_end
        args = args[:3] + (lambda pairs: pairs,) + args[4:]
        pairs, new_end = json.decoder.JSONObject(s_and_end, *args, **kwargs)  # type: ignore[attr-defined]
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                raise _Located(
                    line_of(s, end), f"duplicate key {key!r} in the object that starts there"
                )
            seen.add(key)
            check(value, f"{key!r}", s, end)
        return dict(pairs), new_end

    def parse_array(s_and_end: tuple[str, int], scan_once: Callable[..., Any]) -> tuple[Any, int]:
        s, end = s_and_end
        values, new_end = json.decoder.JSONArray(s_and_end, scan_once)  # type: ignore[attr-defined]
        for i, value in enumerate(values):
            check(value, f"item {i} of a list", s, end)
        return values, new_end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.parse_array = parse_array  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        value = decoder.decode(text)
        check(value, "the value", text, 0)
    except _Located as found:
        return found.line, found.problem
    except (ValueError, RecursionError):
        pass
    return 1, "a duplicate key, NaN, Infinity or an integer beyond 64 bits"


class _Located(Exception):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem
