"""DRPGA — Delayed Random Partial Gradient Averaging (Hu, arXiv 2412.19987), as "DPGA-fedsim".

Only the abstract of the paper was readable (ALGORITHMS.md §3.9, §6.4), so this is the spec's
implementable reading, every inferred choice a key (docs/algorithms/drpga.md lists them):

- every client keeps its own model ``w_i`` and trains continuously, one job = ``K`` local steps
  (``training.local_steps``) from ``w_i``; after job ``t`` it shares its progress on a common random
  mask ``M_t`` (``⌈p_t·d⌉`` coordinates, or random parameter blocks), ``U_i = (w_i − a − pending_i)[M_t]``;
- the server averages round ``t`` over all clients, ``Ū = Σ_j q_j U_j``, moves its anchor
  ``a[M_t] += Ū`` (the evaluated model) and sends ``Ū`` back;
- client ``i`` applies round ``t`` before starting job ``t + D + 1`` (waiting only if it has not arrived:
  bounded delay ``D`` rounds, so communication overlaps ``D`` jobs of computation):
  ``w_i[M_t] += Ū − U_i`` and ``a_i[M_t] += Ū`` (all anchors stay identical);
- the update rate ``p_t`` walks over a grid, one level up or down per round, an attempted step off the
  grid staying put (a reflecting boundary that keeps a symmetric walk's stationary law uniform).

``pending_i`` (own shares still in flight) is 0 when ``D = 0``, where ``U_i`` is the spec's
``(w_i − a)[M_t]``; for ``D > 0`` it stops progress already in flight from being shared twice. With
``p ≡ 1`` and ``D = 0`` a round is exactly FedAvg with full participation (limiting case L11).

Communication is simulated here, not by the jobs: DRPGA takes ``clients.network`` over (each transfer
of ``b`` bytes costs ``latency_s + b / bandwidth``) and its jobs are compute only. Bytes are the real
partial ones (``|M_t|`` × 4 bytes each way; the mask is derived from the run seed, so no indices are
sent) and are written into each job's events row (``Job.bytes_up``/``bytes_down``).
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any, Literal

import numpy as np
import simpy
import torch
from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from fedsim.algorithms.base import Algorithm, weighted_sum
from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.schedule import start_soon
from fedsim.clients import Job
from fedsim.config_base import Section
from fedsim.errors import ScenarioError


class DrpgaConfig(Section):
    """Delayed random partial averaging: clients share a random part of their progress every K local
    steps, the part's size following a random walk, averages applied D rounds later."""

    name: Literal["drpga"] = "drpga"
    """Selects this variant."""
    rates: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.8, 1.0])
    """Grid of update rates p (fraction of the model shared per round), strictly increasing in
    (0, 1]. A single entry fixes the rate ([1.0]: full sharing)."""
    start_level: NonNegativeInt = 0
    """Index in rates of the first round's rate (0: the coarsest, i.e. smallest, rate)."""
    q_up: float = Field(0.25, ge=0, le=1)
    """Per-round probability that the rate moves one level up (staying put at the top)."""
    q_down: float = Field(0.25, ge=0, le=1)
    """Per-round probability that the rate moves one level down (staying put at the bottom)."""
    rate_schedule: Literal["walk", "beta"] = "walk"
    """How p_t is drawn each round: walk = the ±1 level walk over rates (q_up/q_down; the schedule
    inferred from the paper's abstract, mean 42.5 % of the parameters with the defaults); beta = a
    fedsim addition biased toward low rates, p_t ~ Beta(beta_a, beta_b) drawn afresh each round and
    raised to at least rates[0] (mean beta_a / (beta_a + beta_b) before that floor)."""
    beta_a: float = Field(1.0, gt=0)
    """Beta shape a of rate_schedule: beta (a < b pulls the rates toward 0)."""
    beta_b: float = Field(9.0, gt=0)
    """Beta shape b of rate_schedule: beta (the defaults 1, 9 give a mean rate of 10 %)."""
    delay_rounds: NonNegativeInt = 1
    """D: the average of round t is applied before job t + D + 1, so communication overlaps D jobs
    (D·K local steps) of computation; 0 = wait for it before the next job (no overlap)."""
    share: Literal["coordinates", "blocks"] = "coordinates"
    """What the mask draws: ⌈p·d⌉ single coordinates, or ⌈p·B⌉ of the model's B parameter blocks."""
    block_size: PositiveInt | None = None
    """Coordinates per block for share: blocks (consecutive in the flat vector, the last one
    shorter); null = one block per parameter tensor of the model."""
    weighting: Literal["data_size", "uniform"] = "data_size"
    """Weights q_j of the clients in each round's average: by samples (as FedAvg), or equal."""

    @field_validator("rates")
    @classmethod
    def _grid(cls, rates: list[float]) -> list[float]:
        if not rates:
            raise ValueError("rates must list at least one update rate")
        if any(not (0 < p <= 1) for p in rates):
            raise ValueError(f"every rate must be in (0, 1], got {rates}")
        if any(b <= a for a, b in itertools.pairwise(rates)):
            raise ValueError(f"rates must be strictly increasing, got {rates}")
        return rates

    def check_scenario(self, scenario: Any) -> None:
        """Run by scenario validation: one server, every client every round."""
        if scenario.topology is not None:
            raise ScenarioError(
                "drpga runs with one server; remove the topology section", path="topology"
            )
        if scenario.clients.dropout.prob > 0:
            raise ScenarioError(
                "drpga averages every client every round; set clients.dropout.prob to 0",
                path="clients.dropout.prob",
            )

    @model_validator(mode="after")
    def _walk(self) -> DrpgaConfig:
        if self.start_level >= len(self.rates):
            raise ValueError(
                f"start_level ({self.start_level}) must index rates (0..{len(self.rates) - 1})"
            )
        if self.q_up + self.q_down > 1:
            raise ValueError(f"q_up + q_down must be <= 1, got {self.q_up + self.q_down}")
        return self


