"""Plugins: algorithms from outside fedsim, by target or by a package's entry point.

Three ways to bring an algorithm, all giving it the same validation and one-line errors as the
built-ins:

- in a scenario, by target: ``algorithm: {name: "my_pkg.algos:MyAlgo", ...}`` (or
  ``path/to/algos.py:MyAlgo``, relative to the scenario file);
- in Python: ``fedsim.plugins.register_algorithm(MyAlgo)``, then ``algorithm: {name: my_algo}``;
- in a package: an entry point in the group ``fedsim.plugins`` naming the class, or a function
  ``register(plugins)`` that calls :func:`register_algorithm`. They are loaded the first time a
  scenario is read (and by ``fedsim list`` and ``fedsim schema``).

A ``register(plugins)`` function may also add aggregators and attacks by name
(:func:`register_aggregator`, :func:`register_attack`: ``aggregator: {name: my_agg}``); a scenario
can name any such function by target without registering it (``aggregator: {name: custom, target:
"pkg.mod:fn"}``, see :mod:`fedsim.robust.custom`).

An algorithm class derives from :class:`fedsim.algorithms.base.Algorithm`, sets ``name`` and
``config_class``: a :class:`fedsim.config_base.Section` whose ``name`` field is a ``Literal`` of that
name. The scenario's ``algorithm`` section is the union of every registered config, so a plugin's
keys are checked, documented by ``fedsim schema`` and reported with ``FILE:LINE:`` like any other.
"""

from __future__ import annotations

import importlib.metadata
import typing
from typing import Any, Literal

from pydantic import create_model

from fedsim.errors import ScenarioError

ENTRY_POINT_GROUP = "fedsim.plugins"
SOURCES: dict[str, str] = {}
"""Where each registered algorithm came from (``fedsim``, ``entry point DIST``, ``target``, ...)."""
_entry_points_loaded = False


def _algorithms() -> dict[str, type]:
    from fedsim.algorithms import ALGORITHMS

    return ALGORITHMS


def _check_class(cls: Any, key: str) -> None:
    from fedsim.algorithms.base import Algorithm
    from fedsim.config_base import Section

    what = getattr(cls, "__qualname__", repr(cls))
    if not isinstance(cls, type) or not issubclass(cls, Algorithm):
        raise ScenarioError(
            f"{what} is not a subclass of fedsim.algorithms.base.Algorithm", path=key
        )
    config = getattr(cls, "config_class", None)
    if not isinstance(config, type) or not issubclass(config, Section):
        raise ScenarioError(
            f"{what}.config_class must be a fedsim.config_base.Section subclass", path=key
        )
    if "name" not in config.model_fields:
        raise ScenarioError(f"{what}.config_class has no `name` field", path=key)


def register_algorithm(cls: type, *, name: str | None = None, source: str | None = None) -> str:
    """Make ``cls`` available to scenarios as ``algorithm.name: NAME`` (default ``cls.name``).

    Registering a name again replaces the earlier class (the last registration wins). Returns
    the name.
    """
    key = "algorithm.name"
    _check_class(cls, key)
    name = name or getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"{cls.__qualname__} has no `name`", path=key)
    registered = _algorithms()
    builtin = registered.get(name)
    if builtin is not None and SOURCES.get(name, "fedsim") == "fedsim" and builtin is not cls:
        raise ScenarioError(f"{name!r} is a built-in algorithm; choose another name", path=key)
    config = cls.config_class
    tag = typing.get_args(config.model_fields["name"].annotation)
    if tag != (name,):
        # The scenario names it differently (a target): a config whose tag is that name.
        config = create_model(
            config.__name__, __base__=config, __module__=config.__module__,
            name=(Literal[name], name),  # type: ignore[valid-type]
        )  # fmt: skip
        cls = type(cls.__name__, (cls,), {"config_class": config, "name": name})
    registered[name] = cls
    SOURCES[name] = _entry_source(source)
    _rebuild_scenario()
    return name


def unregister_algorithm(name: str) -> None:
    """Remove a plugin algorithm (built-ins stay)."""
    if SOURCES.get(name, "fedsim") == "fedsim":
        raise ScenarioError(f"{name!r} is a built-in algorithm", path="algorithm.name")
    _algorithms().pop(name, None)
    SOURCES.pop(name, None)
    _rebuild_scenario()


def _rebuild_scenario() -> None:
    """The scenario's ``algorithm`` union: every registered config, in registration order."""
    from fedsim.scenario import Scenario

    configs = tuple(cls.config_class for cls in _algorithms().values())
    Scenario.model_fields["algorithm"].annotation = typing.Union[configs]  # noqa: UP007
    Scenario.model_rebuild(force=True)


