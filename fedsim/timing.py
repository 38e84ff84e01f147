"""Seeded timing models: job-duration laws, client speeds, stragglers, dropout and the network.

Each duration law is a distribution object with ``sample(rng, size)`` and its analytic ``mean`` and
``variance``, so tests compare what the simulator draws with theory through one helper
(``tests/theory.py``). Simulated time only ever comes from here; real compute never advances the clock.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, PositiveFloat, model_validator

from fedsim.config_base import DefaultTag, Period, Section
from fedsim.rng import BlockSampler, SeedStreams

# ---------------------------------------------------------------------------------------------------
# Duration laws (seconds)


class ConstantDelay(Section):
    """Every job takes exactly ``mean_s`` seconds."""

    dist: Literal["constant"] = "constant"
    """Selects this variant."""
    mean_s: Period = 5.0
    """Duration of every job, in seconds."""

    @property
    def mean(self) -> float:
        return self.mean_s

    @property
    def variance(self) -> float:
        return 0.0

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, self.mean_s)


class ExponentialDelay(Section):
    """Exponential durations with mean ``mean_s`` (memoryless: the queueing-theory reference case)."""

    dist: Literal["exponential"] = "exponential"
    """Selects this variant."""
    mean_s: Period = 5.0
    """Mean duration, in seconds."""

    @property
    def mean(self) -> float:
        return self.mean_s

    @property
    def variance(self) -> float:
        return self.mean_s**2

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.exponential(self.mean_s, size)


class LognormalDelay(Section):
    """Log-normal durations parameterised by their mean and the sigma of the underlying normal."""

    dist: Literal["lognormal"] = "lognormal"
    """Selects this variant."""
    mean_s: Period = 5.0
    """Mean duration, in seconds."""
    sigma: float = Field(0.5, ge=0)
    """Standard deviation of log(duration); 0 gives constant durations."""

    @property
    def _mu(self) -> float:
        return math.log(self.mean_s) - self.sigma**2 / 2

    @property
    def mean(self) -> float:
        return self.mean_s

    @property
    def variance(self) -> float:
        return (math.exp(self.sigma**2) - 1) * self.mean_s**2

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.lognormal(self._mu, self.sigma, size)


class UniformDelay(Section):
    """Durations uniform on [``low_s``, ``high_s``]."""

    dist: Literal["uniform"] = "uniform"
    """Selects this variant."""
    low_s: float = Field(1.0, ge=0)
    """Shortest duration, in seconds."""
    high_s: Period = 9.0
    """Longest duration, in seconds (must be > low_s)."""

    @model_validator(mode="after")
    def _ordered(self) -> UniformDelay:
        if self.high_s <= self.low_s:
            raise ValueError(
                f"high_s must be > low_s, got low_s={self.low_s}, high_s={self.high_s}"
            )
        return self

    @property
    def mean(self) -> float:
        return (self.low_s + self.high_s) / 2

    @property
    def variance(self) -> float:
        return (self.high_s - self.low_s) ** 2 / 12

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.uniform(self.low_s, self.high_s, size)


class ShiftedExponentialDelay(Section):
    """``shift_s + Exp(exp_mean_s)``: a floor plus a memoryless tail (FedAST's delay law)."""

    dist: Literal["shifted_exponential"] = "shifted_exponential"
    """Selects this variant."""
    shift_s: float = Field(2.5, ge=0)
    """Minimum duration, in seconds."""
    exp_mean_s: Period = 2.5
    """Mean of the exponential part, in seconds (total mean = shift_s + exp_mean_s)."""

    @property
    def mean(self) -> float:
        return self.shift_s + self.exp_mean_s

    @property
    def variance(self) -> float:
        return self.exp_mean_s**2

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.shift_s + rng.exponential(self.exp_mean_s, size)


class ParetoDelay(Section):
    """Pareto (heavy-tailed) durations: minimum ``scale_s``, tail index ``shape``."""

    dist: Literal["pareto"] = "pareto"
    """Selects this variant."""
    shape: float = Field(3.0, gt=1)
    """Tail index alpha (> 1 so the mean is finite; > 2 for a finite variance)."""
    scale_s: Period = 1.0
    """Minimum duration, in seconds."""

    @property
    def mean(self) -> float:
        return self.shape * self.scale_s / (self.shape - 1)

    @property
    def variance(self) -> float:
        a = self.shape
        if a <= 2:
            return math.inf
        return self.scale_s**2 * a / ((a - 1) ** 2 * (a - 2))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        # numpy's pareto is the Lomax form (support from 0); shift and scale to the classical Pareto.
        return self.scale_s * (1.0 + rng.pareto(self.shape, size))


DelayLaw = Annotated[
    ConstantDelay
    | ExponentialDelay
    | LognormalDelay
    | UniformDelay
    | ShiftedExponentialDelay
    | ParetoDelay,
    Field(discriminator="dist"),
    DefaultTag("dist", "exponential"),
]
DELAY_LAWS = ("constant", "exponential", "lognormal", "uniform", "shifted_exponential", "pareto")

# ---------------------------------------------------------------------------------------------------
# Per-client speed multipliers (heterogeneity across clients; fixed for the whole run)


class NoHeterogeneity(Section):
    """All clients run at the same speed (multiplier 1)."""

    dist: Literal["none"] = "none"
    """Selects this variant."""

    def multipliers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.ones(n)


class LognormalHeterogeneity(Section):
    """Multipliers drawn log-normally with mean 1: a few clients much slower than most."""

    dist: Literal["lognormal"] = "lognormal"
    """Selects this variant."""
    sigma: float = Field(0.5, ge=0)
    """Standard deviation of log(multiplier)."""

    def multipliers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(-(self.sigma**2) / 2, self.sigma, n)


class UniformHeterogeneity(Section):
    """Multipliers uniform on [low, high]."""

    dist: Literal["uniform"] = "uniform"
    """Selects this variant."""
    low: PositiveFloat = 0.5
    """Smallest multiplier (fastest client)."""
    high: PositiveFloat = 2.0
    """Largest multiplier (slowest client; must be >= low)."""

    @model_validator(mode="after")
    def _ordered(self) -> UniformHeterogeneity:
        if self.high < self.low:
            raise ValueError(f"high must be >= low, got low={self.low}, high={self.high}")
        return self

    def multipliers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


class ClassHeterogeneity(Section):
    """Speed classes, e.g. FedAST's 25 % slow (1.3), 50 % normal (1.0), 25 % fast (0.7)."""

    dist: Literal["classes"] = "classes"
    """Selects this variant."""
    multipliers_: list[PositiveFloat] = Field([1.3, 1.0, 0.7], alias="multipliers")
    """Duration multiplier of each class."""
    fractions: list[PositiveFloat] = Field(default_factory=lambda: [0.25, 0.5, 0.25])
    """Share of clients in each class (same length as multipliers; must sum to 1)."""

    @model_validator(mode="after")
    def _consistent(self) -> ClassHeterogeneity:
        if len(self.multipliers_) != len(self.fractions):
            raise ValueError("multipliers and fractions must have the same length")
        if abs(sum(self.fractions) - 1.0) > 1e-9:
            raise ValueError(f"fractions must sum to 1, got {sum(self.fractions)}")
        return self

    def multipliers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        counts = np.floor(np.asarray(self.fractions) * n).astype(int)
        counts[0] += n - counts.sum()
        values = np.repeat(np.asarray(self.multipliers_), counts)
        return rng.permutation(values)


class LinearHeterogeneity(Section):
    """FedFix's "F-X" profile: client i takes 1 − i·spread/(n−1) (fastest is ``spread`` faster)."""

    dist: Literal["linear"] = "linear"
    """Selects this variant."""
    spread: float = Field(0.8, ge=0, lt=1)
    """How much faster the fastest client is than the slowest (0.8 = "F-80")."""

    def multipliers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if n == 1:
            return np.ones(1)
        return 1.0 - np.arange(n) * self.spread / (n - 1)


Heterogeneity = Annotated[
    NoHeterogeneity
    | LognormalHeterogeneity
    | UniformHeterogeneity
    | ClassHeterogeneity
    | LinearHeterogeneity,
    Field(discriminator="dist"),
    DefaultTag("dist", "none"),
]

# ---------------------------------------------------------------------------------------------------
# Stragglers, dropout, network


class StragglerConfig(Section):
    """Slow clients: a fixed subset slowed for the whole run, and/or a per-job chance of a slow job."""

    fraction: float = Field(0.0, ge=0, le=1)
    """Share of clients that are stragglers for the whole run."""
    slowdown: float = Field(10.0, ge=1)
    """Factor by which a straggler's (or a slow job's) compute time is multiplied."""
    job_prob: float = Field(0.0, ge=0, le=1)
    """Chance that any one job is slowed by ``slowdown`` (transient stragglers)."""


class DropoutConfig(Section):
    """Lost jobs: the client goes away and no update arrives."""

    prob: float = Field(0.0, ge=0, lt=1)
    """Chance that a job is lost; the server learns of it when the compute would have ended."""


class NetworkConfig(Section):
    """Client–server transfers: each way costs ``latency_s + bytes / bandwidth``."""

    latency_s: float = Field(0.0, ge=0)
    """One-way latency of a transfer, in seconds."""
    bandwidth_mbps: PositiveFloat | None = None
    """Link bandwidth in megabits per second; null means transfers take only the latency."""

    def transfer_s(self, nbytes: int) -> float:
        if self.bandwidth_mbps is None:
            return self.latency_s
        return self.latency_s + nbytes * 8 / (self.bandwidth_mbps * 1e6)


# ---------------------------------------------------------------------------------------------------
# The composed model used by the simulation


class ClientTiming:
    """Draws each job's compute time, network time and whether it is lost.

    Per-client multipliers (heterogeneity × straggler slowdown) are fixed at construction; per-job noise,
    transient stragglers and dropout come from separate streams, so changing one never shifts another.
    """

    def __init__(
        self,
        *,
        compute: DelayLaw,
        heterogeneity: Heterogeneity,
        stragglers: StragglerConfig,
        dropout: DropoutConfig,
        network: NetworkConfig,
        n_clients: int,
        bytes_down: int,
        bytes_up: int,
        streams: SeedStreams,
        extra_multipliers: np.ndarray | None = None,
    ) -> None:
        speed = heterogeneity.multipliers(streams.generator("timing.heterogeneity"), n_clients)
        self.is_straggler = np.zeros(n_clients, dtype=bool)
        n_slow = round(stragglers.fraction * n_clients)
        if n_slow:
            chosen = streams.generator("timing.stragglers").choice(n_clients, n_slow, replace=False)
            self.is_straggler[chosen] = True
        speed = np.where(self.is_straggler, speed * stragglers.slowdown, speed)
        if extra_multipliers is not None:  # e.g. fast Byzantine clients
            speed = speed * extra_multipliers
        self.speed: list[float] = speed.tolist()
        self.compute_law = compute
        noise_rng = streams.generator("timing.compute")
        self._noise = BlockSampler(partial(compute.sample, noise_rng))  # picklable: checkpoints
        self._job_slowdown = stragglers.slowdown
        self._job_prob = stragglers.job_prob
        slow_rng = streams.generator("timing.slow_jobs")
        self._slow_u = BlockSampler(slow_rng.random)
        self._drop_prob = dropout.prob
        drop_rng = streams.generator("timing.dropout")
        self._drop_u = BlockSampler(drop_rng.random)
        self.down_s = network.transfer_s(bytes_down)
        self.up_s = network.transfer_s(bytes_up)
        self.bytes_down = bytes_down
        self.bytes_up = bytes_up

    def compute_s(self, client: int) -> float:
        """Compute time of one job of ``client``, in simulated seconds."""
        t = self.speed[client] * self._noise()
        if self._job_prob and self._slow_u() < self._job_prob:
            t *= self._job_slowdown
        return t

    def mean_job_s(self, client: int) -> float:
        """``E[τ_i]``: the mean round trip of one job of ``client`` (compute including transient
        stragglers, download and upload) — what rate-corrected weights and queueing checks use."""
        slow = 1.0 + self._job_prob * (self._job_slowdown - 1.0)
        return self.speed[client] * self.compute_law.mean * slow + self.down_s + self.up_s

    def dropped(self) -> bool:
        """Whether the next job is lost."""
        return bool(self._drop_prob) and self._drop_u() < self._drop_prob
