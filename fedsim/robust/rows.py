"""What every aggregator and pre-aggregator does to its input rows: check them, weigh them, compare them.

Shared by :mod:`fedsim.robust.aggregators`, :mod:`fedsim.robust.catalogue` and
:mod:`fedsim.robust.preaggregators` so that each rule is written once, on these primitives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22
"""Weighted coordinate-wise statistics sort columns in blocks of at most this many elements."""

DIRECT_DISTANCE_ELEMENTS = 1 << 16
"""Pairwise distances are computed directly (exact) when ``n² · d`` is at most this, else by Gram."""


def prepare(updates: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    """``(updates, coefficients summing to 1 in float64, weights all equal?)`` after shape checks."""
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(
            f"updates must be a non-empty [n, d] tensor, got shape {tuple(updates.shape)}"
        )
    if not updates.is_floating_point():
        raise ValueError(f"updates must be floating point, got {updates.dtype}")
    n = updates.shape[0]
    if weights is None:
        return updates, torch.full((n,), 1.0 / n, dtype=torch.float64, device=updates.device), True
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
    w = weights.to(device=updates.device, dtype=torch.float64)
    total = w.sum()
    if not (torch.isfinite(w).all() and (w >= 0).all() and total > 0):
        shown = weights.tolist() if n <= 8 else f"min {float(w.min())}, sum {float(total)}"
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {shown}")
    return updates, w / total, bool((w == w[0]).all())


def weighted_average(rows: Tensor, coeffs: Tensor) -> Tensor:
    """``Σ c_i · rows_i`` with ``coeffs`` (float64, summing to 1) cast to the rows' dtype."""
    return (coeffs.to(rows.dtype)[:, None] * rows).sum(0)


def subset_average(rows: Tensor, coeffs: Tensor) -> Tensor:
    """The weighted average of ``rows`` with ``coeffs`` renormalised to sum to 1 (the plain average
    where they are all zero: a subset may hold only weightless rows)."""
    total = coeffs.sum()
    if total > 0:
        return weighted_average(rows, coeffs / total)
    return weighted_average(rows, torch.full_like(coeffs, 1.0 / len(coeffs)))