def load_entry_points() -> None:
    """Register what installed packages offer in the ``fedsim.plugins`` group (once)."""
    global _entry_points_loaded, _loading_dist
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry.dist.name if entry.dist is not None else entry.value
        where = f"entry point {entry.name} ({dist})"
        try:
            obj = entry.load()
        except Exception as exc:
            raise ScenarioError(
                f"plugin {where} failed to load: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(obj, type):
            register_algorithm(obj, source=f"entry point {dist}")
        elif callable(obj):
            import fedsim.plugins as api

            _loading_dist = dist
            try:
                obj(api)
            except ScenarioError:
                raise
            except Exception as exc:
                raise ScenarioError(
                    f"plugin {where} failed to register: {type(exc).__name__}: {exc}"
                ) from None
            finally:
                _loading_dist = None
        else:
            raise ScenarioError(f"plugin {where} is neither a class nor a register function")


def _entry_source(source: str | None) -> str:
    """``source`` if given; else the entry point being loaded, else ``python``."""
    if source is not None:
        return source
    return f"entry point {_loading_dist}" if _loading_dist is not None else "python"


_loading_dist: str | None = None
"""The distribution whose ``register(plugins)`` is running (names the source of what it adds)."""


def register_aggregator(name: str, fn: Any, *, source: str | None = None) -> str:
    """Make ``fn(updates [n, d], weights [n], **kwargs) -> [d]`` available to scenarios as
    ``aggregator: {name: NAME, kwargs: {...}}`` (a tagged config of its own, so ``fedsim schema``
    and validation know it; the function is probed with the scenario's ``kwargs`` at validation).

    ``weights`` are float64, non-negative and need not sum to one. Registering a name again
    replaces the earlier function. Returns the name.
    """
    from fedsim.robust.aggregators import register_aggregator as register

    return register(name, fn, source=_entry_source(source))


def register_attack(name: str, fn: Any, stage: str, *, source: str | None = None) -> str:
    """Make ``fn`` available as ``byzantine.attack: {name: NAME, kwargs: {...}}``.

    ``stage="client"``: ``fn(delta [d], w_start [d], generator, **kwargs) -> [d]``, the delta a
    Byzantine client sends; ``stage="server"``: ``fn(honest [h, d], n_total=, f=, **kwargs) ->
    [d]``, the vector every Byzantine slot of an aggregation sends. Registering a name again
    replaces the earlier function. Returns the name.
    """
    from fedsim.robust.attacks import register_attack as register

    return register(name, fn, stage, source=_entry_source(source))  # type: ignore[arg-type]


def unregister_aggregator(name: str) -> None:
    """Remove a registered aggregator (built-ins stay)."""
    from fedsim.robust.aggregators import unregister_aggregator as unregister

    unregister(name)


def unregister_attack(name: str) -> None:
    """Remove a registered attack (built-ins stay)."""
    from fedsim.robust.attacks import unregister_attack as unregister

    unregister(name)


def aggregator_sources() -> dict[str, str]:
    """Every aggregator name with where it comes from (``custom``: any function by target)."""
    from fedsim.robust.aggregators import AGGREGATOR_CONFIGS
    from fedsim.robust.custom import REGISTERED_SOURCES

    registered = REGISTERED_SOURCES["aggregators"]
    return {name: registered.get(name, "fedsim") for name in AGGREGATOR_CONFIGS}


def attack_sources() -> dict[str, str]:
    """Every attack name with where it comes from (``custom``: any function by target)."""
    from fedsim.robust.attacks import ATTACK_CONFIGS
    from fedsim.robust.custom import REGISTERED_SOURCES

    registered = REGISTERED_SOURCES["attacks"]
    return {name: registered.get(name, "fedsim") for name in ATTACK_CONFIGS}


def ensure_algorithm(data: Any) -> None:
    """Before a scenario mapping is validated: load the plugins, and import the algorithm its
    ``algorithm.name`` names when that is a target (``module:Class`` or ``file.py:Class``)."""
    load_entry_points()
    section = data.get("algorithm") if isinstance(data, dict) else None
    name = section.get("name") if isinstance(section, dict) else None
    if not isinstance(name, str) or ":" not in name or name in _algorithms():
        return
    from fedsim.imports import resolve_target

    cls = resolve_target(name, key="algorithm.name")
    register_algorithm(cls, name=name, source="target")


def catalogue_sources() -> dict[str, str]:
    """Every algorithm name with where it comes from."""
    return {name: SOURCES.get(name, "fedsim") for name in _algorithms()}
