"""Robust aggregators: pure functions ``(updates[n, d], weights[n]) -> [d]`` (ALGORITHMS.md §3.12).

Every aggregator takes the updates of one aggregation stacked as rows (a FedAvg cohort, a FedBuff
buffer, a FedAsync window) and non-negative weights that need not sum to one (``None`` = uniform). It
returns one vector of the same dtype and device. With equal weights each one is the textbook
aggregator; how weights enter is written in each docstring.

Preconditions that depend on the scenario are checked once, at the top of each function, and raise
:class:`~fedsim.errors.ScenarioError` naming the scenario key (``aggregator.f: Krum needs n > 2f+2,
got n=5, f=2``); the config models below check the same bounds when the scenario is parsed, so a bad
file exits with status 2 before the run starts. Wrong shapes or weights are programming errors and
raise ``ValueError``. Inputs must be finite: run :func:`screen_updates` first and aggregate only the
rows it keeps (a NaN row would poison every aggregator, the robust ones included).

Failure semantics, with ``b`` Byzantine rows among ``n`` (equal weights):

- ``mean``: none; one row moves the output anywhere.
- ``coordinate_median``: per coordinate inside the honest range while ``b < n/2``.
- ``trimmed_mean``: per coordinate inside the honest range while ``b ≤ ⌊trim_fraction·n⌋``.
- ``krum``: returns an honest row when the honest rows are close together and the Byzantine ones are
  far (the guarantee of Blanchard et al. needs ``n > 2f + 2`` and ``b ≤ f``); multi-Krum averages the
  ``m`` best-scored rows. ALIE is built to pass it.
- ``geometric_median``: breakdown point 1/2 in weight; moves at most a bounded amount per bad row.
- ``centered_clipping``: moves at most ``iters · tau`` from its centre, whatever the inputs.

**FedAsync through a window.** A FedAsync server sees one update at a time, so a robust aggregator
can only act on a sliding window of the last ``W`` screened updates (each a delta from its own
``w_start``): on every arrival the server moves by ``agg(window)`` instead of by the arrival alone.
That bounds what a minority of the *window* can do, e.g. the median ignores a lone sign-flipped delta.
It cannot give more: (1) the Byzantine share that matters is the share of *arrivals*, so attackers
that are ``s`` times faster hold ``s·f / (s·f + 1 − f)`` of the window, past the breakdown point well
before ``f = 1/2``; (2) each delta stays in the window for ``W`` arrivals, so consecutive steps are
correlated and an attacker's influence per arrival is bounded, not removed; (3) deltas in the window
were computed from different, stale models, so honest spread (and the room ALIE hides in) grows with
staleness; (4) with ``W = 1`` every aggregator is the identity and nothing is gained.

>>> u = torch.tensor([[1.0, 0.0], [2.0, 10.0], [3.0, 2.0], [100.0, -50.0]])
>>> mean(u)
tensor([26.5000, -9.5000])
>>> coordinate_median(u)
tensor([2.5000, 1.0000])
>>> trimmed_mean(u, trim_fraction=0.25)
tensor([2.5000, 1.0000])
>>> krum(torch.tensor([[0.0], [1.0], [2.0], [9.0], [10.0]]), f=1)
tensor([1.])
"""

from __future__ import annotations

import fractions
import functools
import math
import typing
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from fedsim.config_base import DefaultTag, Section
from fedsim.errors import ScenarioError
from fedsim.robust.catalogue import (
    CAFConfig,
    MDAConfig,
    MeamedConfig,
    MoNNAConfig,
    SMEAConfig,
    caf,
    check_majority,
    check_subsets,
    mda,
    meamed,
    monna,
    smea,
)
from fedsim.robust.custom import (
    REGISTERED_SOURCES,
    CustomAggregatorConfig,
    FunctionAggregator,
    call_aggregator,
    config_for,
)
from fedsim.robust.preaggregators import (
    AggregatorSection,
    needs_generator,
    pre_aggregate,
    pre_shortfall,
)
from fedsim.robust.rows import (
    by_columns,
    clip,
    coordinate_median,
    prepare,
    rank,
    squared_distances,
    weighted_average,
)

