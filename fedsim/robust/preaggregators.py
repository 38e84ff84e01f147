"""Pre-aggregators: maps ``(updates [n, d], weights [n]) -> (updates [m, d], weights [m])`` applied
in order before the aggregator (``aggregator: {name: ..., pre: [{name: nnm}, ...]}``).

They are what make robust aggregators work under heterogeneous data: NNM and bucketing shrink the
honest spread the aggregator sees, ARC and static clipping bound what one row can do. Weights ride
along: NNM, ARC and clipping keep each row's weight, bucketing gives a bucket the sum of its rows'
weights (so the mean after bucketing is still the weighted mean of the rows).

- ``nnm`` (Allouah et al. 2023, "Fixing by mixing"): each row becomes the weighted average of its
  ``n − f`` nearest rows (itself included). Needs ``f < n``.
- ``bucketing`` (Karimireddy, He, Jaggi 2022): rows shuffled by a seeded generator and averaged in
  buckets of ``size`` consecutive rows (the last one may be smaller): ``⌈n/size⌉`` rows out.
- ``arc`` (Allouah et al. 2024, adaptive robust clipping): the ``k = ⌊2f(n − f)/n⌋`` rows of
  largest norm are clipped to the norm of the largest row left alone. Needs ``f < n``.
- ``clipping``: every row scaled to L2 norm at most ``threshold``.

>>> u = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.6, 0.8]])
>>> arc(u, None, f=1)[0]
tensor([[0.6000, 0.8000],
        [0.3000, 0.4000],
        [0.6000, 0.8000]])
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.robust.rows import clip, nearest_average, prepare, squared_distances

Stage = tuple[Tensor, Tensor]
"""What every pre-aggregator returns: rows and their (non-negative, float64) weights."""


def _weights(updates: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(coefficients summing to 1, the weights as given in float64)`` after the shape checks."""
    updates, coeffs, _ = prepare(updates, weights)
    if weights is None:
        return coeffs, torch.ones_like(coeffs)
    return coeffs, weights.to(device=updates.device, dtype=torch.float64)


def _check_f(rule: str, n: int, f: int, key: str = "aggregator.pre") -> None:
    if f < 0:
        raise ScenarioError(f"{rule}: f must be >= 0, got {f}", path=key)
    if not f < n:
        raise ScenarioError(f"{rule} needs f < n, got n={n}, f={f}", path=key)


def nnm(updates: Tensor, weights: Tensor | None = None, *, f: int = 1) -> Stage:
    """Nearest-neighbour mixing: row ``i`` becomes the weighted average of its ``n − f`` nearest
    rows (itself included; rows tied at the boundary share the places left). Weights unchanged.

    >>> nnm(torch.tensor([[0.0], [1.0], [10.0]]), f=1)[0]
    tensor([[0.5000],
            [0.5000],
            [5.5000]])
    """
    coeffs, w = _weights(updates, weights)
    n = updates.shape[0]
    _check_f("NNM", n, f)
    return nearest_average(squared_distances(updates), updates, coeffs, n - f), w


def bucketing(
    updates: Tensor,
    weights: Tensor | None = None,
    *,
    size: int = 2,
    generator: torch.Generator | None = None,
) -> Stage:
    """Rows in a random order (``torch.randperm`` with ``generator``, on the CPU), averaged in
    buckets of ``size`` consecutive rows with their weights; a bucket weighs the sum of its rows'
    weights (ByzFL weighs a last, smaller bucket like the others). ``⌈n/size⌉`` rows out.

    >>> u = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    >>> rows, w = bucketing(u, size=2, generator=torch.Generator().manual_seed(0))
    >>> rows.shape[0], w.tolist(), float((w[:, None] * rows).sum() / w.sum())
    (3, [2.0, 2.0, 1.0], 2.0)
    """
    if size < 1:
        raise ScenarioError(f"bucketing: size must be >= 1, got {size}", path="aggregator.pre")
    if generator is None:
        raise ValueError("bucketing shuffles: give it a torch.Generator (seeded, for a trace)")
    _, w = _weights(updates, weights)
    n = updates.shape[0]
    order = torch.randperm(n, generator=generator).to(updates.device)
    count = math.ceil(n / size)
    bucket = torch.empty(n, dtype=torch.long, device=updates.device)
    bucket[order] = torch.arange(n, device=updates.device) // size
    totals = torch.zeros(count, dtype=torch.float64, device=updates.device).index_add_(0, bucket, w)
    # within a bucket: its rows' weights normalised (equal shares where they all weigh nothing)
    sizes = torch.zeros(count, dtype=torch.float64, device=updates.device).index_add_(
        0, bucket, torch.ones_like(w)
    )
    share = torch.where(
        totals[bucket] > 0, w / totals[bucket].where(totals[bucket] > 0, 1.0), 1.0 / sizes[bucket]
    )
    rows = torch.zeros(count, updates.shape[1], dtype=updates.dtype, device=updates.device)
    rows.index_add_(0, bucket, share.to(updates.dtype)[:, None] * updates)
    return rows, totals


def arc_count(n: int, f: int) -> int:
    """Rows ARC clips among ``n``: ``⌊2f(n − f)/n⌋``, in integers (exact).

    >>> arc_count(10, 2), arc_count(3, 1)
    (3, 1)
    """
    return 2 * f * (n - f) // n


