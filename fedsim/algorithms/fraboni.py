"""What FedFix, asynchronous FedAvg and FedBuff-c share (Fraboni et al., arXiv 2206.10189).

The paper writes every scheme as FedAvg with stochastic aggregation weights: aggregation ``n`` applies

    w ← w + η_g · Σ_{i ∈ S_n} d_i · (w_i^received − w_i^sent)

where ``S_n`` are the clients contributing to it and ``d_i`` a per-client weight built from the client
importance ``p_i``. Every client of the population is always working (full participation), as in the
authors' code. This module holds the pieces the three schemes share: ``p_i``, the expected job time
``E[τ_i]`` of a client, and the server step over a set of contributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.context import AlgorithmContext
from fedsim.clients import Job

if TYPE_CHECKING:
    from fedsim.timing import ClientTiming

Weighting = Literal["data_size", "uniform"]


def importance(sizes: list[int] | object, weighting: Weighting) -> list[float]:
    """``p_i``: each client's share of the data (``data_size``) or ``1/N`` (``uniform``)."""
    counts = [int(n) for n in sizes]  # type: ignore[attr-defined]
    if weighting == "uniform":
        return [1.0 / len(counts)] * len(counts)
    total = float(sum(counts))
    return [float(n) / total for n in counts]


def expected_job_s(timing: ClientTiming, client: int) -> float:
    """``E[τ_i]``: mean round trip of one job of ``client`` (compute, transient stragglers, network).

    The paper's ``τ_i`` is a deterministic per-client time; with a random compute law its mean plays
    that role (the weights built from it stay unbiased by the renewal-reward argument).
    """
    return timing.mean_job_s(client)


class FraboniAlgorithm(Algorithm):
    """Base of the three schemes: every client busy, contributions applied as ``Σ d_i Δ_i``."""

    def __init__(self, config: Any, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.p = importance(ctx.clients.sizes, config.weighting)

    def start_everyone(self) -> list[Job]:
        """Full participation: every client starts from the initial model at time 0."""
        return self.dispatch_idle(self.pool.n_clients)

    def restart_idle(self) -> list[Job]:
        """Send the current model to every idle client (those that just contributed or dropped).

        Through ``dispatch_idle``, so the clients are drawn (in random order) from the same sampling
        stream as FedAvg's and FedBuff's refills: the limiting-case runs get the same jobs."""
        return self.dispatch_idle(len(self.pool.idle))

    def apply_jobs(self, jobs: list[Job], weights: list[float]) -> None:
        """One aggregation: ``w ← w + η_g Σ d_i Δ_i`` over ``jobs`` (arrival order), then publish
        (``η_g ·``: the default server optimiser, see :meth:`Algorithm.apply`).

        Updates that fail screening are recorded as ``rejected`` and left out; the others ``applied``.
        With a robust aggregator (or Byzantine clients) the weighted average of the aggregator is
        rescaled by ``Σ d_i``, so the ``mean`` aggregator gives back the same step.
        """
        if not jobs:
            return
        if not self.learning:
            for job in jobs:
                self.record(job, "applied")
            self.publish(None)
            return
        kept, deltas, coeffs = [], [], []
        for job, d in zip(jobs, weights, strict=True):
            delta = self.delta(job)
            if delta is not None:
                kept.append(job)
                deltas.append(delta)
                coeffs.append(d)
        if not kept:
            return
        step = self.aggregate(deltas, coeffs, jobs=kept, total=1.0)  # Σ d_i Δ_i: no normalisation
        for job in kept:
            self.record(job, "applied")
        self.apply(step)
