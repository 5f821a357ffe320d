"""Reading a config's YAML: PyYAML's safe loader, made strict (duplicate keys, alias
bombs and integers too long to convert are refused, each in one clear line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from exprof.config_values import type_name
from exprof.errors import ExprofError
from exprof.files import MAX_CONFIG_BYTES, read_text
from exprof.strict_json import LongInteger, check_tree

# A YAML alias repeats a node without copying it, so a few lines can stand for billions
# of values (the "billion laughs"). A config is small: its nodes, with every alias
# expanded, stay far below this.
MAX_YAML_NODES = 10_000


def load_mapping(path: Path) -> dict[Any, Any]:
    text = read_text(path, "config", limit=MAX_CONFIG_BYTES)
    try:
        raw = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _ConfigYAMLError as exc:
        raise ExprofError(f"{path}: {exc}") from None
    except RecursionError:
        raise ExprofError(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ExprofError(f"{path}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        raise ExprofError(f"{path}: config is empty")
    if not isinstance(raw, dict):
        raise ExprofError(f"{path}: config must be a mapping of keys, got {type_name(raw)}")
    return check_tree(raw, str(path))


class _ConfigYAMLError(yaml.YAMLError):
    """A YAML document that parses but that we refuse: its message is the whole story."""


class StrictLoader(yaml.SafeLoader):
    """safe_load, plus: duplicate keys are an error (YAML says so; PyYAML keeps the last),
    and a document whose aliases expand past MAX_YAML_NODES is refused before it is built."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def construct_yaml_int(self, node: Any) -> Any:
        # int() of 5,000 digits raises ValueError (Python's str limit): check_tree refuses
        # the stand-in, naming the key.
        if len(str(node.value).lstrip("+-0").replace("_", "")) > 20:
            return LongInteger()
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                    key_node, yaml.ScalarNode
                ):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: SafeConstructor reports it
                if first is not None:
                    raise _ConfigYAMLError(
                        f"line {line}: duplicate key {str(key)!r} (first at line {first})"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def _check_expanded_size(root: Any) -> None:
    """Count the document's nodes as if every alias were copied, sharing the count of a
    node seen before (so a bomb costs as little to measure as to parse)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            mark = node.start_mark
            raise _ConfigYAMLError(f"line {mark.line + 1}: an alias refers to itself")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_YAML_NODES:
            raise _ConfigYAMLError(
                f"YAML aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)"
            )
        sizes[key] = total
        return total

    if root is not None:
        size(root)
