"""Tool specs: the config's `tools`, `tool_choice` and `tool_runner`, and a sample's
scripted `tool_results`, validated and normalised when they are loaded. Nothing here runs
a tool; exprof.run.tools does, turn by turn.

What can fail later is checked now, before anything is written: every tool has a name the
API takes and an object input schema, a tool_choice names a defined tool, the runner's
function imports, and each scripted result names a tool and gives a string or blocks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from exprof.errors import ExprofError
from exprof.metric_specs import import_function

TOOL_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_KEYS = ("name", "description", "input_schema")
CHOICES = ("auto", "any", "none", "tool")
SCRIPT_KEYS = ("name", "input", "result", "is_error")
DEFAULT_MAX_TURNS = 8
DEFAULT_TOOL_TIMEOUT_S = 10.0


def parse_tools(value: object, where: str) -> list[dict[str, Any]]:
    """A non-empty list of {name, description, input_schema}, each name used once."""
    if not isinstance(value, list) or not value:
        raise ExprofError(
            f"{where}: must be a non-empty list of {{name, description, input_schema}} "
            "or a file of them"
        )
    tools: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ExprofError(f"{at}: must be a mapping {{name, description, input_schema}}")
        name = item.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
            raise ExprofError(f"{at}: name must be 1-64 letters, digits, '_' or '-', got {name!r}")
        at = f"{at} ({name})"
        if name in names:
            raise ExprofError(f"{at}: name is used twice")
        names.add(name)
        for key in item:
            if key not in TOOL_KEYS:
                raise ExprofError(
                    f"{at}: unknown key {str(key)!r}; a tool has {', '.join(TOOL_KEYS)}"
                )
        tool: dict[str, Any] = {"name": name}
        if "description" in item:
            if not isinstance(item["description"], str):
                raise ExprofError(f"{at}: description must be a string")
            tool["description"] = item["description"]
        schema = item.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise ExprofError(f"{at}: input_schema must be a JSON Schema with type: object")
        tool["input_schema"] = schema
        tools.append(tool)
    return tools


def parse_tool_choice(value: object, tools: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """`auto`, `any`, `none`, or a mapping {type, name (for type tool),
    disable_parallel_tool_use}: the API's ToolChoiceParam."""
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or value.get("type") not in CHOICES:
        raise ExprofError(
            f"{where}: must be one of {', '.join(CHOICES)} or {{type: tool, name: NAME}}"
        )
    kind = value["type"]
    allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
    for key in value:
        if key not in allowed:
            raise ExprofError(f"{where}: unknown key {str(key)!r} for type {kind}")
    if kind == "tool" and value.get("name") not in {t["name"] for t in tools}:
        raise ExprofError(f"{where}: name {value.get('name')!r} is not one of the tools")
    parallel = value.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise ExprofError(f"{where}: disable_parallel_tool_use must be true or false")
    return dict(value)


def parse_tool_runner(value: object, config_dir: Path, where: str) -> dict[str, str]:
    """`module:function`, imported now so that a missing one fails before the run."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise ExprofError(f"{where}: must be 'module:function', got {value!r}")
    spec = {"function": value, "search_path": str(config_dir.resolve())}
    import_function(spec["function"], spec["search_path"], where)
    return spec


def parse_tool_results(value: object, where: str) -> tuple[dict[str, Any], ...]:
    """A sample's scripted results: [{name, input (a subset to match), result, is_error}]."""
    if not isinstance(value, list):
        raise ExprofError(f"{where}: must be a list of {{name, input, result, is_error}}")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ExprofError(f"{at}: must be a mapping {{name, input, result, is_error}}")
        for key in item:
            if key not in SCRIPT_KEYS:
                raise ExprofError(
                    f"{at}: unknown key {str(key)!r}; a result has {', '.join(SCRIPT_KEYS)}"
                )
        name = item.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
            raise ExprofError(f"{at}: name must be a tool's name, got {name!r}")
        entry: dict[str, Any] = {"name": name, "input": item.get("input", {})}
        if not isinstance(entry["input"], dict):
            raise ExprofError(f"{at} ({name}): input must be a mapping (a subset to match)")
        if "result" not in item or not is_result_content(item["result"]):
            raise ExprofError(f"{at} ({name}): result must be a string or a list of text blocks")
        entry["result"] = item["result"]
        if "is_error" in item:
            if not isinstance(item["is_error"], bool):
                raise ExprofError(f"{at} ({name}): is_error must be true or false")
            entry["is_error"] = item["is_error"]
        out.append(entry)
    return tuple(out)


def is_result_content(value: object) -> bool:
    """A tool result's content as the API takes it: a string, or a list of text blocks."""
    if isinstance(value, str):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
            for b in value
        )
    )


def matches(subset: object, value: object) -> bool:
    """Does `value` hold `subset`: every key of a mapping, recursively; else equality."""
    if isinstance(subset, dict):
        return isinstance(value, dict) and all(
            k in value and matches(v, value[k]) for k, v in subset.items()
        )
    return subset == value
