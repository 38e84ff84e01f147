"""Seeded timing models: job-duration laws, client speeds, stragglers, dropout and the network.

Each duration law is a distribution object with ``sample(rng, size)`` and its analytic ``mean`` and
``variance``, so tests compare what the simulator draws with theory through one helper
(``tests/theory.py``). Simulated time only ever comes from here; real compute never advances the clock.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, PositiveFloat, model_validator

from fedsim.config_base import DefaultTag, Period, Section
from fedsim.devices import DeviceProfile, build_device_profile
from fedsim.errors import ScenarioError
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


class PerSampleOption(Section):
    """What ``clients.compute`` adds to a delay law."""

    per_sample: bool = False
    """Job time proportional to the samples it processes: the law is then the compute time per
    sample (seconds), times the job's samples (local steps × mini-batch width, as the trainer
    feeds them: with local_epochs, ceil(epochs · n / b) full mini-batches). Needs training;
    data-size and batch heterogeneity become time heterogeneity. false: the law is the job time."""


def _compute_law(law: type[Section]) -> type[Section]:
    """``law`` with the ``per_sample`` key (a module-level class of its own, so it pickles)."""
    name = law.__name__.replace("Delay", "Compute")
    return type(law)(
        name,
        (PerSampleOption, law),
        {"__doc__": law.__doc__, "__module__": __name__, "__qualname__": name},
    )


ConstantCompute = _compute_law(ConstantDelay)
ExponentialCompute = _compute_law(ExponentialDelay)
LognormalCompute = _compute_law(LognormalDelay)
UniformCompute = _compute_law(UniformDelay)
ShiftedExponentialCompute = _compute_law(ShiftedExponentialDelay)
ParetoCompute = _compute_law(ParetoDelay)
ComputeLaw = Annotated[
    ConstantCompute
    | ExponentialCompute
    | LognormalCompute
    | UniformCompute
    | ShiftedExponentialCompute
    | ParetoCompute,
    Field(discriminator="dist"),
    DefaultTag("dist", "exponential"),
]
"""``clients.compute``: a delay law with ``per_sample``."""

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


def samples_per_job(training: Any, sizes: np.ndarray) -> np.ndarray:
    """Samples one job of each client processes (``clients.compute.per_sample``): its local steps
    times its mini-batch width, as the trainer feeds them. Without replacement the width is
    ``b = min(batch_size, n)`` and, with ``local_epochs``, the steps ``ceil(epochs · n / b)``: a
    last partial batch is topped up from the next pass, so it counts as a full one."""
    n = np.asarray(sizes, dtype=np.int64)
    batch = training.batch_size
    width = np.full_like(n, batch) if training.sampling == "with_replacement" else n.clip(max=batch)
    width[n == 0] = 0  # a client with no data does no work
    if training.local_epochs is None:
        steps = np.full_like(n, training.local_steps)
    else:
        steps = np.array(
            [
                math.ceil(training.local_epochs * k / b) if b else 0
                for k, b in zip(n, width, strict=True)
            ],
            dtype=np.int64,
        )
    return steps * width


class ClientTiming:
    """Draws each job's compute time, network time and whether it is lost.

    Per-client multipliers (heterogeneity × straggler slowdown, or a device profile's speed) are
    fixed at construction; per-job noise, transient stragglers and dropout come from separate
    streams, so changing one never shifts another. A job of client ``i`` computes for
    ``speed_i · work_i · draw``: ``draw`` from the compute law, ``work_i`` its samples per job
    with ``clients.compute.per_sample`` (else 1).
    """

    def __init__(
        self,
        *,
        compute: DelayLaw | ComputeLaw,
        heterogeneity: Heterogeneity,
        stragglers: StragglerConfig,
        dropout: DropoutConfig,
        network: NetworkConfig,
        n_clients: int,
        bytes_down: int,
        bytes_up: int,
        streams: SeedStreams,
        extra_multipliers: np.ndarray | None = None,
        devices: DeviceProfile | None = None,
        job_samples: np.ndarray | None = None,
    ) -> None:
        per_sample = bool(getattr(compute, "per_sample", False))
        if per_sample and job_samples is None:
            raise ScenarioError(
                "per_sample needs the samples of each job: set training (not none)",
                path="clients.compute.per_sample",
            )
        if devices is None:
            speed = heterogeneity.multipliers(streams.generator("timing.heterogeneity"), n_clients)
        else:  # the profile's ms per sample, against the law's mean (per sample) or the file's
            reference = compute.mean * 1000.0 if per_sample else devices.file_mean_ms
            speed = np.asarray(devices.compute_ms, dtype=np.float64) / reference
        self.is_straggler = np.zeros(n_clients, dtype=bool)
        n_slow = round(stragglers.fraction * n_clients)
        if n_slow:
            chosen = streams.generator("timing.stragglers").choice(n_clients, n_slow, replace=False)
            self.is_straggler[chosen] = True
        speed = np.where(self.is_straggler, speed * stragglers.slowdown, speed)
        if extra_multipliers is not None:  # e.g. fast Byzantine clients
            speed = speed * extra_multipliers
        self.speed: list[float] = speed.tolist()
        """Each client's fixed multiplier of the compute law's draw (> 1: slower)."""
        self.work: list[int] | None = None
        """Samples per job of each client (``per_sample``), else None (a job is one draw)."""
        self._scale = self.speed
        if per_sample:
            self.work = np.asarray(job_samples, dtype=np.int64).tolist()
            self._scale = (speed * np.asarray(self.work, dtype=np.float64)).tolist()
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
        self.down_of: list[float] | None = None
        """Per-client download seconds with a device profile (else None: ``down_s`` for all)."""
        self.up_of: list[float] | None = None
        if devices is not None:
            kbps = np.asarray(devices.bandwidth_kbps, dtype=np.float64)
            self.down_of = (network.latency_s + bytes_down * 8 / (kbps * 1000.0)).tolist()
            self.up_of = (network.latency_s + bytes_up * 8 / (kbps * 1000.0)).tolist()
            # the mean, for algorithms that price one transfer without a client (BRAIN's entry)
            self.down_s = float(np.mean(self.down_of))
            self.up_s = float(np.mean(self.up_of))
        self.bytes_down = bytes_down
        self.bytes_up = bytes_up

    @classmethod
    def for_scenario(
        cls,
        scenario: Any,
        *,
        sizes: np.ndarray,
        streams: SeedStreams,
        model_bytes: int,
        extra_multipliers: np.ndarray | None = None,
    ) -> ClientTiming:
        """The timing of ``scenario.clients`` (devices and per-sample work included) for clients
        holding ``sizes`` training samples, each job moving ``model_bytes`` each way."""
        clients = scenario.clients
        per_sample = scenario.training is not None and clients.compute.per_sample
        return cls(
            compute=clients.compute,
            heterogeneity=clients.heterogeneity,
            stragglers=clients.stragglers,
            dropout=clients.dropout,
            network=clients.network,
            n_clients=clients.count,
            bytes_down=model_bytes,
            bytes_up=model_bytes,
            streams=streams,
            extra_multipliers=extra_multipliers,
            devices=build_device_profile(clients.devices, clients.count),
            job_samples=samples_per_job(scenario.training, sizes) if per_sample else None,
        )

    def compute_s(self, client: int) -> float:
        """Compute time of one job of ``client``, in simulated seconds."""
        t = self._scale[client] * self._noise()
        if self._job_prob and self._slow_u() < self._job_prob:
            t *= self._job_slowdown
        return t

    def transfer_s(self, client: int) -> tuple[float, float]:
        """Download and upload seconds of one job of ``client``."""
        if self.down_of is None:
            return self.down_s, self.up_s
        return self.down_of[client], self.up_of[client]

    def mean_job_s(self, client: int) -> float:
        """``E[τ_i]``: the mean round trip of one job of ``client`` (compute including transient
        stragglers, download and upload) — what rate-corrected weights and queueing checks use."""
        slow = 1.0 + self._job_prob * (self._job_slowdown - 1.0)
        down, up = self.transfer_s(client)
        return self._scale[client] * self.compute_law.mean * slow + down + up

    def dropped(self) -> bool:
        """Whether the next job is lost."""
        return bool(self._drop_prob) and self._drop_u() < self._drop_prob
