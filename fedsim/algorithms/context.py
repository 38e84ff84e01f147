"""What an algorithm may see and do: the narrow, typed contract between the simulator and algorithms.

Algorithms (the built-ins and yours) are built with ``Algorithm(config, ctx)`` and reach the rest of
the simulator only through an :class:`AlgorithmContext`. It holds facts (the clients, the model, the
topology, the resolved scenario, seeded random streams) and a :class:`TraceSink`, the only way an
algorithm changes the run: record a job's outcome or a message between servers, count an event
the summary reports, stop the run. This is a public contract: fields are added, never renamed or
removed without a deprecation period (see docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import simpy
import torch

if TYPE_CHECKING:
    from fedsim.algorithms.base import ServerModel
    from fedsim.clients import ClientPool, Job
    from fedsim.learning.data import FederatedData
    from fedsim.learning.params import ParamSpec
    from fedsim.learning.trainer import Evaluator
    from fedsim.rng import SeedStreams
    from fedsim.scenario import Scenario
    from fedsim.timing import ClientTiming
    from fedsim.topology import Topology

COUNTERS = ("rejected_models", "robust_fallbacks")
"""Names :meth:`TraceSink.count` accepts; each is a figure of ``summary.json``."""


class TraceSink(Protocol):
    """How an algorithm changes the run: rows of the trace, counters, the stop."""

    def record_job(self, job: Job, status: str, reason: str = "", extra: tuple = ()) -> None:
        """One events row for ``job`` (``applied``, ``buffered``, ``dropped``, ``rejected``, ...)."""

    def record_message(self, sender: int, receiver: int, nbytes: int, sent_at: float) -> None:
        """A model sent from server ``sender`` to ``receiver``, arriving now (status ``message``)."""

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the summary figure ``name`` (one of :data:`COUNTERS`)."""

    def stop(self, reason: str) -> None:
        """End the run at this instant; ``reason`` becomes ``summary.json``'s ``stop_reason``."""

    def reach_target(self, sim_time: float) -> None:
        """The algorithm's own target was reached (``time_to_target_s``) and the run stops."""


@dataclass(frozen=True)
class ClientFacts:
    """What the simulation drew about each client, indexed by client."""

    count: int
    sizes: np.ndarray
    """Training samples of each client (1 each in timing-only runs)."""
    byzantine: list[bool]
    """Whether each client is Byzantine."""
    server: np.ndarray
    """The server (topology node) each client belongs to; 0 with one server."""


@dataclass(frozen=True)
class ValidationSplit:
    """A held-out share of each client's training rows, asked for by an algorithm's
    :meth:`~fedsim.algorithms.base.Algorithm.validation_split` and carved out by the world builder
    before the run: clients then never train on these rows.

    A client with ``n ≥ 2`` rows holds out ``min(n − 1, max(1, round(fraction·n)))`` of them, drawn
    uniformly from the named ``stream``; one with fewer rows validates on the rows it trains on.
    """

    fraction: float
    stream: str
    """The seed stream the carve-out draws from (take your algorithm's own name)."""


@dataclass(frozen=True)
class ModelFacts:
    """The model trained, where, and what evaluates it (None in timing-only runs)."""

    learning: bool
    """False for ``training: none``: no parameters, no data, versions only."""
    spec: ParamSpec
    device: torch.device
    evaluator: Evaluator | None
    data: FederatedData | None
    trainer: Any
    """The trainer the client pool submits jobs to (for algorithms that build task trainers)."""
    validation: list[np.ndarray] | None = None
    """Each client's held-out rows of ``data`` (indices into its training arrays) when the
    algorithm asked for a :class:`ValidationSplit`; None otherwise."""


@dataclass(frozen=True)
class AlgorithmContext:
    """Everything an algorithm is given (see the module docstring)."""

    env: simpy.Environment
    pool: ClientPool
    servers: list[ServerModel]
    """One per server (topology node); all start from the same initial model."""
    streams: SeedStreams
    """Named, seeded random streams: take your own names (``streams.generator("myalgo.x")``)."""
    scenario: Scenario
    """The resolved scenario (read only): the aggregator, screening, Byzantine and training
    sections the shared helpers use, and anything else an algorithm wants to read."""
    clients: ClientFacts
    model: ModelFacts
    timing: ClientTiming
    topology: Topology | None
    trace: TraceSink
