"""Errors a user can act on.

A :class:`ScenarioError` is raised for anything wrong with the input (a bad key, a bad value, a missing
file). The CLI prints each of its problems as one line and exits with status 2; no traceback reaches
the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class FedsimError(Exception):
    """Base class of errors raised by fedsim on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, shown as one line.

    ``FILE:LINE: key.path: message`` when the key was read from a file (``FILE: key.path:
    message`` when the file does not hold the key, e.g. a default value that clashes with
    another key); ``--set key.path: message`` when an override gave the key; ``key.path:
    message`` for a scenario given as a mapping in Python.
    """

    message: str
    path: str | None = None
    file: str | None = None
    line: int | None = None
    override: bool = False

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        key = ""
        if self.path:
            key = f"--set {self.path}: " if self.override else f"{self.path}: "
        elif self.override:
            key = "--set: "
        return f"{where}{key}{self.message}"


class ScenarioError(FedsimError, ValueError):
    """The scenario (or a CLI argument) is invalid.

    ``path`` names the offending key (``clients.compute.mean_s``) when there is one, ``message``
    says what is wrong with it; both describe the first problem. ``problems`` lists every problem
    found (validation reports them all at once), and ``str(exc)`` is one line per problem.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        value: Any = None,
        problems: list[Problem] | None = None,
    ) -> None:
        self.path = path
        self.value = value
        self.message = message
        self.problems: list[Problem] = list(problems) if problems else [Problem(message, path)]
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def of(cls, problems: list[Problem], value: Any = None) -> ScenarioError:
        """An error holding several problems (at least one); ``path``/``message`` are the first's."""
        first = problems[0]
        return cls(first.message, path=first.path, value=value, problems=problems)

    @property
    def lines(self) -> list[str]:
        """One line per problem (what the CLI prints after ``error:``)."""
        return [str(p) for p in self.problems]


class SimulationError(FedsimError, RuntimeError):
    """The run failed after the scenario was accepted (exit status 1)."""
