"""What an algorithm sees of the simulation, and the base class algorithms derive from.

An algorithm is a SimPy process (``run``) plus arrival callbacks, reading like the event pseudo-code
of ``ALGORITHMS.md``: ``dispatch`` a client, react ``on_arrival``, ``publish`` a new model. How jobs
are timed and trained, how rows are recorded and when the run stops are not its business.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar

import simpy
import torch

from fedsim.clients import ClientPool, Job

if TYPE_CHECKING:
    from fedsim.simulation import Simulation


class ServerModel:
    """A server's current model and its version counter (the reference for staleness)."""

    def __init__(self, index: int, params: torch.Tensor | None) -> None:
        self.index = index
        self.params = params
        self.version = 0

    def publish(self, params: torch.Tensor | None) -> None:
        """Install a new model version (always a new tensor; old versions stay valid for jobs)."""
        self.params = params
        self.version += 1


class Algorithm:
    """Base of every algorithm: the small API of the papers' pseudo-code.

    Subclasses set ``name`` and ``config_class`` and implement ``run`` (a generator) and
    ``on_arrival``; ``on_dropped`` defaults to ``on_arrival``'s bookkeeping-free sibling below.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any, sim: Simulation) -> None:
        self.config = config
        self.sim = sim
        self.env: simpy.Environment = sim.env
        self.pool: ClientPool = sim.pool
        self.server: ServerModel = sim.servers[0]
        self.learning = sim.learning

    @property
    def now(self) -> float:
        return self.env.now

    def run(self) -> Generator[simpy.Event, Any, None]:
        """The algorithm's main process (started at time 0)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def dispatch(self, client: int) -> Job:
        """Send the current model to ``client`` and start its local training."""
        s = self.server
        return self.pool.dispatch(client, s.index, s.version, s.params, self._arrived, self._lost)

    def _arrived(self, job: Job) -> None:
        job.arrival_version = self.server.version
        self.on_arrival(job)

    def _lost(self, job: Job) -> None:
        job.arrival_version = self.server.version
        self.on_dropped(job)

    def dispatch_idle(self, k: int = 1) -> list[Job]:
        """Dispatch up to ``k`` uniformly chosen idle clients."""
        return [self.dispatch(c) for c in self.pool.sample(k)]

    def dispatch_one(self) -> None:
        """Dispatch one uniformly chosen idle client, if any (the asynchronous hot path)."""
        if self.pool.idle:
            self.dispatch(self.pool.take_idle())

    def on_arrival(self, job: Job) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once at the stop: record what the algorithm still holds (nothing by default)."""

    def on_dropped(self, job: Job) -> None:
        """A job was lost; by default just record it."""
        self.record(job, "dropped")

    # -- helpers shared by every algorithm -------------------------------------------------------------
    def record(self, job: Job, status: str) -> None:
        self.sim.record_job(job, status)

    def staleness(self, job: Job) -> int:
        return self.server.version - job.base_version

    def local_model(self, job: Job) -> torch.Tensor | None:
        """The client's trained model ``w_end``; None (recorded as rejected) if it is not finite.

        In timing-only runs there is no model and this returns an empty tensor.
        """
        if not self.learning:
            return _EMPTY
        w_end = job.handle.result()
        job.handle = None
        if not bool(torch.isfinite(w_end).all()):
            self.record(job, "rejected")
            return None
        return w_end

    def delta(self, job: Job) -> torch.Tensor | None:
        """The job's update ``w_end − w_start`` (points downhill); None if rejected."""
        w_end = self.local_model(job)
        if w_end is None or not self.learning:
            return w_end
        return w_end - job.start

    def publish(self, params: torch.Tensor | None) -> None:
        """Install a new global model (``None`` in timing-only runs: only the version moves)."""
        if params is not None and not bool(torch.isfinite(params).all()):
            # Finite updates can still overflow when combined; never let that reach the model.
            self.sim.note_rejected_model()
            return
        self.server.publish(params)


_EMPTY = torch.empty(0)


def weighted_sum(updates: list[torch.Tensor], coeffs: list[float]) -> torch.Tensor:
    """``Σ c_i · u_i`` over stacked updates, in the order given (the one FedAvg and FedBuff share)."""
    stacked = torch.stack(updates)
    c = torch.tensor(coeffs, dtype=stacked.dtype, device=stacked.device)
    return (c[:, None] * stacked).sum(0)