def arc(updates: Tensor, weights: Tensor | None = None, *, f: int = 1) -> Stage:
    """Adaptive robust clipping: the ``k = ⌊2f(n − f)/n⌋`` rows of largest L2 norm are clipped to the
    ``(k + 1)``-th largest norm (rows of equal norm are clipped alike). Weights unchanged.

    >>> arc(torch.tensor([[0.0, 5.0], [1.0, 0.0], [0.0, 2.0]]), f=1)[0]
    tensor([[0., 2.],
            [1., 0.],
            [0., 2.]])
    """
    _, w = _weights(updates, weights)
    n = updates.shape[0]
    _check_f("ARC", n, f)
    k = arc_count(n, f)
    if k == 0:
        return updates, w
    norms = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64)
    threshold = float(norms.topk(k + 1).values[-1])
    return clip(updates, threshold), w


def static_clipping(
    updates: Tensor, weights: Tensor | None = None, *, threshold: float = 1.0
) -> Stage:
    """Every row scaled to L2 norm at most ``threshold``: ``u · min(1, threshold/‖u‖)``.

    >>> static_clipping(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), threshold=1.0)[0]
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    _, w = _weights(updates, weights)
    if not threshold > 0:
        raise ScenarioError(
            f"clipping: threshold must be > 0, got {threshold}", path="aggregator.pre"
        )
    return clip(updates, threshold), w


# --------------------------------------------------------------------------------------------------
# Scenario configuration


class NNMConfig(Section):
    """Nearest-neighbour mixing (Allouah et al. 2023): each update becomes the average of its n − f nearest updates."""

    name: Literal["nnm"] = "nnm"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation; needs f < n."""


class BucketingConfig(Section):
    """Bucketing (Karimireddy et al. 2022): updates shuffled (seeded stream aggregator.pre) and averaged in buckets."""

    name: Literal["bucketing"] = "bucketing"
    size: int = Field(2, ge=1)
    """Updates per bucket; the aggregator then sees ⌈n/size⌉ bucket averages."""


class ARCConfig(Section):
    """Adaptive robust clipping (Allouah et al. 2024): the ⌊2f(n−f)/n⌋ largest updates clipped to the next norm."""

    name: Literal["arc"] = "arc"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation; needs f < n."""


class ClippingConfig(Section):
    """Static clipping: every update scaled to L2 norm at most threshold."""

    name: Literal["clipping"] = "clipping"
    threshold: float = Field(gt=0, allow_inf_nan=True)
    """Largest L2 norm an update keeps (same units as an update's norm; no default: it depends on the model)."""


PreAggregatorConfig = NNMConfig | BucketingConfig | ARCConfig | ClippingConfig
"""Every pre-aggregator's config; picked by ``name``."""

PreAggregatorField = Annotated[PreAggregatorConfig, Field(discriminator="name")]

PRE_AGGREGATORS = {
    "nnm": nnm,
    "bucketing": bucketing,
    "arc": arc,
    "clipping": static_clipping,
}
"""name → pre-aggregator; the config's other fields are its keyword arguments."""


class AggregatorSection(Section):
    """Base of the built-in aggregators' configs: the ``pre`` key they all have."""

    name: str = ""
    pre: list[PreAggregatorField] = Field(default_factory=list)
    """Pre-aggregators applied in order before the aggregator ([] = none; docs/robustness.md): {name: nnm, f: 1} each update becomes the average of its n − f nearest (needs f < n); {name: bucketing, size: 2} shuffled (stream aggregator.pre) and averaged in buckets of size, ⌈n/size⌉ out; {name: arc, f: 1} the ⌊2f(n−f)/n⌋ largest updates clipped to the next norm (needs f < n); {name: clipping, threshold: T} every update clipped to L2 norm T (required)."""


def rows_after(stage: PreAggregatorConfig, n: int) -> int:
    """How many rows ``stage`` hands on from ``n``."""
    return math.ceil(n / stage.size) if isinstance(stage, BucketingConfig) else n


def pre_shortfall(pre: list[PreAggregatorConfig], n: int) -> tuple[ScenarioError | None, int]:
    """``(why the chain cannot run on n rows, naming the key, or None; the rows it hands on)``."""
    for i, stage in enumerate(pre):
        if isinstance(stage, NNMConfig | ARCConfig) and not stage.f < n:
            rule = "NNM" if isinstance(stage, NNMConfig) else "ARC"
            message = f"{rule} needs f < n, got n={n}, f={stage.f}"
            return ScenarioError(message, path=f"aggregator.pre.{i}.f"), n
        n = rows_after(stage, n)
    return None, n


def needs_generator(pre: list[PreAggregatorConfig]) -> bool:
    """Whether the chain draws random numbers (bucketing's shuffle)."""
    return any(isinstance(stage, BucketingConfig) for stage in pre)


def pre_aggregate(
    pre: list[PreAggregatorConfig],
    updates: Tensor,
    weights: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(updates, weights)`` through the pre-aggregators in order (unchanged for ``pre = []``).

    >>> pre_aggregate([ClippingConfig(threshold=1.0)], torch.tensor([[0.0, 2.0]]))[0]
    tensor([[0., 1.]])
    """
    for stage in pre:
        kwargs = stage.model_dump(exclude={"name"})
        if isinstance(stage, BucketingConfig):
            kwargs["generator"] = generator
        updates, weights = PRE_AGGREGATORS[stage.name](updates, weights, **kwargs)
    return updates, weights
