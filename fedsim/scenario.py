"""The scenario: a YAML file validated once, at the edge, into frozen typed models.

Unknown keys are errors (with the closest known key suggested), every key has a default and a
docstring (the scenario reference in ``docs/`` is generated from them), and every error names the key
path and the bad value in one line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fedsim.algorithms import AlgorithmConfig
from fedsim.algorithms.fedasync import FedAsyncConfig
from fedsim.algorithms.server_opt import ServerOptimizerConfig
from fedsim.availability import AlwaysAvailable, AvailabilityConfig, TraceAvailability
from fedsim.config_base import DefaultTag, Period, Section
from fedsim.devices import BuiltinDevices, DevicesConfig, ProfileDevices
from fedsim.errors import Problem, ScenarioError
from fedsim.learning.data import DataConfig
from fedsim.learning.models import Model, ModelConfig
from fedsim.learning.trainer import TrainingConfig
from fedsim.robust.aggregators import (
    AggregatorField,
    MeanConfig,
    ScreeningConfig,
    check_aggregator,
    is_plain_mean,
)
from fedsim.robust.byzantine import ByzantineConfig
from fedsim.rundir import SaveModels
from fedsim.timing import (
    ComputeLaw,
    DropoutConfig,
    ExponentialCompute,
    Heterogeneity,
    NetworkConfig,
    NoHeterogeneity,
    StragglerConfig,
)
from fedsim.topology import TopologyConfig
from fedsim.yamlio import KeyLines, load_yaml, read_yaml_file_lines

MAX_EVALS = 10_000_000
"""Most evaluations a run may schedule (stop.time_s / eval.every_s)."""


class StopConfig(Section):
    """When the run ends: whichever condition is met first (at least one must be set)."""

    time_s: PositiveFloat | None = 600.0
    """Simulated-time horizon, in seconds."""
    max_updates: PositiveInt | None = None
    """Stop after this many client updates were accepted (applied or buffered)."""
    target_accuracy: float | None = Field(None, gt=0, le=1)
    """Stop at the first evaluation reaching this test accuracy."""

    @model_validator(mode="after")
    def _some_condition(self) -> StopConfig:
        if self.time_s is None and self.max_updates is None and self.target_accuracy is None:
            raise ValueError("set at least one of time_s, max_updates, target_accuracy")
        return self


class ClientsConfig(Section):
    """The client population and its timing."""

    count: PositiveInt = 100
    """Number of clients."""
    compute: ComputeLaw = Field(default_factory=ExponentialCompute)
    """Per-job compute time law (seconds): constant | exponential | lognormal | uniform |
    shifted_exponential | pareto; with per_sample: true, the time per sample processed."""
    heterogeneity: Heterogeneity = Field(default_factory=NoHeterogeneity)
    """Fixed per-client speed multiplier: none | lognormal | uniform | classes | linear."""
    stragglers: StragglerConfig = Field(default_factory=StragglerConfig)
    """Slow clients (a fixed subset) and slow jobs (a per-job chance)."""
    dropout: DropoutConfig = Field(default_factory=DropoutConfig)
    """Jobs lost with no update."""
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    """Transfer time of the model, each way."""
    availability: AvailabilityConfig = Field(default_factory=AlwaysAvailable)
    """When clients are online: always | diurnal | markov | trace (offline clients are not
    dispatched; a client going offline loses its job, dropped with reason offline)."""
    devices: DevicesConfig = Field(default_factory=BuiltinDevices)
    """Each client's compute speed and bandwidth: builtin (heterogeneity and network) | profile
    (a device-profile file: FedScale's client_device_capacity or a CSV)."""

    @model_validator(mode="after")
    def _trace_readable(self) -> ClientsConfig:
        if isinstance(self.availability, TraceAvailability):
            self.availability.check()  # fedsim validate reports a bad trace file
        if isinstance(self.devices, ProfileDevices):
            self.devices.check()
            if not isinstance(self.heterogeneity, NoHeterogeneity):
                raise ScenarioError(
                    "clients.devices profile gives each client's speed; leave "
                    "clients.heterogeneity at none",
                    path="clients.heterogeneity",
                )
            if self.network.bandwidth_mbps is not None:
                raise ScenarioError(
                    "clients.devices profile gives each client's bandwidth; leave "
                    "clients.network.bandwidth_mbps at null",
                    path="clients.network.bandwidth_mbps",
                )
        return self


class EvalConfig(Section):
    """Evaluation of the global model on the held-out set (costs no simulated time)."""

    every_s: Period = 10.0
    """Simulated seconds between evaluations (one more is made at the end)."""


class OutputConfig(Section):
    """Where the run directory goes."""

    dir: str = Field("runs/{name}", min_length=1)
    """Run directory; ``{name}`` is replaced by the scenario name."""
    flush_rows: PositiveInt = 200_000
    """Trace rows kept in memory before a chunk is written to disk (they also go to disk at least
    every 10 wall-clock seconds)."""
    checkpoint_every_s: Period | None = None
    """Save the run's whole state to ``RUN_DIR/checkpoint.pkl`` every this many simulated
    seconds, for ``fedsim run --resume`` to go on from (null: no periodic checkpoint)."""
    checkpoint_every_wall_s: PositiveFloat | None = None
    """Also (or instead) every this many wall-clock seconds. With either key, Ctrl-C and SIGTERM
    save a checkpoint at the stop too."""
    checkpoint_max_overhead: float | None = Field(0.05, gt=0, le=1)
    """Skip a checkpoint due by checkpoint_every_s when saving it would take the wall time spent
    on checkpoints past this fraction of the run's wall time so far (a run with a large state
    that covers the interval in milliseconds, such as 100,000 clients timing-only, then saves less
    often than asked; summary.json counts checkpoints_skipped). null: never skip. Wall-clock and
    Ctrl-C checkpoints are never skipped."""
    save_models: SaveModels = "final"
    """Models kept in ``RUN_DIR/models/``: ``final`` (every server's last model, as a state dict
    ``server-S.pt`` that ``load_state_dict`` takes), ``every_eval`` (also one per evaluation, listed
    in ``models/evals.csv``) or ``none``."""


def _training_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    return value


def _check_server_optimizer(opt: ServerOptimizerConfig, algo: Any) -> None:
    """Only algorithms with a server step take a server optimiser (their config class says so
    with ``takes_server_optimizer``), and its ``lr`` is not given twice."""
    if opt.is_default:
        return
    if not getattr(type(algo), "takes_server_optimizer", False):
        raise ScenarioError(
            f"{algo.name} has no server step for a server optimiser; remove server_optimizer "
            "(fedavg, fedbuff, fedbuff_c, fedfix, async_fedavg, fedasync, fedast, sync_st, scaffold "
            "take it)",
            path="server_optimizer",
        )
    if opt.lr is None:
        return
    tasks = getattr(algo, "tasks", None) or []
    field = type(algo).model_fields.get("server_lr")  # its default: not set (scenario.yaml has it)
    own = field is not None and algo.server_lr != field.default
    if own or any(t.server_lr is not None for t in tasks):
        raise ScenarioError(
            "server_optimizer.lr and the algorithm's server_lr both set the server learning "
            "rate; keep one",
            path="server_optimizer.lr",
        )


class Scenario(Section):
    """A complete, validated simulation scenario."""

    json_shorthands: ClassVar[dict[str, Any]] = {
        "training": {"type": "string", "enum": ["none", "None", "NONE"]}
    }

    name: str = "scenario"
    """Name of the scenario (used in the run directory and plot titles)."""
    seed: int | None = Field(0, ge=0)
    """Root seed of every random stream; null draws one (and records it)."""
    stop: StopConfig = Field(default_factory=StopConfig)
    """Stop conditions."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Dataset and partition."""
    model: Model = Field(default_factory=ModelConfig)
    """Model trained by every client."""
    training: TrainingConfig | None = Field(default_factory=TrainingConfig)
    """Local training; ``none`` for a timing-only run (no model, no data)."""
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    """Clients and their timing."""
    algorithm: Annotated[
        AlgorithmConfig, Field(discriminator="name"), DefaultTag("name", "fedasync")
    ] = Field(default_factory=FedAsyncConfig)
    """Federated algorithm (name + its parameters)."""
    aggregator: AggregatorField = Field(default_factory=MeanConfig)
    """How updates are combined (FedAvg rounds, FedBuff buffers, FedAsync's window): mean or a robust aggregator."""
    server_optimizer: ServerOptimizerConfig = Field(default_factory=ServerOptimizerConfig)
    """The server's step on the aggregated update: sgd (the default: the algorithm's server_lr),
    momentum (FedAvgM), nesterov, adam, yogi or adagrad (FedOpt, Reddi et al. 2021)."""
    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    """Rejection of non-finite or absurd updates before aggregation."""
    byzantine: ByzantineConfig | None = None
    """Byzantine clients and their attack; null = every client is honest."""
    topology: TopologyConfig | None = None
    """Servers (or peers) and the graph linking them, for multi-server and decentralized
    algorithms; null = one server. With a topology, ``clients.count`` defaults to
    ``servers × clients_per_server`` (an explicit count must match it)."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation schedule."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Output location."""

    _source: Any = PrivateAttr(default=None)
    # Where the scenario was read from (a Source), set by load_scenario. A private attribute: it is
    # not a key, so it changes neither to_dict(), to_yaml() nor hash(), and model_copy keeps it.

    @property
    def source(self) -> Source | None:
        """Where this scenario came from: its file and the line of each key there, and the key
        paths set by overrides (None for a Scenario built directly, not by :func:`load_scenario`).
        Errors found after loading name ``FILE:LINE`` through it (:meth:`locate_error`)."""
        return self._source

    def locate_error(self, exc: ScenarioError) -> ScenarioError:
        """``exc`` with each of its problems that names a key but no place given the place of that
        key (``FILE:LINE:`` in the scenario file, or ``--set``), as validation errors are."""
        source = self._source
        if source is None:
            return exc
        problems = [source.relocate(p) for p in exc.problems]
        if problems == exc.problems:
            return exc
        return ScenarioError.of(problems, value=exc.value)

    def __eq__(self, other: object) -> bool:
        # Two scenarios with the same keys are equal wherever they were read from.
        if not isinstance(other, Scenario):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The name becomes a directory under runs/: it must stay one directory there.
        if not value.strip() or value in (".", "..") or any(c in value for c in "/\\\0"):
            raise ValueError(
                f"must be a non-empty name without '/', '\\' or '..' (it names the run "
                f"directory), got {json.dumps(value)}"
            )
        return value

    @field_validator("training", mode="before")
    @classmethod
    def _none_means_timing_only(cls, value: Any) -> Any:
        return _training_none(value)

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        algo = self.algorithm
        if self.topology is not None:
            wanted = self.topology.n_clients
            if "count" not in self.clients.model_fields_set:
                # Frozen model: rebuild the section with the count the topology implies.
                object.__setattr__(
                    self, "clients", self.clients.model_copy(update={"count": wanted})
                )
            elif self.clients.count != wanted:
                raise ValueError(
                    f"clients.count ({self.clients.count}) differs from the topology's "
                    f"{wanted} clients (servers × clients_per_server); drop clients.count or "
                    "make them agree"
                )
        if (
            algo.name == "fedbuff"
            and algo.buffer_size > algo.concurrency
            and algo.dispatch_policy == "after_aggregation"
        ):
            raise ValueError(
                f"algorithm.buffer_size ({algo.buffer_size}) > concurrency ({algo.concurrency}) "
                "with dispatch_policy after_aggregation never fills the buffer"
            )
        if self.training is None and self.clients.compute.per_sample:
            raise ScenarioError(
                "per_sample makes a job's time its samples × the law; a timing-only run "
                "(training: none) has no samples: set training or per_sample: false",
                path="clients.compute.per_sample",
            )
        stop = self.stop
        if self.training is None and stop.time_s is None and stop.max_updates is None:
            raise ScenarioError(
                "the only stop condition, but training is none (a timing-only run measures no "
                "accuracy, so it would never stop); set stop.time_s or stop.max_updates",
                path="stop.target_accuracy",
            )
        if stop.time_s is not None and stop.time_s / self.eval.every_s > MAX_EVALS:
            raise ScenarioError(
                f"{stop.time_s:g} s / {self.eval.every_s:g} s makes "
                f"{stop.time_s / self.eval.every_s:.3g} evaluations (at most {MAX_EVALS:,}); "
                "evaluate less often",
                path="eval.every_s",
            )
        self._check_byzantine()
        _check_server_optimizer(self.server_optimizer, algo)
        check = getattr(algo, "check_scenario", None)
        if check is not None:  # an algorithm's own cross-section rules (so `validate` sees them)
            check(self)
        agg = self.aggregator
        if not is_plain_mean(agg):
            if algo.name in ("fedbuff", "fedbuff_c"):
                n = algo.buffer_size
            elif algo.name in ("fedavg", "scaffold"):
                n = algo.cohort_size
            else:
                n = self.byzantine.window if self.byzantine is not None else 10
            check_aggregator(agg, n)
        return self

    def _check_byzantine(self) -> None:
        """At least one honest client (server-side attacks imitate the honest rows), and listed
        clients exist."""
        byz = self.byzantine
        if byz is None:
            return
        n = self.clients.count
        if byz.clients is not None:
            bad = [c for c in byz.clients if c >= n]
            if bad:
                raise ScenarioError(
                    f"client index {bad[0]} out of range (clients.count {n})",
                    path="byzantine.clients",
                )
            if len(set(byz.clients)) >= n:
                raise ScenarioError(
                    f"all {n} clients are listed: at least one must stay honest",
                    path="byzantine.clients",
                )
        elif round(byz.fraction * n) >= n:
            raise ScenarioError(
                f"{byz.fraction:g} of {n} clients makes all {n} Byzantine (round(fraction·count)); "
                f"at most {n - 1} may be, so keep fraction below {(n - 0.5) / n:g}",
                path="byzantine.fraction",
            )

    # -- derived -----------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir.replace("{name}", self.name))

    def to_dict(self) -> dict[str, Any]:
        """Every key, defaults filled, in YAML-ready form (re-loading it gives the same scenario)."""
        data = self.model_dump(mode="json", by_alias=True)
        if data["training"] is None:
            data["training"] = "none"
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """Content hash of everything that affects results (the output section excluded)."""
        data = self.to_dict()
        data.pop("output", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Loading, overrides, and error messages


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a scenario file (see :mod:`fedsim.yamlio` for the limits applied), its
    relative file paths made absolute against the file's folder (:func:`resolve_paths`)."""
    return read_yaml_lines(path)[0]


def read_yaml_lines(path: str | Path) -> tuple[dict[str, Any], KeyLines]:
    """:func:`read_yaml` and the line of each key in the file (for errors naming ``FILE:LINE``)."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file not found: {path}")
    data, lines = read_yaml_file_lines(path, "scenario file")
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{path}: a scenario must be a mapping of keys, got {type(data).__name__}"
        )
    return resolve_paths(data, path.parent), lines


PATH_KEYS = (
    "data.path",
    "data.cache_dir",
    "topology.graph.path",
    "topology.mixing.path",
    "clients.availability.path",
    "clients.devices.path",
)
"""Keys naming a local file or folder. A relative path is made absolute when the scenario is loaded:
against the scenario file's folder for a value in the file, against the working directory for a
value in a mapping or an override (:func:`resolve_paths`). ``output.dir`` is not one of them: a run
directory goes where the command runs."""
TARGET_KEYS = (
    "data.target",
    "model.target",
    "algorithm.name",
    "aggregator.target",
    "byzantine.attack.target",
)
"""Keys naming a target; the file of a ``path/to/file.py:name`` target is resolved like
:data:`PATH_KEYS` (a ``module.path:name`` target is left as it is)."""


def absolute_path(value: str, base_dir: str | Path) -> str:
    """``value`` (``~`` expanded) as an absolute, normalised path; relative to ``base_dir``."""
    path = os.path.expanduser(value)
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), path))


def _absolute_target(value: str, base_dir: str | Path) -> str:
    head, sep, attr = value.strip().rpartition(":")
    if not sep or not head.endswith(".py"):
        return value
    return f"{absolute_path(head, base_dir)}:{attr}"


def resolve_paths(data: dict[str, Any], base_dir: str | Path) -> dict[str, Any]:
    """``data`` (a scenario mapping) with the relative paths of :data:`PATH_KEYS` and
    :data:`TARGET_KEYS` made absolute against ``base_dir``; a copy along the changed paths only.

    A file-reading variant that takes its file's default (``from_file`` graph or mixing without
    ``path``: ``edges.txt``, ``mixing.txt``) gets that default resolved too, so a relative path
    means the same whether it was written or left out. Values that are not non-empty strings are
    left for validation to refuse.
    """
    result = dict(data)
    for key in (*PATH_KEYS, *TARGET_KEYS):
        parts = key.split(".")
        node: Any = result
        chain = [node]
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
            chain.append(node)
        else:
            leaf = parts[-1]
            value = node.get(leaf)
            if value is None and leaf not in node:
                model = _section_at(".".join(parts[:-1]), result)
                field = model.model_fields.get(leaf) if model is not None else None
                value = field.default if field is not None else None
            if not isinstance(value, str) or not value.strip():
                continue
            if key in TARGET_KEYS:
                resolved = _absolute_target(value, base_dir)
            else:
                resolved = absolute_path(value, base_dir)
            if resolved == value:
                continue
            # Copy each mapping on the way down (shared, aliased parts elsewhere stay shared).
            parent = result
            for part in parts[:-1]:
                parent[part] = dict(parent[part])
                parent = parent[part]
            parent[leaf] = resolved
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """``"clients.count=50"`` → ``("clients.count", 50)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ScenarioError(f"override must look like key.path=value, got {text!r}")
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path:
        raise ScenarioError(f"override has an empty key path: {text!r}")
    try:
        value = load_yaml(raw, f"--set {path}") if raw.strip() else None
    except ScenarioError as exc:
        if "YAML syntax error" not in str(exc):
            raise
        value = raw
    return path, value


TAG_KEYS = ("name", "dist", "kind")


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted key paths in a nested dict (a copy). Paths are checked by validation afterwards.

    Changing a variant's tag (``algorithm.name=fedavg``, ``clients.compute.dist=pareto``) drops the
    keys the file gave for the old variant that the new one does not have, so sweeps can switch
    algorithms; the tag overrides are applied first, then the others.
    """
    for path, value in overrides.items():
        if value is None or _training_none(value) is None:
            below = next((p for p in overrides if p.startswith(f"{path}.")), None)
            if below is not None:
                raise _override_error(
                    f"one override sets it to {'null' if value is None else value}, another sets "
                    f"{below}; drop one of them",
                    path,
                )
    result = dict(
        data
    )  # copied along each override's path only: shared (aliased) parts stay shared
    ordered = sorted(overrides.items(), key=lambda kv: kv[0].rsplit(".", 1)[-1] not in TAG_KEYS)
    for path, value in ordered:
        node = result
        parts = path.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None or (isinstance(child, str) and part == "training"):
                child = {}
            if isinstance(child, dict):
                child = node[part] = dict(child)
            else:
                where = ".".join(parts[: i + 1])
                raise _override_error(f"{where} is not a section, so {path} does not exist", path)
            node = child
        key = parts[-1]
        changed_tag = key in TAG_KEYS and key in node and node[key] != value
        node[key] = value
        if changed_tag:
            known = _known_keys(".".join(parts[:-1]), result)
            for stale in [k for k in node if known and k not in known]:
                del node[stale]
    return result


@dataclass(frozen=True)
class Source:
    """Where the keys of a scenario came from, to name them in errors: the file (and the line of
    each of its keys) and the key paths set by overrides."""

    file: str | None = None
    lines: KeyLines = dataclass_field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def locate(self, message: str, path: str | None) -> Problem:
        """The problem ``message`` about the key at ``path`` (dotted), with where it was given."""
        parts = tuple(path.split(".")) if path else ()
        for given in self.overrides:
            over = tuple(given.split("."))
            if parts[: len(over)] == over:
                return Problem(message, path, override=True)
        if self.file is None:
            return Problem(message, path)
        for n in range(len(parts), 0, -1):  # the key, or its closest section in the file
            line = self.lines.get(parts[:n])
            if line is not None:
                return Problem(message, path, self.file, line)
        return Problem(message, path, self.file)

    def relocate(self, problem: Problem) -> Problem:
        """``problem`` with where its key was given, when it names a key but no place yet."""
        if problem.file is not None or problem.override or not problem.path:
            return problem
        return self.locate(problem.message, problem.path)


def load_scenario(
    source: str | Path | Mapping[str, Any] | Scenario,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    base_dir: str | Path | None = None,
) -> Scenario:
    """A validated Scenario from a path, a dict or a Scenario, with dotted-path overrides.

    Every validation error is reported at once (:attr:`ScenarioError.problems`), each naming the
    file and line of its key when it came from a file, or the ``--set`` override that gave it.
    The scenario remembers where it came from (:attr:`Scenario.source`; a Scenario given as
    ``source`` passes its own on), so errors found later name the same places.

    Relative paths (:data:`PATH_KEYS`, :data:`TARGET_KEYS`) are made absolute here: against the
    scenario file's folder for the file's values, against ``base_dir`` (default: the working
    directory) for a mapping's values and for overrides. Everything downstream, and the
    ``scenario.yaml`` a run saves, sees absolute paths.
    """
    lines: KeyLines = {}
    file = None
    given: tuple[str, ...] = ()
    if isinstance(source, Scenario):
        data = source.to_dict()
        if source.source is not None:
            file, lines, given = source.source.file, source.source.lines, source.source.overrides
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data, lines = read_yaml_lines(source)  # its relative paths: against its folder
        file = str(source)
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = dict(parse_override(o) for o in overrides)
        given = (*given, *(k for k in overrides if k not in given))
        data = apply_overrides(data, overrides)
        for path in overrides:
            _check_override_path(path, data)
    data = resolve_paths(data, Path.cwd() if base_dir is None else Path(base_dir))
    where = Source(file, lines, given)
    from fedsim.plugins import ensure_algorithm

    try:
        ensure_algorithm(data)  # plugins, and an algorithm named by its target
    except ScenarioError as exc:
        problems = [where.relocate(p) for p in exc.problems]
        raise ScenarioError.of(problems, value=exc.value) from None
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise scenario_error(exc, data, where) from None
    scenario._source = where
    return scenario


def scenario_error(exc: ValidationError, data: Any, source: Source | None = None) -> ScenarioError:
    """Every validation error, one problem per key path (the first error of each), each naming
    the key path and value, and where the key was given (``source``). Problems are in the order
    of their lines in the file, then those with no line in pydantic's order."""
    source = source or Source()
    problems: list[Problem] = []
    values: list[Any] = []
    seen: set[str | None] = set()
    for err in exc.errors(include_url=False):
        message, path, value = _describe(err, data)
        if path in seen:  # several union members failing on one key: its first error says it
            continue
        seen.add(path)
        problems.append(source.locate(message, path))
        values.append(value)
    order = sorted(
        range(len(problems)),
        key=lambda i: (problems[i].line is None, problems[i].line or 0, i),
    )
    return ScenarioError.of([problems[i] for i in order], value=values[order[0]])


def _describe(err: Any, data: Any) -> tuple[str, str | None, Any]:
    """One pydantic error as (message, dotted key path, bad value)."""
    path, _node = _user_path(err["loc"], data)
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    raised = ctx.get("error")
    if isinstance(raised, ScenarioError) and not path and raised.path:
        # A model-level rule that names the key itself (Scenario._cross_checks).
        return raised.message, raised.path, raised.value
    if kind == "extra_forbidden":
        key = path.rsplit(".", 1)[-1]
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        known = _known_keys(parent, data)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key{hint} (known: {', '.join(known)})", path, key
    if kind == "union_tag_invalid":
        tags = ctx.get("expected_tags", "")
        tag_key = ctx.get("discriminator", "").strip("'")
        full = f"{path}.{tag_key}" if path else tag_key
        return f"unknown name {ctx.get('tag')!r}; known: {tags.replace(chr(39), '')}", full, None
    if kind == "missing":
        # pydantic's loc ends with the missing key, which the user's data cannot contain.
        key = str(err["loc"][-1])
        return "required: this key has no default", f"{path}.{key}" if path else key, None
    if kind == "union_tag_not_found":
        tag_key = ctx.get("discriminator", "").strip("'")
        return f"missing key {tag_key!r}", path, None
    messages = {
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "literal_error": lambda: f"must be one of {ctx.get('expected', '').replace(chr(39), '')}",
        "int_parsing": lambda: "must be an integer",
        "int_from_float": lambda: "must be an integer",
        "float_parsing": lambda: "must be a number",
        "float_type": lambda: "must be a number",
        "int_type": lambda: "must be an integer",
        "bool_parsing": lambda: "must be true or false",
        "string_type": lambda: "must be a string",
        "list_type": lambda: "must be a list",
        "model_type": lambda: "must be a mapping of keys",
        "model_attributes_type": lambda: "must be a mapping of keys",
        "dict_type": lambda: "must be a mapping of keys",
        "finite_number": lambda: "must be a finite number",
        "string_too_short": lambda: "must not be empty",
    }
    if kind in messages:
        message = messages[kind]()
    else:
        message = str(err["msg"])
        message = message.removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
    shown = _show(value)
    suffix = "" if kind == "value_error" or shown is None else f", got {shown}"
    return f"{message}{suffix}", path or None, value


def _show(value: Any) -> str | None:
    if isinstance(value, dict):
        return None
    text = json.dumps(value) if isinstance(value, (str, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _user_path(loc: tuple[Any, ...], data: Any) -> tuple[str, Any]:
    """The key path the user wrote: ``loc`` without pydantic's union-member and tag entries."""
    parts: list[str] = []
    node = data
    for item in loc:
        if (isinstance(node, dict) and item in node) or (
            isinstance(node, list) and isinstance(item, int) and item < len(node)
        ):
            parts.append(str(item))
            node = node[item]
    return ".".join(parts), node


def _check_override_path(path: str, data: Any) -> None:
    """An override must name an existing key: say which part of its path is wrong."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        known = _known_keys(parent, data)
        if not known:
            raise _override_error(f"{parent} is not a section, so {path} does not exist", path)
        if part not in known:
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = ".".join(parts[: i + 1])
            raise _override_error(f"unknown key{hint} (known: {', '.join(known)})", where)


def _override_error(message: str, path: str) -> ScenarioError:
    """An error about an override's key path: ``--set key.path: message``."""
    return ScenarioError.of([Problem(message, path, override=True)])


def _known_keys(parent_path: str, data: Any) -> list[str]:
    """Field names (by alias) of the section at ``parent_path`` of the scenario."""
    model = _section_at(parent_path, data)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _section_at(parent_path: str, data: Any) -> Any:
    """The Section class of the section at ``parent_path`` of the scenario mapping ``data`` (the
    variant its tag names), or None where the path names no section."""
    model: Any = Scenario
    node = data
    for part in [p for p in parent_path.split(".") if p]:
        node = node.get(part) if isinstance(node, dict) else None
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _section_type(field.annotation, node, field.metadata)
        if model is None:
            return None
    return model


def _section_type(annotation: Any, node: Any, metadata: Iterable[Any] = ()) -> Any:
    """The Section class of a field, choosing the union member that matches ``node``'s tag."""
    import typing

    candidates = []
    default_tag = next((m for m in metadata if isinstance(m, DefaultTag)), None)

    def walk(t: Any) -> None:
        nonlocal default_tag
        origin = typing.get_origin(t)
        if origin is typing.Annotated:
            for meta in t.__metadata__:
                if isinstance(meta, DefaultTag):
                    default_tag = meta
            walk(typing.get_args(t)[0])
        elif origin in (typing.Union, __import__("types").UnionType):
            for arg in typing.get_args(t):
                walk(arg)
        elif isinstance(t, type) and issubclass(t, Section):
            candidates.append(t)

    walk(annotation)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    for cls in candidates:
        for tag in ("name", "dist", "kind"):
            field = cls.model_fields.get(tag)
            if field is not None and isinstance(node, dict) and node.get(tag) == field.default:
                return cls
    if default_tag is not None:  # untagged input: the default member
        for cls in candidates:
            if cls.model_fields[default_tag.key].default == default_tag.default:
                return cls
    return candidates[0]
