"""Callbacks in place of SimPy processes, so that a run can be checkpointed.

A generator's frame cannot be pickled, so the built-in algorithms keep their progress in attributes
and go on in callbacks of the events a process would have waited on. :func:`start_soon` stands for
``env.process(...)``: a process started now takes its first step in an urgent event of this instant,
after the urgent events already scheduled, so starting the callback the same way keeps every event
in the order the process gave (and the traces byte-identical).
"""

from __future__ import annotations

from collections.abc import Callable

import simpy
from simpy.events import URGENT


def start_soon(env: simpy.Environment, callback: Callable[[simpy.Event], None]) -> None:
    """Run ``callback`` when a SimPy process started now would take its first step."""
    call_now(env, callback, priority=URGENT)


def call_now(
    env: simpy.Environment, callback: Callable[[simpy.Event], None], *, priority: int
) -> None:
    """Run ``callback`` at the current simulated time, ordered among that time's events by
    ``priority`` (SimPy's: URGENT before normal events, larger numbers after them), without a
    process (callbacks, unlike generators, can be checkpointed)."""
    event = simpy.Event(env)
    event._ok = True
    event._value = None
    event.callbacks.append(callback)
    env.schedule(event, priority=priority)
