"""Your own aggregator or attack: a function named by a target, or registered under a name.

Two ways to bring one, both checked when the scenario is validated:

- by target, in the scenario: ``aggregator: {name: custom, target: "pkg.mod:fn", kwargs: {...}}``
  and ``byzantine.attack: {name: custom, target: "pkg.mod:fn", stage: client, kwargs: {...}}``
  (``path/to/file.py:fn`` targets too);
- by name, registered by a package (:func:`fedsim.plugins.register_aggregator`,
  :func:`fedsim.plugins.register_attack`): ``aggregator: {name: my_agg, kwargs: {...}}``. Each
  registered name gets its own tagged config, so ``fedsim schema`` and the one-line errors know it.

The functions are called exactly like the built-ins:

- aggregator: ``fn(updates [n, d], weights [n], **kwargs) -> [d]``; ``weights`` are float64,
  non-negative and need not sum to one (uniform ones where the caller gave none);
- client-side attack: ``fn(delta [d], w_start [d], generator, **kwargs) -> [d]``, the delta the
  Byzantine client sends; ``generator`` is a ``torch.Generator`` seeded per job;
- server-side attack: ``fn(honest [h, d], n_total=..., f=..., **kwargs) -> [d]``, the vector every
  Byzantine slot of the aggregation sends.

At validation the function is resolved and probed once on a tiny input (:data:`PROBE_ROWS` rows of
:data:`PROBE_DIM` coordinates, float32, with the scenario's ``kwargs``); a target that does not
exist, is not callable, raises on the probe or returns anything but a floating ``[d]`` tensor is a
one-line error naming ``aggregator.target`` / ``byzantine.attack.target`` (``.kwargs`` for a
registered name). During a run, a function that raises or returns a wrong shape raises
:class:`PluginFailure`, which the simulation reports as a ``SimulationError`` with the simulated
time (the trace recorded so far is kept).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.imports import describe_error, resolve_target
from fedsim.robust.preaggregators import AggregatorSection, PreAggregatorField

PROBE_ROWS = 11
"""Rows of the probe an aggregator or server-side attack is called on at validation (enough for
Krum-like rules with f up to 4)."""
PROBE_DIM = 3
"""Coordinates of every probe vector."""

AGGREGATOR_TARGET = "aggregator.target"
ATTACK_TARGET = "byzantine.attack.target"


class PluginFailure(RuntimeError):
    """A user's aggregator or attack raised, or returned something unusable, during a run.

    Its ``repr`` is its message, so the simulation's ``run failed at simulated time T s: ...``
    line reads as one sentence.
    """

    def __repr__(self) -> str:
        return str(self)


# --------------------------------------------------------------------------------------------------
# Resolving and calling


_RESOLVED: dict[str, Callable[..., Any]] = {}
"""target → function, filled at validation (a run in another process resolves it again)."""


def resolve_function(target: str, *, key: str) -> Callable[..., Any]:
    """The callable ``target`` names; a one-line ScenarioError at ``key`` otherwise."""
    fn = resolve_target(target, key=key)
    if not callable(fn):
        raise ScenarioError(
            f"{target!r} is not callable (a {type(fn).__name__})", path=key, value=target
        )
    _RESOLVED[target] = fn
    return fn


def _function_at(target: str, key: str) -> Callable[..., Any]:
    fn = _RESOLVED.get(target)
    return fn if fn is not None else resolve_function(target, key=key)


def _vector(out: Any, d: int, like: Tensor, where: str) -> Tensor:
    """``out`` as a ``[d]`` tensor of ``like``'s dtype and device; PluginFailure otherwise."""
    if not isinstance(out, Tensor):
        raise PluginFailure(f"{where} returned a {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != (d,):
        raise PluginFailure(f"{where} returned shape {tuple(out.shape)}, expected ({d},)")
    if not out.is_floating_point():
        raise PluginFailure(f"{where} returned {out.dtype}, expected a floating point tensor")
    return out.to(device=like.device, dtype=like.dtype)


def _call(where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise PluginFailure(f"{where} raised {describe_error(exc)}") from exc


def call_aggregator(
    fn: Callable[..., Any],
    where: str,
    updates: Tensor,
    weights: Tensor | None,
    kwargs: dict[str, Any],
) -> Tensor:
    """``fn(updates, weights, **kwargs)`` checked to be a ``[d]`` vector."""
    if weights is None:
        weights = torch.ones(updates.shape[0], dtype=torch.float64, device=updates.device)
    out = _call(where, fn, updates, weights, **kwargs)
    return _vector(out, updates.shape[1], updates, where)


def call_client_attack(
    fn: Callable[..., Any],
    where: str,
    delta: Tensor,
    w_start: Tensor,
    generator: torch.Generator | None,
    kwargs: dict[str, Any],
) -> Tensor:
    """``fn(delta, w_start, generator, **kwargs)`` checked to be a ``[d]`` vector."""
    out = _call(where, fn, delta, w_start, generator, **kwargs)
    return _vector(out, delta.shape[0], delta, where)


def call_server_attack(
    fn: Callable[..., Any],
    where: str,
    honest: Tensor,
    n_total: int,
    f: int,
    kwargs: dict[str, Any],
) -> Tensor:
    """``fn(honest, n_total=n_total, f=f, **kwargs)`` checked to be a ``[d]`` vector."""
    out = _call(where, fn, honest, n_total=n_total, f=f, **kwargs)
    return _vector(out, honest.shape[1], honest, where)


def _probe(kind: str, fn: Callable[..., Any], where: str, kwargs: dict[str, Any]) -> None:
    """Call ``fn`` once on a tiny deterministic input (the global RNG is left as it was); raise a
    ValueError (one line) when it raises or returns anything but a ``[PROBE_DIM]`` vector."""
    where = f"{where} (probed with {_probe_text(kind)})"
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(0)
        rows = torch.randn(PROBE_ROWS, PROBE_DIM, generator=gen)
        try:
            if kind == "aggregator":
                weights = torch.ones(PROBE_ROWS, dtype=torch.float64)
                call_aggregator(fn, where, rows, weights, kwargs)
            elif kind == "client":
                call_client_attack(fn, where, rows[0], rows[1], gen, kwargs)
            else:
                call_server_attack(fn, where, rows[:4], 6, 2, kwargs)
        except PluginFailure as exc:
            raise ValueError(str(exc)) from None


def _probe_text(kind: str) -> str:
    if kind == "aggregator":
        return f"updates [{PROBE_ROWS}, {PROBE_DIM}], weights [{PROBE_ROWS}]"
    if kind == "client":
        return f"delta [{PROBE_DIM}], w_start [{PROBE_DIM}], a generator"
    return f"honest [4, {PROBE_DIM}], n_total=6, f=2"


def _check_target(value: str, info: ValidationInfo, key: str, kind: str) -> str:
    kwargs = info.data.get("kwargs")
    if kwargs is None:  # the kwargs were refused: that is the error to read
        return value
    if kind == "attack":
        kind = info.data.get("stage")
        if kind is None:
            return value
    try:
        fn = resolve_function(value, key=key)
    except ScenarioError as exc:
        raise ValueError(exc.message) from None
    _probe(kind, fn, repr(value), kwargs)
    return value


# --------------------------------------------------------------------------------------------------
# By target


class CustomAggregatorConfig(AggregatorSection):
    """Your own aggregator: the function target names, called as fn(updates [n, d], weights [n], **kwargs) -> [d]."""

    name: Literal["custom"] = "custom"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the function on every call."""
    target: str = "fedsim.robust.aggregators:mean"
    """The function: module.path:name (importable) or path/to/file.py:name. Resolved and probed on a tiny input when the scenario is validated."""

    @field_validator("target")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return _check_target(value, info, AGGREGATOR_TARGET, "aggregator")

    def where(self) -> str:
        return f"{AGGREGATOR_TARGET} {self.target!r}"

    def function(self) -> Callable[..., Any]:
        return _function_at(self.target, AGGREGATOR_TARGET)


class CustomAttackConfig(Section):
    """Your own attack: the function target names; client side fn(delta [d], w_start [d], generator, **kwargs) -> [d], server side fn(honest [h, d], n_total=, f=, **kwargs) -> [d]."""

    name: Literal["custom"] = "custom"
    stage: Literal["client", "server"] = "client"
    """client: run where the Byzantine client trains, on its own delta; server: one vector from the honest rows of each aggregation, sent in every Byzantine slot."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the function on every call."""
    target: str = "fedsim.robust.attacks:sign_flip"
    """The function: module.path:name (importable) or path/to/file.py:name. Resolved and probed on a tiny input when the scenario is validated."""

    @field_validator("target")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return _check_target(value, info, ATTACK_TARGET, "attack")

    def where(self) -> str:
        return f"{ATTACK_TARGET} {self.target!r}"

    def function(self) -> Callable[..., Any]:
        return _function_at(self.target, ATTACK_TARGET)


# --------------------------------------------------------------------------------------------------
# By name (registered by a plugin)


REGISTERED_SOURCES: dict[str, dict[str, str]] = {"aggregators": {}, "attacks": {}}
"""kind → registered name → where it came from (``python``, ``entry point DIST``)."""


class _RegisteredConfig(Section):
    """Base of the config of a function registered by name: one subclass per registered name,
    whose ``kwargs`` are probed on the function at validation."""

    registry: ClassVar[Literal["aggregators", "attacks"]]
    label: ClassVar[str]
    name: str = ""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the function on every call."""

    function_: ClassVar[Callable[..., Any]]

    @classmethod
    def _stage(cls) -> str:
        return cls.label

    @field_validator("kwargs")
    @classmethod
    def _probe_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        _probe(cls._stage(), cls.function_, cls._where(), value)
        return value

    @classmethod
    def _where(cls) -> str:
        name = typing.get_args(cls.model_fields["name"].annotation)[0]
        source = REGISTERED_SOURCES[cls.registry].get(name, "python")
        return f"{cls.label} {name!r} ({source})"

    def where(self) -> str:
        return self._where()

    def function(self) -> Callable[..., Any]:
        return type(self).function_

    def __reduce__(self) -> tuple[Any, ...]:
        # the class is made at registration: pickle the name, look it up again when loaded
        return (_registered, (self.registry, self.name, self.kwargs))


class RegisteredAggregatorConfig(_RegisteredConfig):
    """Base of the config of an aggregator registered by name (one subclass per name)."""

    registry: ClassVar[Literal["aggregators", "attacks"]] = "aggregators"
    label: ClassVar[str] = "aggregator"
    pre: list[PreAggregatorField] = Field(default_factory=list)
    """Pre-aggregators applied in order before the aggregator ([] = none; see the built-in aggregators' pre)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_registered, (self.registry, self.name, self.kwargs, self.pre))


class RegisteredAttackConfig(_RegisteredConfig):
    """Base of the config of an attack registered by name (one subclass per name)."""

    registry: ClassVar[Literal["aggregators", "attacks"]] = "attacks"
    label: ClassVar[str] = "attack"
    stage: ClassVar[Literal["client", "server"]] = "client"

    @classmethod
    def _stage(cls) -> str:
        return cls.stage


def _registered(kind: str, name: str, kwargs: dict[str, Any], pre: list | None = None) -> Section:
    """The registered config ``name`` (after loading the entry points, in a fresh process)."""
    from fedsim.plugins import load_entry_points
    from fedsim.robust.aggregators import AGGREGATOR_CONFIGS
    from fedsim.robust.attacks import ATTACK_CONFIGS

    load_entry_points()
    configs = AGGREGATOR_CONFIGS if kind == "aggregators" else ATTACK_CONFIGS
    if name not in configs:
        raise ScenarioError(f"{name!r} is not registered here (its plugin is not installed?)")
    return configs[name](kwargs=kwargs, **({"pre": pre} if pre else {}))


FunctionAggregator = CustomAggregatorConfig | RegisteredAggregatorConfig
FunctionAttack = CustomAttackConfig | RegisteredAttackConfig


def _class_name(name: str, suffix: str) -> str:
    parts = re.split(r"[^0-9A-Za-z]+", name)
    return "".join(p[:1].upper() + p[1:] for p in parts if p) + suffix


def _doc(fn: Callable[..., Any], fallback: str) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else fallback


def config_for(
    kind: Literal["aggregators", "attacks"],
    name: str,
    fn: Callable[..., Any],
    stage: Literal["client", "server"] = "client",
) -> type[Section]:
    """A tagged config class for the function ``fn`` registered as ``name``."""
    base: type[Section] = (
        RegisteredAggregatorConfig if kind == "aggregators" else RegisteredAttackConfig
    )
    what = "aggregator" if kind == "aggregators" else f"{stage}-side attack"
    namespace: dict[str, Any] = {
        "__annotations__": {"name": Literal[name]},  # type: ignore[valid-type]
        "__doc__": _doc(fn, f"The {what} {name!r}, registered by a plugin."),
        "__module__": getattr(fn, "__module__", None) or __name__,
        "name": name,
        "function_": staticmethod(fn),
    }
    if kind == "attacks":
        namespace["stage"] = stage
    return type(_class_name(name, "Config"), (base,), namespace)