# --------------------------------------------------------------------------------------------------
# Aggregators


def mean(updates: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted mean ``Σ w_i u_i / Σ w_i``. Not robust: a single row can move it anywhere.

    >>> mean(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), torch.tensor([3.0, 1.0]))
    tensor([1.5000, 3.0000])
    """
    updates, coeffs, _ = prepare(updates, weights)
    return weighted_average(updates, coeffs)


def trimmed_mean(
    updates: Tensor, weights: Tensor | None = None, *, trim_fraction: float = 0.1
) -> Tensor:
    """Per coordinate, drop the ``b = ⌊trim_fraction·n⌋`` smallest and largest values and average the rest.

    ``b`` is computed exactly on the decimal given (:func:`trim_count`: 0.29 of 100 rows is 29).

    The kept values are averaged with their rows' weights (plain mean where those weights are all
    zero; among equal values the lighter rows count as the smaller ones); ``b = 0`` is exactly :func:`mean`. Requires ``0 ≤ trim_fraction < 0.5`` (so ``2b < n``).
    Each output coordinate lies within the range of the honest values when at most ``b`` rows are
    Byzantine, however large they are.

    >>> trimmed_mean(torch.tensor([[1.0], [2.0], [3.0], [4.0], [-90.0]]), trim_fraction=0.2)
    tensor([2.])
    """
    updates, coeffs, uniform = prepare(updates, weights)
    n = updates.shape[0]
    if not trim_fraction >= 0:
        raise ScenarioError(f"must be >= 0, got {trim_fraction}", path="aggregator.trim_fraction")
    if not trim_fraction < 0.5:
        raise ScenarioError(f"must be < 0.5, got {trim_fraction}", path="aggregator.trim_fraction")
    b = trim_count(trim_fraction, n)
    if not 2 * b < n:  # unreachable for trim_fraction < 0.5; kept as the statement of the bound
        raise ScenarioError(
            f"trimmed mean needs 2⌊trim_fraction·n⌋ < n, got n={n}, trim_fraction={trim_fraction}",
            path="aggregator.trim_fraction",
        )
    if b == 0:
        return weighted_average(updates, coeffs)
    if uniform:
        return by_columns(lambda block: block.sort(dim=0).values[b : n - b].mean(0), updates)
    # Equal values are ordered by weight, so which of them is trimmed does not depend on row order.
    by_weight = torch.argsort(coeffs, stable=True)
    trim = functools.partial(_weighted_trimmed, coeffs=coeffs[by_weight], b=b)
    return by_columns(trim, updates[by_weight])


def trim_count(trim_fraction: float, n: int) -> int:
    """``⌊trim_fraction · n⌋`` of the decimal ``trim_fraction`` stands for (its shortest repr), exactly.

    In binary floating point ``0.29 * 100`` is ``28.999999999999996``, whose floor drops one row
    per side; the fraction ``29/100`` of the written decimal does not.

    >>> trim_count(0.29, 100), int(0.29 * 100)
    (29, 28)
    """
    return math.floor(fractions.Fraction(repr(float(trim_fraction))) * n)


def _weighted_trimmed(block: Tensor, coeffs: Tensor, b: int) -> Tensor:
    n = block.shape[0]
    values, order = block.sort(dim=0, stable=True)
    kept = values[b : n - b].double()
    w = coeffs[order[b : n - b]]
    total = w.sum(0)
    weighted = (kept * w).sum(0) / total.where(total > 0, 1.0)
    return weighted.where(total > 0, kept.mean(0)).to(block.dtype)


def check_krum(n: int, *, f: int, m: int = 1) -> None:
    """Raise the scenario error Krum would raise for ``n`` updates (for checks at parse time).

    >>> check_krum(5, f=2)
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: aggregator.f: Krum needs n > 2f+2, got n=5, f=2
    """
    if f < 0:
        raise ScenarioError(f"must be >= 0, got {f}", path="aggregator.f")
    if not n > 2 * f + 2:
        raise ScenarioError(f"Krum needs n > 2f+2, got n={n}, f={f}", path="aggregator.f")
    if not 1 <= m <= n - f:
        raise ScenarioError(
            f"multi-Krum needs 1 <= m <= n-f, got m={m}, n={n}, f={f}", path="aggregator.m"
        )


def krum_scores(updates: Tensor, *, f: int) -> Tensor:
    """Krum score of each row: the sum of its ``n − f − 2`` smallest squared distances to the others.

    Computed in float64; exactly (pairwise differences) for small inputs, by the Gram matrix for
    large ones.

    >>> krum_scores(torch.tensor([[0.0], [1.0], [3.0], [10.0]]), f=0)
    tensor([ 10.,   5.,  13., 130.], dtype=torch.float64)
    """
    n = updates.shape[0]
    check_krum(n, f=f)
    dist = squared_distances(updates).fill_diagonal_(float("inf"))
    return dist.topk(n - f - 2, dim=1, largest=False, sorted=True).values.sum(1)


def krum(updates: Tensor, weights: Tensor | None = None, *, f: int = 1, m: int = 1) -> Tensor:
    """Krum (Blanchard et al. 2017); with ``m > 1`` multi-Krum, the average of the ``m`` best rows.

    The score of row ``i`` is the sum of its ``n − f − 2`` smallest squared distances to other rows
    (:func:`krum_scores`); ``m = 1`` returns the lowest-scored row itself, ``m > 1`` the weighted
    average of the ``m`` lowest-scored rows (the reference code sums them; we divide). Weights do not
    enter the scores. Ties are broken by the rows' lexicographic order, then by larger weight. Requires ``n > 2f + 2`` and
    ``1 ≤ m ≤ n − f``.

    >>> krum(torch.tensor([[0.0], [1.0], [2.0], [9.0], [10.0]]), f=1, m=2)
    tensor([0.5000])
    """
    updates, coeffs, _ = prepare(updates, weights)
    check_krum(updates.shape[0], f=f, m=m)
    chosen = rank(updates, krum_scores(updates, f=f), coeffs)[:m]
    if m == 1:
        return updates[chosen[0]].clone()
    picked = coeffs[chosen]
    picked = picked / picked.sum() if picked.sum() > 0 else torch.full_like(picked, 1.0 / m)
    return weighted_average(updates[chosen], picked)


def geometric_median(
    updates: Tensor,
    weights: Tensor | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    eps: float = 1e-6,
) -> Tensor:
    """Weighted geometric median ``argmin_z Σ w_i ‖z − u_i‖`` by smoothed Weiszfeld (RFA).

    Starts at the weighted mean and repeats ``β_i = w_i / max(eps, ‖z − u_i‖)``, ``z ← Σ β_i u_i / Σ β_i``
    until the objective falls by less than ``tol`` times its value, or ``max_iter`` times. ``eps``
    smooths the objective near the inputs (the reference code uses ``eps = 0.1`` and 8 iterations,
    the RFA paper a tiny ``eps``): if it exceeds every distance, one step returns the mean.

    >>> geometric_median(torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]]))
    tensor([2.])
    >>> u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]], dtype=torch.float64)
    >>> geometric_median(u, tol=1e-12)
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    updates, coeffs, _ = prepare(updates, weights)
    if not tol >= 0:
        raise ScenarioError(f"must be >= 0, got {tol}", path="aggregator.tol")
    if max_iter < 1:
        raise ScenarioError(f"must be >= 1, got {max_iter}", path="aggregator.max_iter")
    if not eps > 0:
        raise ScenarioError(f"must be > 0, got {eps}", path="aggregator.eps")
    alpha = coeffs.to(updates.dtype)
    z = weighted_average(updates, coeffs)
    dist = torch.linalg.vector_norm(updates - z, dim=1)
    objective = float(alpha @ dist)
    for _ in range(max_iter):
        beta = alpha / dist.clamp(min=eps)
        z = (beta / beta.sum()) @ updates
        dist = torch.linalg.vector_norm(updates - z, dim=1)
        previous, objective = objective, float(alpha @ dist)
        if previous - objective <= tol * objective:
            break
    return z


