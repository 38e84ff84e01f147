"""Byzantine attacks (ALGORITHMS.md §3.13): pure functions on flat updates.

Three stages, named by each config's ``stage``:

- ``"client"``: run where the Byzantine client trains, so its timing is real. A function of the
  honest delta ``Δ = w_end − w_start``, the model ``w_start`` the job started from, a
  ``torch.Generator`` (on the update's device, seeded from the scenario's attack stream) and the
  attack's parameters, returning the delta the client sends: :func:`sign_flip`, :func:`scaling`,
  :func:`gaussian`, :func:`random_update`, :func:`nullifier`, :func:`infinite`.
- ``"data"``: a transform of the Byzantine client's training labels: :func:`flip_labels`. The client
  then sends the delta it trained honestly on the flipped data.
- ``"server"``: omniscient attacks that need the honest updates of the same aggregation (a FedAvg
  cohort, a FedBuff buffer): :func:`alie`, :func:`ipm`, :func:`mimic`, and the "optimal" ALIE and
  IPM (:func:`optimal_alie_z`, :func:`optimal_ipm_epsilon`), which search their factor against the
  aggregator in use. The server computes one malicious vector from the honest rows and puts it in
  every Byzantine slot. A FedAsync server aggregates one update at a
  time, so there the honest rows are the recent honest updates it has received (a window).

``h`` are honest deltas, ``μ`` their coordinate mean and ``σ`` their coordinate standard deviation.

>>> h = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
>>> ipm(h, epsilon=0.5)
tensor([-1.5000, -2.0000])
>>> sign_flip(torch.tensor([1.0, -2.0]), torch.zeros(2), None)
tensor([-1.,  2.])
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from statistics import NormalDist
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from fedsim.config_base import DefaultTag, Section
from fedsim.errors import ScenarioError
from fedsim.robust.custom import (
    REGISTERED_SOURCES,
    CustomAttackConfig,
    FunctionAttack,
    call_client_attack,
    call_server_attack,
    config_for,
)

Stage = Literal["client", "data", "server"]

# --------------------------------------------------------------------------------------------------
# Client-side attacks: (delta, w_start, generator, *, params) -> delta sent


def sign_flip(
    delta: Tensor, w_start: Tensor, generator: torch.Generator | None, *, scale: float = 1.0
) -> Tensor:
    """Send ``−scale · Δ`` (the reference "bit flip" has ``scale = 1``).

    >>> sign_flip(torch.tensor([1.0, -2.0]), torch.zeros(2), None, scale=4.0)
    tensor([-4.,  8.])
    """
    return -scale * delta


def scaling(
    delta: Tensor, w_start: Tensor, generator: torch.Generator | None, *, factor: float = 10.0
) -> Tensor:
    """Send ``factor · Δ`` (boosting / model replacement, e.g. ``factor = n``).

    >>> scaling(torch.tensor([1.0, -2.0]), torch.zeros(2), None, factor=3.0)
    tensor([ 3., -6.])
    """
    return factor * delta


def gaussian(
    delta: Tensor,
    w_start: Tensor,
    generator: torch.Generator | None,
    *,
    std: float = 200.0,
    add_to_honest: bool = False,
    mean: float = 0.0,
) -> Tensor:
    """Send a draw from ``N(mean, std² I)`` (the honest delta plus that noise if ``add_to_honest``).

    ``mean = 0`` adds nothing (not even ``+ 0.0``), so the draws are those of the zero-mean attack.

    >>> g = torch.Generator().manual_seed(0)
    >>> gaussian(torch.zeros(100_000), torch.zeros(100_000), g, std=2.0).std().round(decimals=1)
    tensor(2.)
    >>> g = torch.Generator().manual_seed(0)
    >>> gaussian(torch.zeros(100_000), torch.zeros(100_000), g, std=2.0, mean=5.0).mean().round()
    tensor(5.)
    """
    noise = std * torch.randn(
        delta.shape, generator=generator, dtype=delta.dtype, device=delta.device
    )
    if mean != 0.0:
        noise = noise + mean
    return delta + noise if add_to_honest else noise


def random_update(
    delta: Tensor, w_start: Tensor, generator: torch.Generator | None, *, std: float = 1.0
) -> Tensor:
    """Send *weights* drawn from ``N(0, std² I)`` (FRAIN's LLM "randomizer"): ``Δ = noise − w_start``.

    >>> w = torch.tensor([5.0, 5.0])
    >>> (w + random_update(torch.zeros(2), w, torch.Generator().manual_seed(0), std=1e-9)).abs().max() < 1e-6
    tensor(True)
    """
    noise = std * torch.randn(
        w_start.shape, generator=generator, dtype=w_start.dtype, device=w_start.device
    )
    return noise - w_start


def nullifier(
    delta: Tensor,
    w_start: Tensor,
    generator: torch.Generator | None,
    *,
    target: Literal["zero_weights", "zero_delta"] = "zero_weights",
) -> Tensor:
    """FRAIN's "nullifier": send all-zero weights, i.e. ``Δ = −w_start`` (or a zero delta).

    >>> nullifier(torch.tensor([0.1, 0.2]), torch.tensor([1.0, -3.0]), None)
    tensor([-1.,  3.])
    >>> nullifier(torch.tensor([0.1, 0.2]), torch.tensor([1.0, -3.0]), None, target="zero_delta")
    tensor([0., 0.])
    """
    return -w_start.to(delta.dtype) if target == "zero_weights" else torch.zeros_like(delta)


def infinite(
    delta: Tensor,
    w_start: Tensor,
    generator: torch.Generator | None,
    *,
    value: float | None = None,
) -> Tensor:
    """ByzFL's "Inf": send ``value`` in every coordinate (``None``: ``+∞``).

    Screening rejects a non-finite update before any aggregator (``rejected``, reason
    ``non_finite``), so ``+∞`` never reaches the model; a huge finite ``value`` passes screening
    unless ``screening.max_norm`` bounds it.

    >>> infinite(torch.tensor([0.1, 0.2]), torch.zeros(2), None)
    tensor([inf, inf])
    """
    return torch.full_like(delta, math.inf if value is None else value)


# --------------------------------------------------------------------------------------------------
# Data attack


def flip_labels(y: Tensor, n_classes: int) -> Tensor:
    """Label flip ``y → C − 1 − y`` (``9 − y`` for ten classes); an involution.

    >>> flip_labels(torch.tensor([0, 3, 9]), 10)
    tensor([9, 6, 0])
    """
    return (n_classes - 1) - y


# --------------------------------------------------------------------------------------------------
# Server-side (omniscient) attacks: honest[n_h, d] -> the vector every Byzantine slot sends


def alie_z(n_total: int, f: int, formula: Literal["paper", "reference"] = "paper") -> float:
    """ALIE's ``z`` for ``n_total`` updates of which ``f`` are Byzantine.

    With ``s = ⌊n/2 + 1⌋ − f`` supporters needed (``n = n_total``), ``z = Φ⁻¹(k/m)`` with

    - ``"paper"`` (Baruch et al. 2019, the default): ``m = n``, ``k = n − s``;
    - ``"reference"`` (EPFL byzantine-robust-noniid-optimizer code): ``m = n − f``, ``k = n − f − s``.

    The formula is infinite when the set has a Byzantine majority (``s ≤ 0``, so ``k ≥ m``: any
    ``z`` passes) and, for the reference formula, when one honest row is left (``k ≤ 0``). An
    asynchronous buffer can be mostly Byzantine by chance, so rather than stop the run the
    numerator is clamped to ``1 ≤ k ≤ m − 1``, the nearest finite case (``z = Φ⁻¹((m − 1)/m)`` for
    a Byzantine majority); with ``m = 1`` (one row) ``z = 0``, and with one honest row ``σ = 0``
    anyway, so ALIE sends ``μ`` whatever ``z``.

    >>> round(alie_z(25, 5), 3), round(alie_z(25, 5, "reference"), 3)
    (0.468, 0.253)
    >>> round(alie_z(20, 4), 3), round(alie_z(20, 4, "reference"), 3)
    (0.385, 0.157)
    >>> round(alie_z(10, 6), 3) == round(alie_z(10, 5), 3) == round(NormalDist().inv_cdf(0.9), 3)
    True
    """
    if not 0 <= f < n_total:
        raise ScenarioError(f"ALIE needs 0 <= f < n, got n={n_total}, f={f}", path="attack.z")
    s = math.floor(n_total / 2 + 1) - f
    if formula == "paper":
        m = n_total
    elif formula == "reference":
        m = n_total - f
    else:
        raise ScenarioError(
            f"must be one of paper, reference, got {formula!r}", path="attack.formula"
        )
    if m == 1:
        return 0.0
    k = min(max(m - s, 1), m - 1)
    return NormalDist().inv_cdf(k / m)


def alie(
    honest: Tensor,
    *,
    n_total: int,
    f: int,
    z: float | None = None,
    formula: Literal["paper", "reference"] = "paper",
) -> Tensor:
    """ "A little is enough" (Baruch et al. 2019): every Byzantine slot sends ``μ − z·σ``.

    ``μ``, ``σ``: per-coordinate mean and sample standard deviation (``n_h − 1`` in the
    denominator, as the reference code; ``σ = 0`` for a single honest row) of the honest rows.
    ``z`` is given or computed by :func:`alie_z` from ``n_total`` (the rows in the aggregation,
    Byzantine included) and ``f`` (the Byzantine rows) with the chosen ``formula``.

    >>> alie(torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]]), n_total=5, f=2, z=1.0)
    tensor([1.0000, 0.5359])
    """
    if honest.ndim != 2 or honest.shape[0] == 0:
        raise ValueError(f"honest must be a non-empty [n, d] tensor, got {tuple(honest.shape)}")
    if z is None:
        z = alie_z(n_total, f, formula)
    elif not math.isfinite(z):
        raise ScenarioError(f"must be a finite number, got {z}", path="attack.z")
    mu = honest.mean(0)
    sigma = honest.std(0, correction=1 if honest.shape[0] > 1 else 0)
    return mu - z * sigma


def ipm(honest: Tensor, *, epsilon: float = 0.1) -> Tensor:
    """Inner-product manipulation (Xie et al. 2020): every Byzantine slot sends ``−ε·μ``.

    Then ``⟨ipm, μ⟩ = −ε‖μ‖² < 0``: the attack points against the honest direction.

    >>> ipm(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), epsilon=0.5)
    tensor([-1.0000, -1.5000])
    """
    if honest.ndim != 2 or honest.shape[0] == 0:
        raise ValueError(f"honest must be a non-empty [n, d] tensor, got {tuple(honest.shape)}")
    if not epsilon > 0:
        raise ScenarioError(f"must be > 0, got {epsilon}", path="attack.epsilon")
    return -epsilon * honest.mean(0)


def mimic(honest: Tensor, *, target: int = 0) -> Tensor:
    """Mimic (Karimireddy, He, Jaggi 2022): every Byzantine slot sends a copy of honest row ``target``.

    The attackers over-represent one honest client's data, which hurts under heterogeneous data
    without ever looking like an outlier. The caller picks ``target``; the algorithms pick the
    row of the honest client ranked first by the run's ``byzantine.mimic`` stream (one ranking
    per run, so the same client is copied whenever it is in the set).

    >>> mimic(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), target=1)
    tensor([3., 4.])
    """
    if honest.ndim != 2 or honest.shape[0] == 0:
        raise ValueError(f"honest must be a non-empty [n, d] tensor, got {tuple(honest.shape)}")
    if not 0 <= target < honest.shape[0]:
        raise ValueError(f"mimic's target row {target} is not one of {honest.shape[0]} honest rows")
    return honest[target].clone()


Aggregate = Callable[[Tensor], Tensor]
"""``aggregate(v)``: the aggregate a set would have if every Byzantine slot sent ``v``."""


def damage(aggregate: Aggregate, v: Tensor, mu: Tensor) -> float:
    """The optimal attacks' objective: ``‖aggregate(v) − μ‖₂`` (ByzFL's), the distance the
    Byzantine vector ``v`` moves the aggregate from the honest mean ``μ``. A non-finite aggregate
    scores ``−∞``: the server rejects such a model (``rejected_models``), so it does no damage."""
    distance = float(torch.linalg.vector_norm((aggregate(v) - mu).to(torch.float64)))
    return distance if math.isfinite(distance) else -math.inf


def line_search(objective: Callable[[float], float], *, high: float, evals: int) -> float:
    """The factor in ``[0, high]`` that maximises ``objective``, with ``evals`` evaluations.

    First an even grid of ``⌈evals/2⌉`` points (``0`` and ``high`` included), then halving steps
    around the best point so far (each tries ``best ± h``) with the evaluations left. The result
    is never worse than the best grid point; ties keep the earlier (smaller) factor. Unlike
    ByzFL's unbounded expansion the range is bounded: against the mean the damage grows without
    limit, and the search then returns ``high``.

    >>> round(line_search(lambda x: -((x - 2.3) ** 2), high=10.0, evals=32), 2)
    2.3
    """
    if not high > 0 or not math.isfinite(high):
        raise ValueError(f"the search range must be a positive finite number, got {high}")
    n_grid = max(2, (evals + 1) // 2)
    best_x, best_y = 0.0, -math.inf
    for i in range(n_grid):
        x = high * i / (n_grid - 1)
        y = objective(x)
        if y > best_y:
            best_x, best_y = x, y
    left = evals - n_grid
    h = high / (n_grid - 1)
    while left > 0 and h > high * 1e-12:
        h /= 2
        center = best_x
        for x in (center - h, center + h):
            if left > 0 and 0.0 <= x <= high:
                left -= 1
                y = objective(x)
                if y > best_y:
                    best_x, best_y = x, y
    return best_x


def optimal_alie_z(
    honest: Tensor, *, aggregate: Aggregate, z_max: float = 10.0, evals: int = 32
) -> float:
    """The ``z ∈ [0, z_max]`` whose ALIE vector ``μ − z·σ`` moves ``aggregate`` farthest from
    ``μ`` (:func:`damage`, :func:`line_search`): ByzFL's Optimal_ALittleIsEnough, fedsim's sign."""
    mu = honest.mean(0)
    sigma = honest.std(0, correction=1 if honest.shape[0] > 1 else 0)
    return line_search(lambda z: damage(aggregate, mu - z * sigma, mu), high=z_max, evals=evals)


def optimal_ipm_epsilon(
    honest: Tensor, *, aggregate: Aggregate, epsilon_max: float = 10.0, evals: int = 32
) -> float:
    """The ``ε ∈ [0, epsilon_max]`` whose IPM vector ``−ε·μ`` moves ``aggregate`` farthest from
    ``μ`` (:func:`damage`, :func:`line_search`): ByzFL's Optimal_InnerProductManipulation."""
    mu = honest.mean(0)
    return line_search(lambda e: damage(aggregate, -e * mu, mu), high=epsilon_max, evals=evals)


