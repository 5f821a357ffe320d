"""Loading and validating the YAML experiment config (docs/SPEC.md, "Config"): the
Config, its top-level keys and the rules across them. The YAML itself, the matrix, the
sections and the single values are checked in the config_* modules."""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from exprof import knobs
from exprof.config_matrix import NAMED_MATRIX_KEYS, parse_matrix
from exprof.config_sections import (
    CACHE_WITH_TOOLS,
    TOOL_KEYS,
    check_budget,
    parse_pricing,
    parse_rate_limit,
    parse_tools_section,
)
from exprof.config_values import (
    check_choices,
    check_integer,
    check_number,
    check_string,
    describe,
    resolve_lazily,
    resolve_path,
)
from exprof.config_yaml import load_mapping
from exprof.errors import ExprofError
from exprof.metric_specs import (
    DEFAULT_METRIC_TIMEOUT_S,
    SpecContext,
    parse_metrics,
    with_schema_metric,
)
from exprof.pricing import require_prices
from exprof.tool_specs import DEFAULT_MAX_TURNS, DEFAULT_TOOL_TIMEOUT_S

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


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return _validate(load_mapping(path), path)


def load_rescore_config(path: str | Path, recorded: dict[str, Any]) -> Config:
    """`rescore --config FILE`: FILE's RESCORE_KEYS over the source run's recorded config.
    FILE may hold only those keys; a whole config is checked as one, and its other keys
    are ignored, since they cannot change recorded answers."""
    path = Path(path)
    raw = load_mapping(path)
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
        out["pricing"] = parse_pricing(raw["pricing"], f"{path}: pricing")
    return Config.from_dict(out)


def _validate(raw: dict[Any, Any], path: Path) -> Config:
    known = REQUIRED_KEYS + OPTIONAL_KEYS
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ExprofError(f"{path}: unknown key {str(key)!r}{suggestion}")
    matrix = (
        parse_matrix(raw["matrix"], f"{path}: matrix", path.parent) if "matrix" in raw else None
    )
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
    out["model"] = check_string(raw["model"], where("model"))
    out["max_tokens"] = check_integer(raw["max_tokens"], where("max_tokens"), minimum=1)
    for key in knobs.KNOBS:
        if key in raw:
            out[key] = knobs.parse(key, raw[key], where(key), path.parent)
        else:  # the matrix's first value stands in, as for model and max_tokens
            out[key] = matrix[key][0] if matrix and key in matrix else None
    dataset_value = check_string(raw["dataset_path"], where("dataset_path"))
    dataset = resolve_path(dataset_value, path.parent, where("dataset_path"))
    out["dataset_path"] = str(dataset)
    mock_value = raw.get("mock_responses_path")
    if mock_value is None:
        out["mock_responses_path"] = str(dataset.parent / "mock_responses.json")
    else:
        mock_value = check_string(mock_value, where("mock_responses_path"))
        out["mock_responses_path"] = str(resolve_lazily(mock_value, path.parent))

    if "log_schema_version" in raw:
        out["log_schema_version"] = check_integer(
            raw["log_schema_version"], where("log_schema_version"), minimum=1, maximum=1
        )
    if "output_fields" in raw:
        out["output_fields"] = check_choices(
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
        out["concurrency"] = check_integer(raw["concurrency"], where("concurrency"), minimum=1)
    if "max_retries" in raw:
        out["max_retries"] = check_integer(raw["max_retries"], where("max_retries"), minimum=0)
    if "timeout_s" in raw:
        out["timeout_s"] = check_number(raw["timeout_s"], where("timeout_s"), 0.001, None)
    if "metric_timeout_s" in raw:
        limit = check_number(raw["metric_timeout_s"], where("metric_timeout_s"), 0.001, 86400.0)
        out["metric_timeout_s"] = float(limit)
    if "api_version" in raw:
        out["api_version"] = check_string(raw["api_version"], where("api_version"))
    if "pricing" in raw:
        out["pricing"] = parse_pricing(raw["pricing"], where("pricing"))
    if "batch" in raw:
        if not isinstance(raw["batch"], bool):
            raise ExprofError(
                f"{where('batch')}: must be true or false, got {describe(raw['batch'])}"
            )
        out["batch"] = raw["batch"]
    if "batch_poll_s" in raw:
        out["batch_poll_s"] = check_number(raw["batch_poll_s"], where("batch_poll_s"), 0.001, None)
    if "rate_limit" in raw:
        out["rate_limit"] = parse_rate_limit(raw["rate_limit"], where("rate_limit"))
    if "repeats" in raw:
        out["repeats"] = check_integer(raw["repeats"], where("repeats"), 1, MAX_REPEATS)
    if "cache" in raw:
        if not isinstance(raw["cache"], bool):
            raise ExprofError(f"{where('cache')}: must be true or false, got {raw['cache']!r}")
        out["cache"] = raw["cache"]
    if "budget_usd" in raw:
        out["budget_usd"] = check_budget(raw["budget_usd"], where("budget_usd"))
    out.update(parse_tools_section(raw, path))
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


def config_models(config: Config) -> list[str]:
    """Every model a config sends to: its own, and each its matrix varies."""
    return list(dict.fromkeys([config.model, *(config.matrix or {}).get("model", [])]))


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
        changes["repeats"] = check_integer(repeats, "--repeats", 1, MAX_REPEATS)
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