def centered_clipping(
    updates: Tensor,
    weights: Tensor | None = None,
    *,
    tau: float = 10.0,
    iters: int = 3,
    center: Tensor | None = None,
) -> Tensor:
    """Centred clipping (Karimireddy, He, Jaggi 2021): ``v ← v + Σ_i c_i clip_τ(u_i − v)``, ``iters`` times.

    ``c_i = w_i / Σ w`` (``1/n`` for equal weights). ``center`` is the starting point ``v_0``: the
    paper uses the previous aggregate (server momentum), which the caller passes; ``None`` starts
    at the weighted mean (convenient, but the mean is not robust, so the output then is only
    robust up to ``iters · tau`` of movement back from it). The output is within ``iters · tau`` of
    ``v_0``; ``tau = inf, iters = 1`` is the mean, ``tau = 0`` returns ``v_0``.

    >>> u = torch.tensor([[0.0, 0.0], [2.0, 0.0], [100.0, 0.0]])
    >>> centered_clipping(u, tau=1.0, iters=1, center=torch.zeros(2))
    tensor([0.6667, 0.0000])
    """
    updates, coeffs, _ = prepare(updates, weights)
    if not tau >= 0:
        raise ScenarioError(f"must be >= 0, got {tau}", path="aggregator.tau")
    if iters < 1:
        raise ScenarioError(f"must be >= 1, got {iters}", path="aggregator.iters")
    if center is None:
        v = weighted_average(updates, coeffs)
    elif center.shape != updates.shape[1:]:
        raise ValueError(f"center must have shape ({updates.shape[1]},), got {tuple(center.shape)}")
    else:
        v = center.to(device=updates.device, dtype=updates.dtype)
    c = coeffs.to(updates.dtype)
    for _ in range(iters):
        v = v + c @ clip(updates - v, tau)
    return v