# --------------------------------------------------------------------------------------------------
# Scenario configuration


class SignFlipConfig(Section):
    """Send the honest delta negated (and scaled)."""

    stage: ClassVar[Stage] = "client"
    name: Literal["sign_flip"] = "sign_flip"
    scale: float = Field(1.0, gt=0)
    """Send −scale · Δ."""


class ScalingConfig(Section):
    """Send the honest delta scaled up (boosting / model replacement)."""

    stage: ClassVar[Stage] = "client"
    name: Literal["scaling"] = "scaling"
    factor: float = Field(10.0, allow_inf_nan=True)
    """Send factor · Δ (±.inf sends an infinite update, which screening must reject)."""


class GaussianConfig(Section):
    """Send Gaussian noise instead of (or added to) the honest delta."""

    stage: ClassVar[Stage] = "client"
    name: Literal["gaussian"] = "gaussian"
    std: float = Field(200.0, gt=0)
    """Standard deviation of every coordinate of the noise."""
    add_to_honest: bool = False
    """Send Δ + noise instead of the noise alone."""
    mean: float = 0.0
    """Mean of every coordinate of the noise (ByzFL's Gaussian mu; 0 draws exactly as before)."""


class RandomUpdateConfig(Section):
    """Send random weights (FRAIN's randomizer)."""

    stage: ClassVar[Stage] = "client"
    name: Literal["random_update"] = "random_update"
    std: float = Field(1.0, gt=0)
    """The weights sent are N(0, std²) per coordinate."""