def by_columns(fn: Callable[[Tensor], Tensor], updates: Tensor) -> Tensor:
    """``fn`` applied to blocks of columns (bounded memory for sort-based statistics)."""
    n, d = updates.shape
    step = max(1, CHUNK_ELEMENTS // n)
    if step >= d:
        return fn(updates)
    return torch.cat([fn(updates[:, j : j + step]) for j in range(0, d, step)])


def coordinate_median(updates: Tensor, weights: Tensor | None = None) -> Tensor:
    """Coordinate-wise (weighted) median; for an even split the midpoint of the two middle values.

    With equal weights this is the usual median: the middle value for odd ``n``, the mean of the
    two middle values for even ``n`` (as ``(median(U) − median(−U))/2`` in the reference code). With
    unequal weights it is the weighted median per coordinate: the midpoint of the smallest value
    whose cumulative weight reaches half the total and the smallest one whose cumulative weight
    exceeds it. It stays within the honest range of a coordinate while the Byzantine rows hold less
    than half of the weight.

    >>> coordinate_median(torch.tensor([[1.0, 5.0], [2.0, -1.0], [40.0, 0.0]]))
    tensor([2., 0.])
    >>> coordinate_median(torch.tensor([[1.0], [2.0], [40.0]]), torch.tensor([1.0, 1.0, 3.0]))
    tensor([40.])
    """
    updates, coeffs, uniform = prepare(updates, weights)
    n = updates.shape[0]
    if uniform:
        if n % 2:
            return updates.kthvalue((n + 1) // 2, dim=0).values
        # both middle values in one pass (about twice as fast as two kthvalue calls)
        low = updates.topk(n // 2 + 1, dim=0, largest=False, sorted=True).values
        return (low[-2] + low[-1]) / 2
    return by_columns(functools.partial(_weighted_median, coeffs=coeffs), updates)


def _weighted_median(block: Tensor, coeffs: Tensor) -> Tensor:
    values, order = block.sort(dim=0)
    cumulative = coeffs[order].cumsum(dim=0)
    slack = 1e-9  # cumulative weights are float64 sums of coefficients that add up to 1
    last = block.shape[0] - 1
    lower = (cumulative < 0.5 - slack).sum(0).clamp_(max=last)
    upper = (cumulative <= 0.5 + slack).sum(0).clamp_(max=last)
    return (values.gather(0, lower[None]) + values.gather(0, upper[None]))[0] / 2


def clip(x: Tensor, tau: float) -> Tensor:
    """Rows of ``x`` scaled to norm at most ``tau``: ``x · min(1, τ/‖x‖)`` (zero rows stay zero).

    >>> clip(torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000],
            [0.0000, 0.0000]])
    """
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    # a tensor numerator: ``float / tensor`` multiplies by 1/‖x‖, which overflows for tiny norms
    ratio = torch.full_like(norms, tau) / norms
    return x * torch.where(norms > tau, ratio, torch.ones_like(norms))


def squared_distances(updates: Tensor) -> Tensor:
    """``[n, n]`` squared L2 distances between rows, in float64: exactly (pairwise differences)
    for small inputs, by the Gram matrix (clamped at 0) for large ones.

    >>> squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[ 0., 25.],
            [25.,  0.]], dtype=torch.float64)
    """
    rows = updates.double()
    if rows.shape[0] ** 2 * rows.shape[1] <= DIRECT_DISTANCE_ELEMENTS:
        return (rows[:, None, :] - rows[None, :, :]).square().sum(-1)
    sq = rows.square().sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * (rows @ rows.T)).clamp_(min=0.0)
    return dist.fill_diagonal_(0.0)


def rank(updates: Tensor, scores: Tensor, coeffs: Tensor) -> list[int]:
    """Row indices by increasing score; exact ties broken by the lexicographic order of the rows,
    then (equal rows) by decreasing weight.

    The tie-break makes the choice independent of the order of the rows (permutation invariance).
    With equal scores it is a canonical order of the rows: rules that search subsets relabel the
    rows by it first, so that which of two equally good subsets wins does not depend on the
    order the rows came in.

    >>> rank(torch.tensor([[1.0], [0.0], [1.0]]), torch.zeros(3), torch.tensor([0.2, 0.3, 0.5]))
    [1, 2, 0]
    """
    values, weights = scores.tolist(), coeffs.tolist()
    first = updates[:, 0].tolist()

    def compare(i: int, j: int) -> int:
        if values[i] != values[j]:
            return -1 if values[i] < values[j] else 1
        if first[i] != first[j]:  # the usual case: decided by the first coordinate, no scan
            return -1 if first[i] < first[j] else 1
        differ = (updates[i] != updates[j]).nonzero()
        if len(differ) == 0:
            return (weights[i] < weights[j]) - (weights[i] > weights[j])
        k = int(differ[0, 0])
        return -1 if updates[i, k] < updates[j, k] else 1

    return sorted(range(len(values)), key=functools.cmp_to_key(compare))


def canonical(updates: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
    """``updates`` and ``coeffs`` reordered canonically (:func:`rank` with equal scores)."""
    order = torch.tensor(
        rank(updates, torch.zeros(len(coeffs), dtype=torch.float64), coeffs),
        device=updates.device,
    )
    return updates[order], coeffs[order]


def nearest_coefficients(dist: Tensor, coeffs: Tensor, k: int) -> Tensor:
    """For each row of ``dist`` ``[m, n]``, coefficients (float64, summing to 1) that average the
    ``k`` of the ``n`` candidates at the smallest distances with their weights ``coeffs``.

    Candidates tied at the k-th distance share the places left equally, so the result does not
    depend on the order of the candidates; where every chosen candidate weighs nothing, they count
    equally.

    >>> nearest_coefficients(torch.tensor([[0.0, 1.0, 1.0, 5.0]]), torch.full((4,), 0.25), 2)
    tensor([[0.5000, 0.2500, 0.2500, 0.0000]], dtype=torch.float64)
    """
    dist = dist.double()
    kth = dist.kthvalue(k, dim=1, keepdim=True).values
    closer = dist < kth
    tied = dist == kth
    room = k - closer.sum(1, keepdim=True)
    share = closer.double() + tied.double() * (room / tied.sum(1, keepdim=True))
    w = share * coeffs[None, :]
    total = w.sum(1, keepdim=True)
    return torch.where(total > 0, w / total.where(total > 0, 1.0), share / k)


def nearest_average(dist: Tensor, rows: Tensor, coeffs: Tensor, k: int) -> Tensor:
    """``[m, d]``: for each row of ``dist`` ``[m, n]``, the weighted average of the ``k`` rows of
    ``rows`` ``[n, d]`` at the smallest distances (:func:`nearest_coefficients`).

    >>> d = torch.tensor([[0.0, 1.0, 1.0, 5.0]], dtype=torch.float64)
    >>> nearest_average(d, torch.tensor([[0.0], [2.0], [4.0], [9.0]]), torch.full((4,), 0.25), 2)
    tensor([[1.5000]])
    """
    return nearest_coefficients(dist, coeffs, k).to(rows.dtype) @ rows