# -- pure pieces (tested alone) -------------------------------------------------------------------


class RateWalk:
    """Levels of the update-rate walk, one per round (an iterator): ±1 with probabilities
    q_up/q_down, else stay; a step off the grid stays put (so a symmetric walk has a doubly
    stochastic transition matrix and a uniform stationary distribution). An object, not a
    generator, so that a run can be checkpointed; the first level draws nothing."""

    def __init__(
        self, n_levels: int, start: int, q_up: float, q_down: float, rng: np.random.Generator
    ) -> None:
        self.n_levels, self.q_up, self.q_down, self.rng = n_levels, q_up, q_down, rng
        self.level = start
        self.started = False

    def __iter__(self) -> RateWalk:
        return self

    def __next__(self) -> int:
        if self.started:
            u = self.rng.random()
            if u < self.q_up:
                self.level = min(self.level + 1, self.n_levels - 1)
            elif u < self.q_up + self.q_down:
                self.level = max(self.level - 1, 0)
        self.started = True
        return self.level


def block_bounds(
    numel: int, offsets: tuple[int, ...], block_size: int | None
) -> list[tuple[int, int]]:
    """``[start, end)`` of each parameter block: fixed-size chunks, or one per parameter tensor."""
    if block_size is None:
        ends = [*offsets[1:], numel]
        return [(a, b) for a, b in zip(offsets, ends, strict=True) if b > a]
    return [(a, min(a + block_size, numel)) for a in range(0, numel, block_size)]


def draw_mask(
    p: float,
    numel: int,
    gen: torch.Generator,
    blocks: list[tuple[int, int]] | None = None,
) -> torch.Tensor | None:
    """Sorted coordinate indices of one round's mask (None = every coordinate, when ``p = 1``).

    Coordinates: ``⌈p·d⌉`` distinct indices drawn uniformly. Blocks: ``⌈p·B⌉`` distinct blocks.
    """
    if p >= 1.0:
        return None
    if blocks is None:
        k = math.ceil(p * numel - 1e-9)
        return torch.randperm(numel, generator=gen)[:k].sort().values
    k = math.ceil(p * len(blocks) - 1e-9)
    chosen = torch.randperm(len(blocks), generator=gen)[:k].sort().values.tolist()
    return torch.cat([torch.arange(*blocks[b]) for b in chosen])


# -- the algorithm ------------------------------------------------------------------------------


class _Round:
    """One communication round: its rate, mask, bytes per transfer and the contributions so far."""

    __slots__ = ("average", "contributions", "mask", "nbytes", "rate")

    def __init__(self, rate: float, mask: torch.Tensor | None, nbytes: int) -> None:
        self.rate = rate
        self.mask = mask
        self.nbytes = nbytes
        self.contributions: dict[int, torch.Tensor | None] = {}
        self.average: torch.Tensor | None = None


