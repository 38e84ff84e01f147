"""Callbacks: user code that watches a run (progress, recorders, early analysis) without patching it.

A callback is any object with some of these methods, each called with keyword arguments only:

- ``on_start(sim=...)``: the world is built, before the first event.
- ``on_progress(sim=...)``: every thousand trace rows and after every evaluation (progress bars).
- ``on_eval(sim=..., sim_time=..., accuracy=..., loss=..., rows=...)``: after each evaluation;
  ``rows`` are the evals rows just written (one per evaluated model), as dicts of the evals columns.
- ``on_publish(server=..., version=..., params=..., sim_time=...)``: a server installed a new model
  version (``params`` is the flat parameter vector, or None in timing-only runs; never modify it).
- ``on_end(summary=..., result=...)``: the run's files are complete.

Hooks receive only the keyword arguments their signature names (or all of them with ``**kwargs``),
so new arguments can be added later without breaking a callback written today. Subclassing
:class:`Callback` is optional. A hook that raises stops the run with a
:class:`~fedsim.errors.SimulationError` naming the callback, the hook and the simulated time; the
trace written so far is kept.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from fedsim.errors import ScenarioError, SimulationError

HOOKS = ("on_start", "on_progress", "on_eval", "on_publish", "on_end")


class Callback:
    """Optional base class: every hook does nothing."""

    def on_start(self, **_: Any) -> None:
        """The world is built; no event has run."""

    def on_progress(self, **_: Any) -> None:
        """Every thousand trace rows and after every evaluation."""

    def on_eval(self, **_: Any) -> None:
        """After each evaluation."""

    def on_publish(self, **_: Any) -> None:
        """A server installed a new model version."""

    def on_end(self, **_: Any) -> None:
        """The run's files are complete."""


class ProgressCallback(Callback):
    """Adapts a plain progress hook ``hook(sim)`` (``fedsim.run(progress=...)``)."""

    def __init__(self, hook: Callable[[Any], None]) -> None:
        self.hook = hook

    def on_progress(self, *, sim: Any, **_: Any) -> None:
        self.hook(sim)

    def on_end(self, **_: Any) -> None:
        finish = getattr(self.hook, "finish", None)
        if finish is not None and getattr(self, "sim", None) is not None:
            finish(self.sim)

    def on_start(self, *, sim: Any, **_: Any) -> None:
        self.sim = sim


def _accepted(method: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword names a hook takes (None: it takes ``**kwargs``, so every one)."""
    parameters = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


class Callbacks:
    """The run's callbacks, each hook bound once with the keywords it takes."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self._bound: dict[str, list[tuple[Any, Callable[..., Any], frozenset[str] | None]]] = {
            hook: [] for hook in HOOKS
        }
        for callback in callbacks:
            known = [hook for hook in HOOKS if callable(getattr(callback, hook, None))]
            if not known:
                raise ScenarioError(
                    f"callbacks: {_name(callback)} has none of the hooks {', '.join(HOOKS)}"
                )
            for hook in known:
                method = getattr(callback, hook)
                self._bound[hook].append((callback, method, _accepted(method)))

    def wants(self, hook: str) -> bool:
        return bool(self._bound[hook])

    def call(self, hook: str, now: float, **kwargs: Any) -> None:
        """Call ``hook`` on every callback that has it; a failure names the callback."""
        for callback, method, accepted in self._bound[hook]:
            given = (
                kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}
            )
            try:
                method(**given)
            except SimulationError:
                raise
            except Exception as exc:
                raise SimulationError(
                    f"callback {_name(callback)}.{hook} failed at simulated time "
                    f"{now:.3f}s: {type(exc).__name__}: {exc}"
                ) from exc


def _name(callback: Any) -> str:
    return type(callback).__qualname__