# --------------------------------------------------------------------------------------------------
# Screening


def screen_updates(
    updates: Tensor, *, max_norm: float | None = None
) -> tuple[Tensor, list[str | None]]:
    """Rows to keep before any aggregator, and why each other row is rejected.

    A row is rejected as ``"non_finite"`` if it holds a NaN or an infinity, else as ``"norm_bound"``
    if its L2 norm (computed in float64, so huge finite rows do not overflow) exceeds ``max_norm``.
    Returns a boolean keep mask ``[n]`` and one reason per row (``None`` where kept).

    >>> keep, why = screen_updates(torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [30.0, 40.0]]), max_norm=10)
    >>> keep.tolist(), why
    ([True, False, False], [None, 'non_finite', 'norm_bound'])
    """
    if updates.ndim != 2:
        raise ValueError(f"updates must be an [n, d] tensor, got shape {tuple(updates.shape)}")
    if max_norm is not None and not max_norm > 0:
        raise ScenarioError(f"must be > 0, got {max_norm}", path="screening.max_norm")
    finite = torch.isfinite(updates).all(dim=1)
    keep = finite.clone()
    if max_norm is not None:
        norms = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64)
        keep &= norms <= max_norm
    reasons = [
        None if kept else ("non_finite" if not ok else "norm_bound")
        for kept, ok in zip(keep.tolist(), finite.tolist(), strict=True)
    ]
    return keep, reasons


# --------------------------------------------------------------------------------------------------
# Scenario configuration


class MeanConfig(AggregatorSection):
    """Weighted mean of the updates (the default; not robust)."""

    name: Literal["mean"] = "mean"


class CoordinateMedianConfig(AggregatorSection):
    """Coordinate-wise (weighted) median."""

    name: Literal["coordinate_median"] = "coordinate_median"


class TrimmedMeanConfig(AggregatorSection):
    """Coordinate-wise trimmed mean."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    trim_fraction: float = Field(0.1, ge=0, lt=0.5)
    """Per coordinate, drop the ⌊trim_fraction·n⌋ smallest and as many largest values (n = updates aggregated)."""


class KrumConfig(AggregatorSection):
    """Krum; multi-Krum (average of the m best-scored updates) when m > 1."""

    name: Literal["krum"] = "krum"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation; needs n > 2f+2."""
    m: int = Field(1, ge=1)
    """Number of best-scored updates averaged (1 = Krum); at most n − f."""