class NullifierConfig(Section):
    """Send all-zero weights (FRAIN's nullifier)."""

    stage: ClassVar[Stage] = "client"
    name: Literal["nullifier"] = "nullifier"
    target: Literal["zero_weights", "zero_delta"] = "zero_weights"
    """zero_weights: Δ = −w_start, so the merged model is zero; zero_delta: Δ = 0."""


class InfConfig(Section):
    """Send an infinite (or huge) vector: screening rejects it (reason non_finite)."""

    stage: ClassVar[Stage] = "client"
    name: Literal["inf"] = "inf"
    value: float | None = Field(None, allow_inf_nan=True)
    """Every coordinate sent; null sends +inf (ByzFL's Inf). A huge finite value passes screening unless screening.max_norm bounds it."""


class LabelFlipConfig(Section):
    """Train on flipped labels y → C − 1 − y."""

    stage: ClassVar[Stage] = "data"
    name: Literal["label_flip"] = "label_flip"


class AlieConfig(Section):
    """ "A little is enough": every Byzantine update is μ − z·σ of the honest ones (server-side)."""

    stage: ClassVar[Stage] = "server"
    name: Literal["alie"] = "alie"
    z: float | None = None
    """Standard deviations to move; null computes z from n and f with the formula below (clamped to a finite value when the set has a Byzantine majority)."""
    formula: Literal["paper", "reference"] = "paper"
    """paper: z = Φ⁻¹((n − s)/n) (Baruch et al.); reference: z = Φ⁻¹((n − f − s)/(n − f)) (EPFL code); s = ⌊n/2 + 1⌋ − f."""


