"""Errors a user can act on.

A :class:`ScenarioError` is raised for anything wrong with the input (a bad key, a bad value, a missing
file). The CLI prints it as one line and exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations

from typing import Any


class FedsimError(Exception):
    """Base class of errors raised by fedsim on purpose."""


class ScenarioError(FedsimError, ValueError):
    """The scenario (or a CLI argument) is invalid.

    ``path`` names the offending key (``clients.compute.mean_s``) when there is one.
    """

    def __init__(self, message: str, path: str | None = None, value: Any = None) -> None:
        self.path = path
        self.value = value
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class SimulationError(FedsimError, RuntimeError):
    """The run failed after the scenario was accepted (exit status 1)."""
