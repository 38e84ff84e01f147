"""FedFix (Fraboni et al., arXiv 2206.10189): aggregate at fixed times Δt, 2Δt, 3Δt, …

Every client works all the time. A client whose job returns waits, idle, until the next tick; at tick
``n`` the server applies every update that returned since the previous tick (return time ``≤ nΔt``)

    w ← w + η_g · Σ_i d_i Δ_i,   d_i = ⌈τ_i/Δt⌉ · p_i   (correction: windows)  or  d_i = p_i  (none)

and sends the new model to those clients, which start again at the tick. Clients still computing at a
tick keep computing on the model they have; their update joins the first tick after it returns. The
authors' ``⌈τ_i/Δt⌉`` is, for a job started at a tick, the number of windows it was out, which is
what is used here (so random job times need no knowledge of ``τ_i``). A tick with no returned update
publishes nothing.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import simpy
from pydantic import PositiveFloat

from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.fraboni import FraboniAlgorithm, Weighting
from fedsim.clients import Job
from fedsim.config_base import Period, Section

AFTER_ARRIVALS = 2
"""SimPy priority of a tick: after every event of the same instant (NORMAL is 1), so an update that
returns exactly at ``nΔt`` joins aggregation ``n`` (the authors' ``return_time ≤ (n+1)Δt``)."""


class FedFixConfig(Section):
    """Fixed-period aggregation of whatever returned in the last Δt (every client always busy)."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

    name: Literal["fedfix"] = "fedfix"
    """Selects this variant."""
    period_s: Period = 1.0
    """Δt: simulated seconds between aggregations (the paper's FedFix-0.2/0.5/0.8 with τ_i ≤ 1)."""
    server_lr: PositiveFloat = 1.0
    """Server learning rate η_g (1 in every experiment of the paper)."""
    weighting: Weighting = "data_size"
    """Client importance p_i: share of the samples, or 1/N."""
    correction: Literal["windows", "none"] = "windows"
    """d_i = (windows the job was out)·p_i, the paper's unbiased "weight" policy; none: d_i = p_i."""


class FedFix(FraboniAlgorithm):
    name = "fedfix"
    config_class = FedFixConfig
    config: FedFixConfig

    def __init__(self, config: FedFixConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.tick = 0
        self.returned: list[Job] = []

    # The tick loop is a callback on each tick's event, not a generator process, so that a run can
    # be checkpointed (the same events in the same order: the trace is the loop's).
    def start(self) -> None:
        for job in self.start_everyone():
            job.tag = 0  # the tick it started at
        self._at(self.tick + 1).callbacks.append(self._on_tick)

    def _on_tick(self, _event: simpy.Event) -> None:
        self.tick += 1
        returned, self.returned = self.returned, []
        self.server_step(returned)
        for job in self.restart_idle():
            job.tag = self.tick
        self._at(self.tick + 1).callbacks.append(self._on_tick)

    def _at(self, n: int) -> simpy.Event:
        """An event at exactly ``n·Δt`` (``now + (nΔt − now)`` is exact: ``now`` is the last tick)."""
        event = simpy.Event(self.env)
        event._ok, event._value = True, None
        self.env.schedule(event, AFTER_ARRIVALS, n * self.config.period_s - self.now)
        return event

    def server_step(self, jobs: list[Job]) -> None:
        p = self.p
        if self.config.correction == "windows":
            weights = [(self.tick - job.tag) * p[job.client] for job in jobs]
        else:
            weights = [p[job.client] for job in jobs]
        self.apply_jobs(jobs, weights)

    def on_arrival(self, job: Job) -> None:
        self.returned.append(job)

    def finish(self) -> None:
        """Updates that returned after the last tick wait for the next one: ``buffered``."""
        for job in self.returned:
            self.record(job, "buffered")
        self.returned = []