class IpmConfig(Section):
    """Inner-product manipulation: every Byzantine update is −ε·μ of the honest ones (server-side)."""

    stage: ClassVar[Stage] = "server"
    name: Literal["ipm"] = "ipm"
    epsilon: float = Field(0.1, gt=0)
    """Scale ε (0.1 in the reference code; large ε such as 100 flips the mean)."""


class MimicConfig(Section):
    """Every Byzantine update copies one honest client's update (server-side, Karimireddy et al. 2022)."""

    stage: ClassVar[Stage] = "server"
    name: Literal["mimic"] = "mimic"


class OptimalAlieConfig(Section):
    """ALIE whose z is searched per aggregation against the aggregator in use (server-side)."""

    stage: ClassVar[Stage] = "server"
    name: Literal["optimal_alie"] = "optimal_alie"
    z_max: float = Field(10.0, gt=0, allow_inf_nan=False)
    """z is searched in [0, z_max] to maximise ‖aggregate − μ‖ (ByzFL's Optimal_ALittleIsEnough)."""
    evals: int = Field(32, ge=2)
    """Aggregations tried per attacked set: a grid of ⌈evals/2⌉ factors, then halving steps."""


class OptimalIpmConfig(Section):
    """IPM whose ε is searched per aggregation against the aggregator in use (server-side)."""

    stage: ClassVar[Stage] = "server"
    name: Literal["optimal_ipm"] = "optimal_ipm"
    epsilon_max: float = Field(10.0, gt=0, allow_inf_nan=False)
    """ε is searched in [0, epsilon_max] to maximise ‖aggregate − μ‖ (ByzFL's Optimal_InnerProductManipulation)."""
    evals: int = Field(32, ge=2)
    """Aggregations tried per attacked set: a grid of ⌈evals/2⌉ factors, then halving steps."""


