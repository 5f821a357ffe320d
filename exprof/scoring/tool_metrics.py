"""The built-in metric kinds that score a tool run's path rather than its answer, each
read from the answer's recorded `tool_calls` and `turns` (see exprof.run.tools):

- `tool_called`: was the tool called (with an input holding `input`, if given)?
- `tool_sequence`: do the calls' names match `tools`: `exact`ly, as a `subsequence`
  (in order, others between), or as a `set` (the same names, any order and count)?
- `turns`: the requests the sample took;
- `tool_errors`: its tool calls that got an error result.
"""

from __future__ import annotations

from typing import Any

from exprof.metric_specs import MetricFn
from exprof.tool_specs import matches


def called_names(metadata: dict[str, Any]) -> list[str]:
    return [call["name"] for call in metadata.get("tool_calls", ())]


def is_subsequence(wanted: list[str], names: list[str]) -> bool:
    it = iter(names)
    return all(any(name == w for name in it) for w in wanted)


def build(spec: dict[str, Any]) -> MetricFn:
    kind = spec["type"]
    if kind == "tool_called":
        tool, subset = spec["tool"], spec.get("input", {})

        def tool_called(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> bool:
            return any(
                call["name"] == tool and matches(subset, call["input"])
                for call in metadata.get("tool_calls", ())
            )

        return tool_called
    if kind == "tool_sequence":
        wanted, order = list(spec["tools"]), spec["order"]

        def tool_sequence(
            sample: dict[str, Any], completion: str, metadata: dict[str, Any]
        ) -> bool:
            names = called_names(metadata)
            if order == "exact":
                return names == wanted
            if order == "subsequence":
                return is_subsequence(wanted, names)
            return set(names) == set(wanted)

        return tool_sequence
    if kind == "turns":

        def turns(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> int:
            return int(metadata.get("turns", 1))

        return turns

    def tool_errors(sample: dict[str, Any], completion: str, metadata: dict[str, Any]) -> int:
        return int(metadata.get("tool_errors", 0))

    return tool_errors
