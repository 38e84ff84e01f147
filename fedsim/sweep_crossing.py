"""What of this process a sweep's cells need in its worker processes, and whether it can cross.

A worker process starts from the package alone: an algorithm registered in Python
(``fedsim.plugins.register_algorithm``) is not in its registry, and a ``kind: memory`` model or
dataset (the object given to ``fedsim.run``) is not there at all. A registered class crosses when
the workers can import it by module path (pickle by reference; a script's ``__main__`` counts when
it is a file); the rest is refused at the sweep's start, in one line naming what to use instead,
rather than as a failure of every cell.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from fedsim.errors import ScenarioError

if TYPE_CHECKING:
    from fedsim.scenario import Scenario

Registered = tuple[tuple[str, type], ...]
"""(name, class) of each Python-registered algorithm the cells use, shipped to the workers."""

_IN_WORKERS = "cannot cross into the sweep's worker processes"


def crossing(scenarios: Iterable[Scenario], *, in_workers: bool) -> Registered:
    """The registered algorithms ``scenarios`` use; raise if a cell needs what cannot cross."""
    from fedsim import plugins
    from fedsim.algorithms import ALGORITHMS

    sources = plugins.catalogue_sources()
    needed: dict[str, type] = {}
    for scenario in scenarios:
        if in_workers:
            _check_not_in_memory(scenario)
        name = scenario.algorithm.name
        if sources.get(name) == "python" and name not in needed:
            needed[name] = ALGORITHMS[name]
    if not in_workers:
        return ()
    return tuple((name, _by_reference(name, cls)) for name, cls in needed.items())


def _check_not_in_memory(scenario: Scenario) -> None:
    if scenario.model.kind == "memory":
        raise ScenarioError(
            f"the model passed to fedsim.run is an object of this process and {_IN_WORKERS}; "
            "use kind: import with target 'pkg.mod:Factory' (or 'file.py:Factory'), or jobs=1",
            path="model.kind",
        )
    if getattr(scenario.data, "dataset", None) == "memory":
        raise ScenarioError(
            f"the data passed to fedsim.run is an object of this process and {_IN_WORKERS}; "
            "use dataset: npz (a file) or dataset: import with target 'pkg.mod:load', or jobs=1",
            path="data.dataset",
        )


def _by_reference(name: str, cls: type) -> type:
    """The class the workers import to register ``name`` again (the registered one, or the class
    it renames: ``register_algorithm(cls, name=...)`` derives a class under a new name)."""
    candidates = [c for c in (cls, *cls.__bases__[:1]) if c.__name__ == cls.__name__]
    for candidate in candidates:
        if _importable(candidate):
            return candidate
    origin = candidates[-1]  # the user's class (not the one register_algorithm derived)
    raise ScenarioError(
        f"{name!r} was registered in this process (register_algorithm) and its class "
        f"{origin.__module__}.{origin.__qualname__} {_IN_WORKERS}: define it in an importable "
        "module, "
        "name it by target ('pkg.mod:Class' or 'file.py:Class') or an entry point of "
        "fedsim.plugins, or use jobs=1",
        path="algorithm.name",
    )


def _importable(cls: type) -> bool:
    if cls.__module__ == "__main__" and not getattr(sys.modules["__main__"], "__file__", None):
        return False  # an interactive session or ``python -c``: the workers have no such module
    try:
        return pickle.loads(pickle.dumps(cls)) is cls
    except (pickle.PicklingError, AttributeError, ImportError, TypeError):
        return False


def register_in_worker(algorithms: Sequence[tuple[str, type]]) -> None:
    """Register what the parent registered (a worker's registry starts from the package)."""
    if not algorithms:
        return
    from fedsim import plugins

    sources = plugins.catalogue_sources()
    for name, cls in algorithms:
        if sources.get(name) != "python":
            plugins.register_algorithm(cls, name=name)