AttackConfig = (
    SignFlipConfig
    | ScalingConfig
    | GaussianConfig
    | RandomUpdateConfig
    | NullifierConfig
    | InfConfig
    | LabelFlipConfig
    | AlieConfig
    | IpmConfig
    | MimicConfig
    | OptimalAlieConfig
    | OptimalIpmConfig
    | CustomAttackConfig
)
"""Every built-in attack's config; the scenario picks one by ``name`` (the scenario's union also
holds the attacks plugins register: :data:`ATTACK_CONFIGS`)."""

AttackField = Annotated[AttackConfig, Field(discriminator="name"), DefaultTag("name", "sign_flip")]
"""The annotation of the scenario's ``byzantine.attack`` key."""

ATTACKS: dict[str, Callable[..., Tensor]] = {
    "sign_flip": sign_flip,
    "scaling": scaling,
    "gaussian": gaussian,
    "random_update": random_update,
    "nullifier": nullifier,
    "inf": infinite,
    "label_flip": flip_labels,
    "alie": alie,
    "ipm": ipm,
    "mimic": mimic,
    "optimal_alie": optimal_alie_z,
    "optimal_ipm": optimal_ipm_epsilon,
}
"""name → attack function; how it is called depends on its config's ``stage`` (registered attacks
take their keyword arguments from ``kwargs``). ``custom`` names no function: its config's target does."""

ATTACK_CONFIGS: dict[str, type] = {
    cls.model_fields["name"].default: cls for cls in typing.get_args(AttackConfig)
}
"""name → config class: the members of the scenario's ``byzantine.attack`` union, plugins included."""
BUILTIN_ATTACKS = tuple(ATTACK_CONFIGS)


def register_attack(
    name: str,
    fn: Callable[..., Tensor],
    stage: Literal["client", "server"],
    *,
    source: str = "python",
) -> str:
    """Make ``fn`` the attack ``name`` (``byzantine.attack: {name: NAME, kwargs: {...}}``).

    ``stage="client"``: ``fn(delta [d], w_start [d], generator, **kwargs) -> [d]``;
    ``stage="server"``: ``fn(honest [h, d], n_total=, f=, **kwargs) -> [d]``. Registering a name
    again replaces it.
    """
    key = "byzantine.attack.name"
    if not isinstance(name, str) or not name.isidentifier():
        raise ScenarioError(f"{name!r} is not a valid attack name (an identifier)", path=key)
    if name in BUILTIN_ATTACKS:
        raise ScenarioError(f"{name!r} is a built-in attack; choose another name", path=key)
    if stage not in ("client", "server"):
        raise ScenarioError(f"stage must be client or server, got {stage!r}", path=key)
    if not callable(fn):
        raise ScenarioError(f"the attack {name!r} is not callable: {fn!r}", path=key)
    REGISTERED_SOURCES["attacks"][name] = source
    ATTACKS[name] = fn
    ATTACK_CONFIGS[name] = config_for("attacks", name, fn, stage)
    _rebuild_scenario()
    return name