class GeometricMedianConfig(AggregatorSection):
    """Geometric median (RFA) by smoothed Weiszfeld iterations."""

    name: Literal["geometric_median"] = "geometric_median"
    tol: float = Field(1e-6, ge=0)
    """Stop when the objective Σ w_i‖z − u_i‖ falls by less than tol times its value."""
    max_iter: int = Field(100, ge=1)
    """Iteration cap."""
    eps: float = Field(1e-6, gt=0)
    """Smoothing: distances below eps count as eps (a large eps turns the median into the mean)."""


class CenteredClippingConfig(AggregatorSection):
    """Centred clipping around a starting point."""

    name: Literal["centered_clipping"] = "centered_clipping"
    tau: float = Field(10.0, ge=0, allow_inf_nan=True)
    """Clipping radius τ (same units as an update's L2 norm; .inf gives the mean with iters 1)."""
    iters: int = Field(3, ge=1)
    """Clipping iterations L."""
    center: Literal["previous", "zero", "mean", "median"] = "previous"
    """Starting point: the previous aggregate (zero before the first, as in the paper), zero, the weighted mean, or the coordinate median."""


class ScreeningConfig(Section):
    """Rejection of absurd updates before any aggregator (non-finite updates are always rejected)."""

    max_norm: float | None = Field(None, gt=0)
    """Reject updates whose L2 norm exceeds this (reason norm_bound); null = no bound."""


AggregatorConfig = (
    MeanConfig
    | CoordinateMedianConfig
    | TrimmedMeanConfig
    | KrumConfig
    | GeometricMedianConfig
    | CenteredClippingConfig
    | MDAConfig
    | SMEAConfig
    | CAFConfig
    | MoNNAConfig
    | MeamedConfig
    | CustomAggregatorConfig
)
"""Every built-in aggregator's config; the scenario picks one by ``name`` (the scenario's union also
holds the aggregators plugins register: :data:`AGGREGATOR_CONFIGS`)."""

AggregatorField = Annotated[
    AggregatorConfig, Field(discriminator="name"), DefaultTag("name", "mean")
]
"""The annotation of the scenario's ``aggregator`` key."""

AGGREGATORS: dict[str, Callable[..., Tensor]] = {
    "mean": mean,
    "coordinate_median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "geometric_median": geometric_median,
    "centered_clipping": centered_clipping,
    "mda": mda,
    "smea": smea,
    "caf": caf,
    "monna": monna,
    "meamed": meamed,
}
"""name → aggregator function; the config's other fields are its keyword arguments (registered
aggregators take theirs from ``kwargs``). ``custom`` names no function: its config's target does."""

AGGREGATOR_CONFIGS: dict[str, type] = {
    cls.model_fields["name"].default: cls for cls in typing.get_args(AggregatorConfig)
}
"""name → config class: the members of the scenario's ``aggregator`` union, plugins included."""
BUILTIN_AGGREGATORS = tuple(AGGREGATOR_CONFIGS)


def register_aggregator(name: str, fn: Callable[..., Tensor], *, source: str = "python") -> str:
    """Make ``fn(updates [n, d], weights [n], **kwargs) -> [d]`` the aggregator ``name``
    (``aggregator: {name: NAME, kwargs: {...}}``); registering a name again replaces it."""
    key = "aggregator.name"
    if not isinstance(name, str) or not name.isidentifier():
        raise ScenarioError(f"{name!r} is not a valid aggregator name (an identifier)", path=key)
    if name in BUILTIN_AGGREGATORS:
        raise ScenarioError(f"{name!r} is a built-in aggregator; choose another name", path=key)
    if not callable(fn):
        raise ScenarioError(f"the aggregator {name!r} is not callable: {fn!r}", path=key)
    REGISTERED_SOURCES["aggregators"][name] = source
    AGGREGATORS[name] = fn
    AGGREGATOR_CONFIGS[name] = config_for("aggregators", name, fn)
    _rebuild_scenario()
    return name


def unregister_aggregator(name: str) -> None:
    """Remove a registered aggregator (built-ins stay)."""
    if name in BUILTIN_AGGREGATORS:
        raise ScenarioError(f"{name!r} is a built-in aggregator", path="aggregator.name")
    AGGREGATORS.pop(name, None)
    AGGREGATOR_CONFIGS.pop(name, None)
    REGISTERED_SOURCES["aggregators"].pop(name, None)
    _rebuild_scenario()


