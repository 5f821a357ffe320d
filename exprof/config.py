"""Loading and validating the YAML experiment config (docs/SPEC.md, "Config")."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from exprof import knobs
from exprof.errors import ExprofError
from exprof.files import MAX_CONFIG_BYTES, read_text
from exprof.metric_specs import (
    DEFAULT_METRIC_TIMEOUT_S,
    SpecContext,
    parse_metrics,
    with_schema_metric,
)
from exprof.pricing import CLASSES, PRICES_PER_MTOK, require_prices
from exprof.strict_json import MAX_INT, LongInteger, check_tree
from exprof.tool_specs import (
    DEFAULT_MAX_TURNS,
    DEFAULT_TOOL_TIMEOUT_S,
    parse_tool_choice,
    parse_tool_runner,
    parse_tools,
)

MAX_ID_LENGTH = 128
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A run id names a folder beside the default store, so it may not be the store's name
# or one of the sidecar files SQLite keeps next to it.
RESERVED_IDS = tuple(f"exprof.db{s}" for s in ("", "-wal", "-shm", "-journal"))
METRIC_NAMES = ("fact_coverage", "refusal_rate", "geometric_mean")
SDK_API_VERSION = "2026-10-21"
DEFAULT_CONCURRENCY = 16
DEFAULT_MAX_RETRIES = 8
DEFAULT_TIMEOUT_S = 60.0
# A YAML alias repeats a node without copying it, so a few lines can stand for billions
# of values (the "billion laughs"). A config is small: its nodes, with every alias
# expanded, stay far below this.
MAX_YAML_NODES = 10_000

TOOL_KEYS = ("tools", "tool_choice", "max_turns", "tool_timeout_s", "tool_runner")
# An answer reused from the store comes without its trajectory, and the identity of a
# request (system and turns) does not cover the tools it offered.
CACHE_WITH_TOOLS = "answers reused from the store carry no trajectory; set one of cache, tools"
REQUIRED_KEYS = ("experiment_id", "model", "max_tokens", "dataset_path")
OPTIONAL_KEYS = (
    *knobs.KNOBS,
    "stream",
    "log_schema_version",
    "output_fields",
    "metrics",
    "mock_responses_path",
    "concurrency",
    "max_retries",
    "timeout_s",
    "api_version",
    "pricing",
    "batch",
    "batch_poll_s",
    "rate_limit",
    "matrix",
    "repeats",
    "cache",
    "budget_usd",
    "metric_timeout_s",
    *TOOL_KEYS,
)
# The parameters a matrix may vary, and the most cells run without --yes.
MATRIX_KEYS = ("model", "max_tokens", "system", "mock_responses_path", *knobs.KNOBS)
# Matrix keys whose values are named (a list gets names, a mapping gives them): the cell
# name and the recorded params carry the short name, the config's matrix the value.
NAMED_MATRIX_KEYS = ("system", "mock_responses_path")
MAX_CELLS = 24
MAX_REPEATS = 1000
# Experiment keys left out of the recorded config while at their default, so a config
# without them records exactly what it did before they existed.
EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "matrix": None,
    "repeats": 1,
    "cache": False,
    "budget_usd": None,
    "system": None,
    "metric_timeout_s": DEFAULT_METRIC_TIMEOUT_S,
    "stream": False,
    **{k: None for k in knobs.KNOBS if k != "temperature"},
    "tools": None,
    "tool_choice": None,
    "max_turns": DEFAULT_MAX_TURNS,
    "tool_timeout_s": DEFAULT_TOOL_TIMEOUT_S,
    "tool_runner": None,
}
RATE_LIMIT_KEYS = ("rpm", "itpm", "otpm")
# What `rescore --config FILE` reads: the metrics, and the prices of a judge's requests.
RESCORE_KEYS = ("metrics", "pricing")


@dataclass(frozen=True)
class Config:
    experiment_id: str
    model: str
    max_tokens: int
    temperature: float | None
    dataset_path: str
    mock_responses_path: str
    log_schema_version: int = 1
    output_fields: list[str] = field(default_factory=lambda: ["completion", "metadata"])
    # Built-in names, and custom metric specs as normalised by exprof.metric_specs.
    metrics: list[str | dict[str, Any]] = field(default_factory=lambda: list(METRIC_NAMES))
    concurrency: int = DEFAULT_CONCURRENCY
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout_s: float = DEFAULT_TIMEOUT_S
    api_version: str = SDK_API_VERSION
    pricing: dict[str, dict[str, float]] = field(default_factory=dict)
    batch: bool = False  # send through the Message Batches API
    batch_poll_s: float | None = None  # first poll interval; None: the batch runner's default
    rate_limit: dict[str, int] = field(default_factory=dict)  # a cap below the org's limits
    # `matrix` maps a parameter to its values (system: name -> text); a cell's
    # own config has no matrix and, when the matrix varies it, the cell's `system`.
    matrix: dict[str, Any] | None = None
    repeats: int = 1
    cache: bool = False
    budget_usd: float | None = None
    system: str | None = None
    metric_timeout_s: float = DEFAULT_METRIC_TIMEOUT_S  # each custom metric call's limit
    # The knobs (exprof.knobs), each in the form the API takes; None: not sent.
    effort: str | None = None
    thinking: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    output_schema: dict[str, Any] | None = None  # {file, schema}
    service_tier: str | None = None
    speed: str | None = None
    top_p: float | None = None
    top_k: int | None = None
    # {ttl, upto, schedule} (exprof.clients.caching); None: no breakpoints
    prompt_cache: dict[str, Any] | None = None
    stream: bool = False  # stream each answer, for time to first token and tokens/s
    # Tools (exprof.tool_specs): what Claude may call, how, for how many requests per
    # sample, and where results come from besides a sample's scripted tool_results.
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    max_turns: int = DEFAULT_MAX_TURNS
    tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    tool_runner: dict[str, str] | None = None  # {function, search_path}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, default in EXPERIMENT_DEFAULTS.items():
            if out[key] == default:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return cls(**data)

    @property
    def sends_temperature(self) -> bool:
        """Only the 2023-06-01 API accepts sampling parameters; 2026-10-21 rejects them."""
        return self.api_version != SDK_API_VERSION

    @property
    def knobs(self) -> dict[str, Any]:
        """The knobs set, by key, in KNOBS order."""
        return {k: getattr(self, k) for k in knobs.KNOBS if getattr(self, k) is not None}

    def wire_knobs(self) -> dict[str, Any]:
        """The request fields the knobs add, as a live request sends them."""
        return knobs.wire(self.knobs, self.sends_temperature)

    def sent_params(self, mode: str) -> dict[str, Any]:
        """The knobs that reach the model, by config key: a live run sends every knob set
        (sampling parameters only under an API version that takes them); the mock honours
        effort and thinking, and nothing else."""
        if mode == "live":
            sent = self.knobs
            if not self.sends_temperature:
                for key in knobs.SAMPLING:
                    sent.pop(key, None)
            return sent
        return {k: v for k, v in self.knobs.items() if k in knobs.MOCK_KNOBS}

    @property
    def builtin_metrics(self) -> tuple[str, ...]:
        """The built-in names listed, in order: what tables show first."""
        return tuple(m for m in self.metrics if isinstance(m, str)) or METRIC_NAMES


def check_run_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not RUN_ID_RE.fullmatch(value):
        raise ExprofError(
            f"{where}: {value!r} is not a valid id "
            "(letters, digits, '.', '_', '-'; starts with a letter or digit; at most 128 chars)"
        )
    if value.casefold() in RESERVED_IDS:  # casefold: some file systems ignore case
        raise ExprofError(
            f"{where}: {value!r} is reserved: the default store and its sidecar files "
            "use that name in the output folder"
        )
    return value


def auto_run_id(experiment_id: str, n: int) -> str:
    """The automatic id of an experiment's n-th run: the experiment id, then
    `<experiment_id>-<n>`, with the experiment id cut from its end as far as needed to
    keep the whole within the 128-character limit (RUN_ID_RE)."""
    if n == 1:
        return experiment_id
    suffix = f"-{n}"
    return experiment_id[: MAX_ID_LENGTH - len(suffix)] + suffix


def resolve_path(value: str, config_dir: Path, where: str) -> Path:
    """Relative paths: the config's folder first, then the current directory."""
    path = Path(value).expanduser()
    if path.is_absolute():
        if not path.exists():
            raise ExprofError(f"{where}: {path} not found")
        return path
    tried = [config_dir / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    raise ExprofError(f"{where}: {value!r} not found; tried {tried[0]} and {tried[1]}")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return _validate(_load_mapping(path), path)


def load_rescore_config(path: str | Path, recorded: dict[str, Any]) -> Config:
    """`rescore --config FILE`: FILE's RESCORE_KEYS over the source run's recorded config.
    FILE may hold only those keys; a whole config is checked as one, and its other keys
    are ignored, since they cannot change recorded answers."""
    path = Path(path)
    raw = _load_mapping(path)
    if any(key in raw for key in REQUIRED_KEYS):
        return _validate(raw, path)
    for key in raw:
        if key not in RESCORE_KEYS:
            hint = difflib.get_close_matches(str(key), RESCORE_KEYS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ExprofError(
                f"{path}: unknown key {str(key)!r}{suggestion} "
                f"(rescore reads only {', '.join(RESCORE_KEYS)})"
            )
    out = dict(recorded)
    if "metrics" in raw:
        context = SpecContext(path, recorded["model"], Path(recorded["dataset_path"]).parent)
        out["metrics"] = parse_metrics(raw["metrics"], context)
    if "pricing" in raw:
        out["pricing"] = _pricing(raw["pricing"], f"{path}: pricing")
    return Config.from_dict(out)


def _load_mapping(path: Path) -> dict[Any, Any]:
    text = read_text(path, "config", limit=MAX_CONFIG_BYTES)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
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
        raise ExprofError(f"{path}: config must be a mapping of keys, got {_type(raw)}")
    return check_tree(raw, str(path))


class _ConfigYAMLError(yaml.YAMLError):
    """A YAML document that parses but that we refuse: its message is the whole story."""


class _StrictLoader(yaml.SafeLoader):
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


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


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


def _validate(raw: dict[Any, Any], path: Path) -> Config:
    known = REQUIRED_KEYS + OPTIONAL_KEYS
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ExprofError(f"{path}: unknown key {str(key)!r}{suggestion}")
    matrix = _matrix(raw["matrix"], f"{path}: matrix", path.parent) if "matrix" in raw else None
    for key in REQUIRED_KEYS:
        if key not in raw and not (matrix and key in matrix):
            raise ExprofError(f"{path}: missing required key {key!r}")
    if matrix:  # a key the matrix varies needs no top-level value: the first cell's stands in
        taken = (*NAMED_MATRIX_KEYS, *knobs.KNOBS)  # knob values are parsed already: taken below
        raw = {**{k: v[0] for k, v in matrix.items() if k not in taken}, **raw}
        if "mock_responses_path" in matrix:
            raw.setdefault(
                "mock_responses_path", next(iter(matrix["mock_responses_path"].values()))
            )

    def where(key: str) -> str:
        return f"{path}: {key}"

    out: dict[str, Any] = {"matrix": matrix}
    out["experiment_id"] = check_run_id(raw["experiment_id"], where("experiment_id"))
    out["model"] = _string(raw["model"], where("model"))
    out["max_tokens"] = _integer(raw["max_tokens"], where("max_tokens"), minimum=1)
    for key in knobs.KNOBS:
        if key in raw:
            out[key] = knobs.parse(key, raw[key], where(key), path.parent)
        else:  # the matrix's first value stands in, as for model and max_tokens
            out[key] = matrix[key][0] if matrix and key in matrix else None
    dataset_value = _string(raw["dataset_path"], where("dataset_path"))
    dataset = resolve_path(dataset_value, path.parent, where("dataset_path"))
    out["dataset_path"] = str(dataset)
    mock_value = raw.get("mock_responses_path")
    if mock_value is None:
        out["mock_responses_path"] = str(dataset.parent / "mock_responses.json")
    else:
        mock_value = _string(mock_value, where("mock_responses_path"))
        out["mock_responses_path"] = str(_resolve_lazily(mock_value, path.parent))

    if "log_schema_version" in raw:
        out["log_schema_version"] = _integer(
            raw["log_schema_version"], where("log_schema_version"), minimum=1, maximum=1
        )
    if "output_fields" in raw:
        out["output_fields"] = _choices(
            raw["output_fields"], where("output_fields"), ("completion", "metadata")
        )
    if "metrics" in raw:
        context = SpecContext(path, out["model"], dataset.parent)
        out["metrics"] = parse_metrics(raw["metrics"], context)
    if out["output_schema"] is not None:
        out["metrics"] = with_schema_metric(
            out.get("metrics", list(METRIC_NAMES)), out["output_schema"]
        )
    if "stream" in raw:
        if not isinstance(raw["stream"], bool):
            raise ExprofError(f"{where('stream')}: must be true or false, got {raw['stream']!r}")
        out["stream"] = raw["stream"]
    if "concurrency" in raw:
        out["concurrency"] = _integer(raw["concurrency"], where("concurrency"), minimum=1)
    if "max_retries" in raw:
        out["max_retries"] = _integer(raw["max_retries"], where("max_retries"), minimum=0)
    if "timeout_s" in raw:
        out["timeout_s"] = _number(raw["timeout_s"], where("timeout_s"), 0.001, None)
    if "metric_timeout_s" in raw:
        limit = _number(raw["metric_timeout_s"], where("metric_timeout_s"), 0.001, 86400.0)
        out["metric_timeout_s"] = float(limit)
    if "api_version" in raw:
        out["api_version"] = _string(raw["api_version"], where("api_version"))
    if "pricing" in raw:
        out["pricing"] = _pricing(raw["pricing"], where("pricing"))
    if "batch" in raw:
        if not isinstance(raw["batch"], bool):
            raise ExprofError(
                f"{where('batch')}: must be true or false, got {_describe(raw['batch'])}"
            )
        out["batch"] = raw["batch"]
    if "batch_poll_s" in raw:
        out["batch_poll_s"] = _number(raw["batch_poll_s"], where("batch_poll_s"), 0.001, None)
    if "rate_limit" in raw:
        out["rate_limit"] = _rate_limit(raw["rate_limit"], where("rate_limit"))
    if "repeats" in raw:
        out["repeats"] = _integer(raw["repeats"], where("repeats"), 1, MAX_REPEATS)
    if "cache" in raw:
        if not isinstance(raw["cache"], bool):
            raise ExprofError(f"{where('cache')}: must be true or false, got {raw['cache']!r}")
        out["cache"] = raw["cache"]
    if "budget_usd" in raw:
        out["budget_usd"] = check_budget(raw["budget_usd"], where("budget_usd"))
    out.update(_tools(raw, path))
    offered = {tool["name"] for tool in out.get("tools") or ()}
    for i, spec in enumerate(out.get("metrics", ())):
        if not isinstance(spec, dict) or spec["type"] not in ("tool_called", "tool_sequence"):
            continue
        for tool in spec.get("tools", [spec.get("tool")]):
            if tool not in offered:
                raise ExprofError(
                    f"{path}: metrics[{i}] ({spec['name']}): tool {tool!r} is not one of the tools"
                )
    config = _check_batch(Config(**out))
    if config.budget_usd is not None:
        require_prices(config_models(config), config.pricing, where("budget_usd"))
    return config


def check_budget(value: object, where: str) -> float:
    """A budget in USD: a finite number >= 0 (NaN would never be reached)."""
    return float(_number(value, where, 0.0, None))


def config_models(config: Config) -> list[str]:
    """Every model a config sends to: its own, and each its matrix varies."""
    return list(dict.fromkeys([config.model, *(config.matrix or {}).get("model", [])]))


def _tools(raw: dict[Any, Any], path: Path) -> dict[str, Any]:
    """`tools` (a list, or a JSON/YAML file of one) and the keys that only mean something
    with it: tool_choice, max_turns, tool_timeout_s, tool_runner."""
    out: dict[str, Any] = {}
    if "tools" not in raw:
        for key in TOOL_KEYS:
            if key in raw:
                raise ExprofError(f"{path}: {key}: needs tools (the list of tool definitions)")
        return out
    value, where = raw["tools"], f"{path}: tools"
    if raw.get("batch") is True:
        # A batch answers each request once, within hours: a tool loop would need a batch
        # per turn, each round waiting on the slowest sample of the last.
        raise ExprofError(
            f"{where}: a batch run sends each sample once and cannot answer its tool "
            "calls; run tools live (batch: false)"
        )
    if isinstance(value, str):
        file = resolve_path(value, path.parent, where)
        text = read_text(file, "tools file", limit=MAX_CONFIG_BYTES)
        try:
            value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ExprofError(f"{where}: {file}: not JSON or YAML: {exc}") from None
        where = f"{where} ({file})"
    out["tools"] = tools = parse_tools(value, where)
    if raw.get("cache") is True:
        raise ExprofError(f"{path}: cache: {CACHE_WITH_TOOLS}")
    if "tool_choice" in raw:
        out["tool_choice"] = parse_tool_choice(raw["tool_choice"], tools, f"{path}: tool_choice")
    if "max_turns" in raw:
        out["max_turns"] = _integer(raw["max_turns"], f"{path}: max_turns", 1, 100)
    if "tool_timeout_s" in raw:
        limit = _number(raw["tool_timeout_s"], f"{path}: tool_timeout_s", 0.001, 86400.0)
        out["tool_timeout_s"] = float(limit)
    if "tool_runner" in raw:
        out["tool_runner"] = parse_tool_runner(
            raw["tool_runner"], path.parent, f"{path}: tool_runner"
        )
    return out


def with_overrides(
    config: Config,
    repeats: int | None = None,
    cache: bool | None = None,
    budget_usd: float | None = None,
) -> Config:
    """The config with the command line's experiment flags applied, each checked as its
    config key is and named by its flag."""
    changes: dict[str, Any] = {}
    if repeats is not None:
        changes["repeats"] = _integer(repeats, "--repeats", 1, MAX_REPEATS)
    if cache is not None:
        changes["cache"] = cache
    if budget_usd is not None:
        changes["budget_usd"] = check_budget(budget_usd, "--budget-usd")
        require_prices(config_models(config), config.pricing, "--budget-usd")
    return _check_batch(replace(config, **changes) if changes else config)


def _check_batch(config: Config) -> Config:
    """Batches address samples by dataset position, one request each: no repeats, and
    no reuse or budget check between requests (yet)."""
    if config.batch and (config.repeats > 1 or config.cache or config.budget_usd is not None):
        raise ExprofError("batch: cannot be combined with repeats, cache or budget_usd yet")
    if config.cache and config.tools:
        raise ExprofError(f"cache: {CACHE_WITH_TOOLS}")
    if config.batch and config.stream:
        raise ExprofError("stream: a batch's answers are not streamed; set one of batch, stream")
    return config


def _matrix(value: object, where: str, base: Path) -> dict[str, Any]:
    """`matrix:` as {parameter: [values]}, or for system {name: text}; every value is
    checked as its top-level key would be, and an error names the key and the value."""
    if not isinstance(value, dict) or not value:
        raise ExprofError(f"{where}: must be a mapping of parameter to a list of values")
    out: dict[str, Any] = {}
    for key, values in value.items():
        at = f"{where}.{key}"
        if key not in MATRIX_KEYS:
            hint = difflib.get_close_matches(str(key), MATRIX_KEYS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ExprofError(
                f"{at}: {str(key)!r} cannot vary (one of {', '.join(MATRIX_KEYS)}){suggestion}"
            )
        if key == "system":
            out[key] = _matrix_systems(values, at)
            continue
        if key == "mock_responses_path":
            out[key] = _matrix_mocks(values, at, base)
            continue
        if not isinstance(values, list) or not values:
            raise ExprofError(f"{at}: must be a non-empty list of values")
        checked: list[Any] = []
        for i, item in enumerate(values):
            item_at = f"{at}[{i}]"
            if key == "model":
                checked.append(_string(item, item_at))
            elif key in knobs.KNOBS:
                checked.append(knobs.parse(key, item, item_at, base))
            else:
                checked.append(_integer(item, item_at, minimum=1))
            if checked[-1] in checked[:-1]:
                raise ExprofError(f"{item_at}: {item!r} is listed twice")
        out[key] = checked
    return out


def _matrix_systems(values: object, at: str) -> dict[str, str]:
    """A list of system prompts (named s1, s2, ...) or a mapping of short name to text."""
    if isinstance(values, list) and values:
        values = {f"s{i + 1}": text for i, text in enumerate(values)}
    if not isinstance(values, dict) or not values:
        raise ExprofError(f"{at}: must be a non-empty list of prompts or a mapping name -> text")
    out: dict[str, str] = {}
    for name, text in values.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", name):
            raise ExprofError(
                f"{at}: name {name!r} must be letters, digits, '_' or '-' (at most 32 chars)"
            )
        if not isinstance(text, str):
            raise ExprofError(f"{at}.{name}: must be a string, got {_describe(text)}")
        out[name] = text
    return out


def _matrix_mocks(values: object, at: str, config_dir: Path) -> dict[str, str]:
    """Mock answer files, each cell answering from one: a mapping of short name to path,
    or a list of paths named by their file stems (`cheap.json` is the cell `mock-cheap`)."""
    if isinstance(values, list) and values:
        named = {}
        for i, item in enumerate(values):
            text = _string(item, f"{at}[{i}]")
            named[Path(text).stem] = text
        if len(named) < len(values):
            raise ExprofError(f"{at}: two files share a name; give a mapping name -> path")
        values = named
    if not isinstance(values, dict) or not values:
        raise ExprofError(f"{at}: must be a non-empty list of paths or a mapping name -> path")
    out: dict[str, str] = {}
    for name, item in values.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", name):
            raise ExprofError(
                f"{at}: name {name!r} must be letters, digits, '_' or '-' (at most 32 chars)"
            )
        out[name] = str(_resolve_lazily(_string(item, f"{at}.{name}"), config_dir))
    return out


def _resolve_lazily(value: str, config_dir: Path) -> Path:
    """The mock file is only needed in mock mode, so a missing one is reported there."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for candidate in (config_dir / path, Path.cwd() / path):
        if candidate.exists():
            return candidate.resolve()
    return (config_dir / path).resolve()


def _type(value: object) -> str:
    return {bool: "a boolean", list: "a list", dict: "a mapping", str: "a string"}.get(
        type(value), type(value).__name__
    )


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExprofError(f"{where}: must be a non-empty string, got {_describe(value)}")
    return value


def _integer(value: object, where: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExprofError(f"{where}: must be an integer, got {_describe(value)}")
    if value < minimum or value > (MAX_INT if maximum is None else maximum):
        raise ExprofError(
            f"{where}: must be an integer {_bound(minimum, maximum, value)}, got {value}"
        )
    return value


def _number(value: object, where: str, minimum: float, maximum: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExprofError(f"{where}: must be a number, got {_describe(value)}")
    if not math.isfinite(value):  # YAML's .nan and .inf
        raise ExprofError(f"{where}: must be a finite number, got {value}")
    if value < minimum or value > (MAX_INT if maximum is None else maximum):
        raise ExprofError(
            f"{where}: must be a number {_bound(minimum, maximum, value)}, got {value}"
        )
    return float(value) if isinstance(value, float) else value


def _bound(minimum: float, maximum: float | None, value: float) -> str:
    """The range a number must lie in: every number from outside stays below 2**63,
    which is named only to a value beyond it."""
    if maximum is not None:
        return f"in [{minimum:g}, {maximum:g}]"
    return f">= {minimum:g}" if value < minimum else f">= {minimum:g} and below 2**63"


def _choices(value: object, where: str, allowed: tuple[str, ...]) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ExprofError(f"{where}: must be a non-empty list drawn from {', '.join(allowed)}")
    for item in value:
        if item not in allowed:
            raise ExprofError(f"{where}: {item!r} is not one of {', '.join(allowed)}")
    return list(value)


def _rate_limit(value: object, where: str) -> dict[str, int]:
    """{rpm, itpm, otpm}: requests, input and output tokens per minute, each optional."""
    keys = ", ".join(RATE_LIMIT_KEYS)
    if not isinstance(value, dict) or not value:
        raise ExprofError(f"{where}: must be a mapping of {keys} to a per-minute limit")
    out = {}
    for key, limit in value.items():
        if key not in RATE_LIMIT_KEYS:
            raise ExprofError(f"{where}: unknown key {str(key)!r}; the keys are {keys}")
        out[key] = _integer(limit, f"{where}.{key}", minimum=1)
    return out


def _pricing(value: object, where: str) -> dict[str, dict[str, float]]:
    """{MODEL: {input, output, cache_write_5m, cache_write_1h, cache_read}}, any subset;
    a model the price table lacks needs at least input and output."""
    classes = ", ".join(CLASSES)
    if not isinstance(value, dict):
        raise ExprofError(f"{where}: must be a mapping of model to prices per class ({classes})")
    out: dict[str, dict[str, float]] = {}
    for model, prices in value.items():
        if not isinstance(prices, dict) or not prices:
            raise ExprofError(
                f"{where}.{model}: must be a mapping of one or more of {classes} to USD per MTok"
            )
        for key in prices:
            if key not in CLASSES:
                raise ExprofError(
                    f"{where}.{model}: unknown price class {str(key)!r}; the classes are {classes}"
                )
        if str(model) not in PRICES_PER_MTOK and not {"input", "output"} <= set(prices):
            raise ExprofError(
                f"{where}.{model}: not in exprof's price table, so both input and output are needed"
            )
        out[str(model)] = {
            k: float(_number(prices[k], f"{where}.{model}.{k}", 0.0, None)) for k in prices
        }
    return out


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_type(value)} {text}" if not isinstance(value, int | float) else text