def unregister_attack(name: str) -> None:
    """Remove a registered attack (built-ins stay)."""
    if name in BUILTIN_ATTACKS:
        raise ScenarioError(f"{name!r} is a built-in attack", path="byzantine.attack.name")
    ATTACKS.pop(name, None)
    ATTACK_CONFIGS.pop(name, None)
    REGISTERED_SOURCES["attacks"].pop(name, None)
    _rebuild_scenario()


def _rebuild_scenario() -> None:
    """The ``byzantine.attack`` union: every config of :data:`ATTACK_CONFIGS`."""
    from fedsim.robust.byzantine import ByzantineConfig
    from fedsim.scenario import Scenario

    configs = tuple(ATTACK_CONFIGS.values())
    ByzantineConfig.model_fields["attack"].annotation = typing.Union[configs]  # noqa: UP007
    ByzantineConfig.model_rebuild(force=True)
    Scenario.model_rebuild(force=True)


def client_attack(
    config: AttackConfig, delta: Tensor, w_start: Tensor, generator: torch.Generator | None
) -> Tensor:
    """The delta a Byzantine client sends. Data and server attacks leave it unchanged here.

    >>> client_attack(SignFlipConfig(scale=2.0), torch.tensor([1.0]), torch.zeros(1), None)
    tensor([-2.])
    >>> client_attack(IpmConfig(), torch.tensor([1.0]), torch.zeros(1), None)
    tensor([1.])
    """
    if config.stage != "client":
        return delta
    if isinstance(config, FunctionAttack):
        fn, where = config.function(), config.where()
        return call_client_attack(fn, where, delta, w_start, generator, config.kwargs)
    return ATTACKS[config.name](delta, w_start, generator, **config.model_dump(exclude={"name"}))


def server_attack(
    config: AttackConfig,
    honest: Tensor,
    *,
    n_total: int,
    f: int,
    aggregate: Aggregate | None = None,
    target: int = 0,
) -> Tensor:
    """The vector every Byzantine slot of an aggregation sends, from that aggregation's honest rows.

    ``aggregate(v)``: the aggregate of the set if every Byzantine slot sent ``v``, by the
    aggregator in use (the optimal attacks search against it; None: the plain mean of the honest
    rows and ``f`` copies of ``v``). ``target``: the honest row mimic copies.

    >>> server_attack(IpmConfig(epsilon=1.0), torch.tensor([[2.0], [4.0]]), n_total=3, f=1)
    tensor([-3.])
    """
    if isinstance(config, FunctionAttack) and config.stage == "server":
        fn, where = config.function(), config.where()
        return call_server_attack(fn, where, honest, n_total, f, config.kwargs)
    if isinstance(config, AlieConfig):
        return alie(honest, n_total=n_total, f=f, z=config.z, formula=config.formula)
    if isinstance(config, IpmConfig):
        return ipm(honest, epsilon=config.epsilon)
    if isinstance(config, MimicConfig):
        return mimic(honest, target=target)
    if aggregate is None:
        aggregate = _with_mean(honest, f)
    if isinstance(config, OptimalAlieConfig):
        z = optimal_alie_z(honest, aggregate=aggregate, z_max=config.z_max, evals=config.evals)
        return alie(honest, n_total=n_total, f=f, z=z)
    if isinstance(config, OptimalIpmConfig):
        eps = optimal_ipm_epsilon(
            honest, aggregate=aggregate, epsilon_max=config.epsilon_max, evals=config.evals
        )
        return -eps * honest.mean(0)
    raise ValueError(f"{config.name} is a {config.stage}-side attack, not a server-side one")


def _with_mean(honest: Tensor, f: int) -> Aggregate:
    """The plain mean of ``honest`` and ``f`` copies of ``v`` (optimal attacks called alone)."""
    return lambda v: torch.cat([honest, v.to(honest.dtype).expand(f, -1)]).mean(0)