class BetaRates:
    """Update rates of rate_schedule: beta, one per round (an iterator): p_t ~ Beta(a, b) drawn
    independently each round, floored at ``floor`` (so no round shares nothing)."""

    def __init__(self, a: float, b: float, floor: float, rng: np.random.Generator) -> None:
        self.a, self.b, self.floor, self.rng = a, b, floor, rng

    def __iter__(self) -> BetaRates:
        return self

    def __next__(self) -> float:
        return max(float(self.rng.beta(self.a, self.b)), self.floor)


class Drpga(Algorithm):
    name = "drpga"
    config_class = DrpgaConfig
    config: DrpgaConfig

    def __init__(self, config: DrpgaConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        scenario = ctx.scenario
        self.network = scenario.clients.network
        # Communication is simulated by this algorithm (it overlaps computation): jobs are compute
        # only (network=False), and job rows carry their real partial bytes.
        spec = ctx.model.spec
        self.numel = spec.numel
        self.elem_bytes = spec.nbytes() // max(spec.numel, 1)
        self.blocks = (
            block_bounds(spec.numel, spec.offsets, config.block_size)
            if config.share == "blocks"
            else None
        )
        n = self.pool.n_clients
        sizes = np.asarray(ctx.clients.sizes, dtype=float)
        raw = np.ones(n) if config.weighting == "uniform" else sizes
        self.q: list[float] = (raw / raw.sum()).tolist()
        self._levels = RateWalk(
            len(config.rates),
            config.start_level,
            config.q_up,
            config.q_down,
            ctx.streams.generator("drpga.rate"),
        )
        self._beta = (
            BetaRates(
                config.beta_a, config.beta_b, config.rates[0], ctx.streams.generator("drpga.rate")
            )
            if config.rate_schedule == "beta"
            else None
        )
        self.rounds: dict[int, _Round] = {}
        self.rate_history: list[float] = []
        initial = self.server.params
        self.local: list[torch.Tensor | None] = [initial] * n
        self.anchor: list[torch.Tensor | None] = [initial] * n
        self.in_flight: list[dict[int, torch.Tensor | None]] = [{} for _ in range(n)]
        self.applied_round = [0] * n
        self._downloads: dict[tuple[int, int], simpy.Event] = {}
        self._job_done: list[simpy.Event | None] = [None] * n
        self.client_round = [0] * n
        """Each client's current round (its job count)."""
        self.rounds_done = 0

    # -- rounds ------------------------------------------------------------------------------------
    def round_info(self, t: int) -> _Round:
        """Round ``t``'s rate and mask, drawn in round order (so the same for every client)."""
        while len(self.rate_history) < t:
            if self._beta is not None:
                self.rate_history.append(next(self._beta))
            else:
                self.rate_history.append(self.config.rates[next(self._levels)])
        info = self.rounds.get(t)
        if info is None:
            rate = self.rate_history[t - 1]
            gen = self.ctx.streams.torch_generator("drpga.mask", t)
            mask = draw_mask(rate, self.numel, gen, self.blocks)
            size = self.numel if mask is None else int(mask.numel())
            info = self.rounds[t] = _Round(rate, mask, size * self.elem_bytes)
        return info

    def _download(self, client: int, t: int) -> simpy.Event:
        key = (client, t)
        event = self._downloads.get(key)
        if event is None:
            event = self._downloads[key] = self.env.event()
        return event

    # -- the clients' loops ------------------------------------------------------------------------
    # Each client loops on its own (apply the average due, train, share): callbacks on the same
    # SimPy events its process waited on, started as the processes were (:func:`start_soon`), with
    # its round in ``self.client_round``, so the trace is the processes' and a run can be
    # checkpointed.
    def start(self) -> None:
        for client in range(self.pool.n_clients):
            start_soon(self.env, partial(self._next_round, client))

    def _next_round(self, i: int, _event: simpy.Event | None = None) -> None:
        """Client ``i``'s next round ``t``: apply round ``t − 1 − D``'s average (waiting for it if
        it has not arrived), then train."""
        t = self.client_round[i] = self.client_round[i] + 1
        due = t - 1 - self.config.delay_rounds
        if due >= 1:
            event = self._download(i, due)
            if not event.triggered:
                event.callbacks.append(partial(self._downloaded, i, due))
                return
            self._downloaded(i, due, event)
            return
        self._train(i, 0)

    def _downloaded(self, i: int, due: int, _event: simpy.Event) -> None:
        self._train(i, self._apply(i, due))

    def _train(self, i: int, down: int) -> None:
        t = self.client_round[i]
        done = self._job_done[i] = self.env.event()
        self.pool.take(i)
        job = self.pool.dispatch(
            i, 0, self.server.version, self.local[i], self._arrived, self._lost, network=False
        )
        job.tag = t
        # The row's bytes: the share uploaded after training (|M_t| floats) and the average
        # downloaded before starting (0 for the first D + 1 jobs).
        job.bytes_up = self.round_info(t).nbytes
        job.bytes_down = down
        done.callbacks.append(partial(self._trained, i))

    def _trained(self, i: int, _event: simpy.Event) -> None:
        self._share(i, self.client_round[i])
        self._next_round(i)

    def on_arrival(self, job: Job) -> None:
        w_end = self.local_model(job) if self.learning else None
        if w_end is not None:  # None: rejected (recorded by local_model), w_i stays as it was
            self.local[job.client] = w_end
            self.record(job, "applied")
        elif not self.learning:
            self.record(job, "applied")
        self._job_done[job.client].succeed()

    def on_dropped(self, job: Job) -> None:  # only reachable if dropout were allowed
        self.record(job, "dropped")
        self._job_done[job.client].succeed()

    def finish(self) -> None:
        """Jobs still training at the stop (their rows keep their real download bytes)."""
        for job in list(self.pool.open_jobs.values()):
            self.record(job, "in_flight")
            self.pool.cancel(job)

    # -- sharing and applying ----------------------------------------------------------------------
    def _share(self, i: int, t: int) -> None:
        """Client ``i`` sends its unshared progress on round ``t``'s mask (upload of |M_t| floats)."""
        info = self.round_info(t)
        share = None
        if self.learning:
            progress = self.local[i] - self.anchor[i]
            flights = self.in_flight[i]
            if flights:  # own shares still in flight are not shared again
                pending = torch.zeros_like(progress)
                for r, sent in flights.items():
                    mask = self.rounds[r].mask
                    if mask is None:
                        pending += sent
                    else:
                        pending[mask] += sent
                progress = progress - pending
            share = progress if info.mask is None else progress[info.mask]
        self.in_flight[i][t] = share
        upload = self.env.timeout(self.network.transfer_s(info.nbytes))
        upload.callbacks.append(partial(self._uploaded, i, t, share))

    def _uploaded(self, i: int, t: int, share: torch.Tensor | None, _event: simpy.Event) -> None:
        self._received(i, t, share)

    def _received(self, i: int, t: int, share: torch.Tensor | None) -> None:
        """The server holds client ``i``'s share of round ``t``; with all of them, average and reply."""
        info = self.rounds[t]
        info.contributions[i] = share
        n = self.pool.n_clients
        if len(info.contributions) < n:
            return
        if self.learning:
            shares = [info.contributions[j] for j in range(n)]
            info.average = weighted_sum(shares, self.q)
            anchor = self.server.params.clone()
            if info.mask is None:
                anchor += info.average
            else:
                anchor[info.mask] += info.average
            self.publish(anchor)
        else:
            self.publish(None)
        info.contributions = {}
        self.rounds_done = t
        delay = self.network.transfer_s(info.nbytes)
        for j in range(n):
            arrival = self.env.timeout(delay)
            arrival.callbacks.append(partial(self._average_arrived, j, t))

    def _average_arrived(self, client: int, t: int, _event: simpy.Event) -> None:
        self._download(client, t).succeed()

    def _apply(self, i: int, t: int) -> int:
        """Client ``i`` applies round ``t``'s average; returns the bytes it downloaded."""
        info = self.rounds[t]
        own = self.in_flight[i].pop(t)
        self.applied_round[i] = t
        self._downloads.pop((i, t), None)
        if self.learning:
            w, a = self.local[i], self.anchor[i]
            avg = info.average
            if info.mask is None:
                new_a = a + avg
                self.local[i] = new_a + ((w - a) - own)
            else:
                m = info.mask
                new_a = a.clone()
                new_a[m] += avg
                new_w = w.clone()
                new_w[m] = new_a[m] + ((w[m] - a[m]) - own)
                self.local[i] = new_w
            self.anchor[i] = new_a
        if all(r >= t for r in self.applied_round):
            self.rounds.pop(t, None)  # every client has applied it
        return info.nbytes