def _rebuild_scenario() -> None:
    """The scenario's ``aggregator`` union: every config of :data:`AGGREGATOR_CONFIGS`."""
    from fedsim.scenario import Scenario

    configs = tuple(AGGREGATOR_CONFIGS.values())
    Scenario.model_fields["aggregator"].annotation = typing.Union[configs]  # noqa: UP007
    Scenario.model_rebuild(force=True)


def aggregate(
    config: AggregatorConfig,
    updates: Tensor,
    weights: Tensor | None = None,
    *,
    previous: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Aggregate with the scenario's aggregator: its pre-aggregators in order, then the rule.

    ``previous``: the last aggregate (centred clipping, MoNNA's ``reference: previous``);
    ``generator``: the random stream of a shuffling pre-aggregator (bucketing). A set too small
    for the pipeline raises the rule's scenario error; algorithms check :func:`shortfall` first
    and fall back to the coordinate median (``robust_fallbacks``).

    >>> aggregate(TrimmedMeanConfig(trim_fraction=0.2), torch.tensor([[1.0], [2.0], [3.0], [4.0], [-90.0]]))
    tensor([2.])
    """
    updates, weights = pre_aggregate(config.pre, updates, weights, generator=generator)
    if isinstance(config, FunctionAggregator):
        return call_aggregator(config.function(), config.where(), updates, weights, config.kwargs)
    kwargs = config.model_dump(exclude={"name", "pre"})
    if isinstance(config, CenteredClippingConfig):
        kwargs["center"] = _start(config.center, updates, weights, previous)
    if isinstance(config, MoNNAConfig):
        kwargs["reference"] = previous if config.reference == "previous" else None
    return AGGREGATORS[config.name](updates, weights, **kwargs)


def is_plain_mean(config: AggregatorConfig) -> bool:
    """The mean with no pre-aggregator: algorithms then run their historical code paths
    (bit-identical traces)."""
    return config.name == "mean" and not getattr(config, "pre", ())


def uses_generator(config: AggregatorConfig) -> bool:
    """Whether :func:`aggregate` needs a ``generator`` for ``config`` (bucketing in ``pre``)."""
    return needs_generator(getattr(config, "pre", []))


def shortfall(config: AggregatorConfig, n: int) -> ScenarioError | None:
    """Why ``config`` cannot aggregate ``n`` rows (an error naming the key), or None."""
    error, rows = pre_shortfall(config.pre, n)
    if error is not None:
        return error
    try:
        if isinstance(config, KrumConfig):
            check_krum(rows, f=config.f, m=config.m)
        elif isinstance(config, MDAConfig | SMEAConfig | CAFConfig | MoNNAConfig | MeamedConfig):
            check_majority(_RULES[config.name], rows, config.f)
    except ScenarioError as exc:
        if rows == n:
            return exc
        return ScenarioError(f"{exc.message} (the {n} updates bucketed into {rows})", path=exc.path)
    return None


_RULES = {"mda": "MDA", "smea": "SMEA", "caf": "CAF", "monna": "MoNNA", "meamed": "Meamed"}


def check_aggregator(config: AggregatorConfig, n: int) -> None:
    """Raise the scenario error ``config`` would raise on ``n`` updates (for checks at parse
    time): a precondition of a pre-aggregator or of the rule, or a subset search too large.

    >>> check_aggregator(MDAConfig(f=2), 4)
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: aggregator.f: MDA needs n > 2f, got n=4, f=2
    """
    error = shortfall(config, n)
    if error is not None:
        raise error
    if isinstance(config, MDAConfig | SMEAConfig):
        _, rows = pre_shortfall(config.pre, n)
        check_subsets(_RULES[config.name], rows, config.f, config.max_subsets)


def _start(kind: str, updates: Tensor, weights: Tensor | None, previous: Tensor | None) -> Tensor:
    if kind == "previous" and previous is not None:
        return previous
    if kind in ("previous", "zero"):
        return updates.new_zeros(updates.shape[1])
    if kind == "mean":
        return mean(updates, weights)
    return coordinate_median(updates, weights)
