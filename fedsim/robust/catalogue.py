"""The rest of ByzFL's robust aggregators: MDA, SMEA, CAF, MoNNA and Meamed.

Same contract as :mod:`fedsim.robust.aggregators`: pure functions ``(updates [n, d], weights [n] |
None) -> [d]`` of the input's dtype, preconditions raising :class:`~fedsim.errors.ScenarioError`
naming the scenario key. Each needs an honest majority, ``n > 2f``.

Where ByzFL picks an arbitrary winner among equals (``argpartition``, the first subset found) these
pick one that does not depend on the order of the rows: subset searches enumerate the rows in a
canonical order (:func:`~fedsim.robust.rows.canonical`), and rows tied at the boundary of a
"closest k" selection share the places left equally. Where ByzFL estimates a largest eigenvalue
with one power iteration from a random vector, these compute it exactly from the ``n × n`` Gram
matrix (``λ_max(XᵀX) = λ_max(XXᵀ)``), so the result is deterministic and needs no random stream.

>>> u = torch.tensor([[0.0], [1.0], [2.0], [100.0]])
>>> mda(u, f=1), smea(u, f=1), meamed(u, f=1)
(tensor([1.]), tensor([1.]), tensor([1.]))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.robust.preaggregators import AggregatorSection
from fedsim.robust.rows import (
    by_columns,
    canonical,
    coordinate_median,
    nearest_average,
    nearest_coefficients,
    prepare,
    squared_distances,
    subset_average,
)

MAX_SUBSETS = 100_000
"""Default cap on the subsets MDA and SMEA enumerate (``C(n, f)``)."""

_BATCH_ELEMENTS = 1 << 22
"""Subset searches evaluate subsets in batches of at most this many float64 elements."""


def check_majority(rule: str, n: int, f: int) -> None:
    """Raise the scenario error of ``rule`` unless ``n > 2f`` (and ``f ≥ 0``).

    >>> check_majority("MDA", 4, 2)
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: aggregator.f: MDA needs n > 2f, got n=4, f=2
    """
    if f < 0:
        raise ScenarioError(f"must be >= 0, got {f}", path="aggregator.f")
    if not n > 2 * f:
        raise ScenarioError(f"{rule} needs n > 2f, got n={n}, f={f}", path="aggregator.f")


def check_subsets(rule: str, n: int, f: int, max_subsets: int) -> None:
    """Raise unless the ``C(n, f)`` subsets a brute-force search visits are at most ``max_subsets``.

    >>> check_subsets("SMEA", 100, 5, 100_000)
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: aggregator.max_subsets: SMEA would search C(100, 5) = 75,287,520 subsets (max_subsets 100,000); lower f or n, or raise max_subsets
    """
    count = math.comb(n, f)
    if count > max_subsets:
        raise ScenarioError(
            f"{rule} would search C({n}, {f}) = {count:,} subsets (max_subsets {max_subsets:,}); "
            "lower f or n, or raise max_subsets",
            path="aggregator.max_subsets",
        )


def _best_subset(n: int, f: int, batch: int, score: Callable[[Tensor], Tensor]) -> Tensor:
    """The keep mask ``[n]`` of the subset of ``n − f`` rows of smallest ``score``.

    Every set of ``f`` rows to leave out is visited in lexicographic order, ``batch`` at a time:
    ``score(keep [B, n] bool) -> [B]``. The first of equal scores wins, which on canonically
    ordered rows does not depend on the order the rows came in.
    """
    combos = itertools.combinations(range(n), f)
    best, best_keep = math.inf, None
    while chunk := list(itertools.islice(combos, batch)):
        dropped = torch.tensor(chunk, dtype=torch.long).reshape(len(chunk), f)
        keep = torch.ones(len(chunk), n, dtype=torch.bool).scatter_(1, dropped, False)
        values = score(keep)
        k = int(values.argmin())
        if float(values[k]) < best:
            best, best_keep = float(values[k]), keep[k]
    return best_keep


def mda(
    updates: Tensor, weights: Tensor | None = None, *, f: int = 1, max_subsets: int = MAX_SUBSETS
) -> Tensor:
    """Minimum-diameter averaging (El Mhamdi et al. 2020): the weighted average of the ``n − f`` rows
    whose largest pairwise distance is smallest.

    ``argmin_{|S| = n−f} max_{i,j∈S} ‖u_i − u_j‖`` over all ``C(n, f)`` subsets (at most
    ``max_subsets``); weights enter the average only. The diameter of a subset is the largest
    pairwise distance not touching a left-out row, so each subset costs ``O(f·n)`` after one sort
    of the pairs. Requires ``n > 2f``.

    >>> mda(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [30.0, 30.0]]), f=1)
    tensor([0.3333, 0.3333])
    """
    updates, coeffs, _ = prepare(updates, weights)
    n = updates.shape[0]
    check_majority("MDA", n, f)
    check_subsets("MDA", n, f, max_subsets)
    rows, coeffs = canonical(updates, coeffs)
    dist = squared_distances(rows).cpu()
    i, j = torch.triu_indices(n, n, offset=1)
    if len(i) == 0:  # a single row
        return rows[0].clone()
    order = dist[i, j].argsort(descending=True, stable=True)
    # a left-out set touches at most f·(n−1) pairs: the diameter is among the first f·(n−1)+1
    top = order[: f * (n - 1) + 1]
    pi, pj, pd = i[top], j[top], dist[i[top], j[top]]

    def diameter(keep: Tensor) -> Tensor:
        untouched = keep[:, pi] & keep[:, pj]
        first = untouched.double().argmax(1)  # the largest pair inside the subset
        return torch.where(untouched.any(1), pd[first], 0.0)

    best_keep = _best_subset(n, f, max(1, _BATCH_ELEMENTS // len(top)), diameter)
    kept = best_keep.to(rows.device)
    return subset_average(rows[kept], coeffs[kept])


def _centred_gram(updates: Tensor, coeffs: Tensor) -> Tensor:
    """Gram matrix ``XXᵀ`` (float64) of the rows minus their weighted mean (covariances do not
    depend on the origin; centring first keeps the Gram products small)."""
    x = updates.double()
    x = x - coeffs @ x
    return x @ x.T


def _largest_eigenvalues(gram: Tensor, a: Tensor) -> Tensor:
    """``λ_max`` of the covariance ``Σ_i a_i (x_i − μ_a)(x_i − μ_a)ᵀ`` (``a`` sums to 1 per batch
    row, ``μ_a = Σ a_i x_i``) from the Gram matrices ``[B, m, m]`` of the rows and ``a [B, m]``."""
    ga = gram @ a[..., None]  # [B, m, 1]
    aga = (a[..., None, :] @ ga)[..., 0]  # [B, 1]
    centred = gram - ga - ga.transpose(-1, -2) + aga[..., None]
    root = a.clamp(min=0).sqrt()
    scaled = root[..., :, None] * centred * root[..., None, :]
    return torch.linalg.eigvalsh(scaled)[..., -1]


def smea(
    updates: Tensor, weights: Tensor | None = None, *, f: int = 1, max_subsets: int = MAX_SUBSETS
) -> Tensor:
    """Smallest-maximum-eigenvalue averaging (Allouah et al. 2023): the weighted average of the
    ``n − f`` rows whose covariance has the smallest largest eigenvalue.

    ``argmin_{|S| = n−f} λ_max(Σ_{i∈S} a_i (u_i − μ_S)(u_i − μ_S)ᵀ)`` with ``a`` the subset's
    weights normalised (``1/(n−f)`` for equal weights, ByzFL's rule), over all ``C(n, f)`` subsets
    (at most ``max_subsets``). ``λ_max`` is computed exactly from the subset's ``(n−f) × (n−f)``
    Gram matrix. Requires ``n > 2f``.

    >>> smea(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [9.0, -9.0]]), f=1)
    tensor([0.6667, 0.6667])
    """
    updates, coeffs, _ = prepare(updates, weights)
    n = updates.shape[0]
    check_majority("SMEA", n, f)
    check_subsets("SMEA", n, f, max_subsets)
    rows, coeffs = canonical(updates, coeffs)
    gram = _centred_gram(rows, coeffs).cpu()
    c = coeffs.cpu()
    m = n - f

    def spread(keep: Tensor) -> Tensor:
        kept = torch.arange(n).expand(len(keep), n)[keep].reshape(len(keep), m)
        a = c[kept]
        total = a.sum(1, keepdim=True)
        a = torch.where(total > 0, a / total.where(total > 0, 1.0), 1.0 / m)
        return _largest_eigenvalues(gram[kept[:, :, None], kept[:, None, :]], a)

    best_keep = _best_subset(n, f, max(1, _BATCH_ELEMENTS // (4 * m * m)), spread)
    kept = best_keep.to(rows.device)
    return subset_average(rows[kept], coeffs[kept])


def caf(updates: Tensor, weights: Tensor | None = None, *, f: int = 1) -> Tensor:
    """Covariance-bound agnostic filter (Allouah, Guerraoui, Stephan 2025).

    Row weights ``c`` start at the input weights scaled to sum to ``n``. Repeatedly: ``μ_c`` is the
    ``c``-weighted mean, ``(λ, v)`` the largest eigenpair of the ``c``-weighted covariance,
    ``τ_i = ((u_i − μ_c)·v)²``, and ``c_i ← c_i (1 − τ_i / max_{c_j > 0} τ_j)`` (the most outlying
    row along ``v`` still weighing something loses all its weight, so there are at most ``n``
    steps), until ``Σ c ≤ n − 2f``. Returns the ``μ_c`` of smallest ``λ`` among
    the starting weights and every weighting with ``Σ c > n − 2f`` (so ``f = 0`` gives the mean).
    Each step costs ``O(n³)`` on the Gram matrix, computed once. Requires ``n > 2f``.

    >>> caf(torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0], [40.0, 0.0]]), f=1)
    tensor([0., 0.])
    """
    updates, coeffs, _ = prepare(updates, weights)
    n = updates.shape[0]
    check_majority("CAF", n, f)
    rows, coeffs = canonical(updates, coeffs)
    gram = _centred_gram(rows, coeffs)
    c = coeffs * n
    best, best_c = math.inf, c
    while True:
        a = c / c.sum()
        value = float(_largest_eigenvalues(gram[None], a[None])[0])
        if value < best:
            best, best_c = value, c
        if not c.sum() > n - 2 * f:
            break
        tau = _projections(gram, a)
        tau_max = tau[c > 0].max()  # rows filtered out already do not set the scale
        if not tau_max > 0:  # every row on the mean along v: nothing left to filter
            break
        c = (c * (1 - tau / tau_max)).clamp_(min=0)
        if not c.sum() > n - 2 * f:
            break
    return subset_average(rows, best_c)


def _projections(gram: Tensor, a: Tensor) -> Tensor:
    """``τ_i = ((x_i − μ_a)·v)²`` for the top eigenvector ``v`` of the ``a``-weighted covariance,
    computed in the span of the rows: ``v ∝ Xcᵀ(√a ⊙ e)`` for the top eigenvector ``e`` of
    ``√a Gc √a`` (``Gc`` the Gram matrix of the rows centred at ``μ_a``)."""
    ga = gram @ a
    centred = gram - ga[:, None] - ga[None, :] + a @ ga
    root = a.clamp(min=0).sqrt()
    _, vectors = torch.linalg.eigh(root[:, None] * centred * root[None, :])
    coef = root * vectors[:, -1]
    along = centred @ coef  # (x_i − μ)·(Xcᵀ coef)
    norm2 = coef @ along  # ‖Xcᵀ coef‖²
    return along.square() / norm2 if norm2 > 0 else torch.zeros_like(along)


def monna(
    updates: Tensor, weights: Tensor | None = None, *, f: int = 1, reference: Tensor | None = None
) -> Tensor:
    """MoNNA (Farhadkhani et al. 2023): the weighted average of the ``n − f`` rows nearest to a
    reference point.

    ByzFL's reference is a row known to be honest (a peer's own vector); a server has none, so
    ``reference`` is given by the caller (the previous aggregate) and defaults to the coordinate
    median of the rows. Rows tied at the ``(n − f)``-th distance share the places left equally.
    Requires ``n > 2f``.

    >>> monna(torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]]), f=1)
    tensor([1.5000])
    """
    updates, coeffs, _ = prepare(updates, weights)
    n = updates.shape[0]
    check_majority("MoNNA", n, f)
    if reference is None:
        reference = coordinate_median(updates, weights)
    elif reference.shape != updates.shape[1:]:
        raise ValueError(
            f"reference must have shape ({updates.shape[1]},), got {tuple(reference.shape)}"
        )
    diff = updates.double() - reference.to(device=updates.device, dtype=torch.float64)
    dist = diff.square().sum(1)
    return nearest_average(dist[None], updates, coeffs, n - f)[0]


def meamed(updates: Tensor, weights: Tensor | None = None, *, f: int = 1) -> Tensor:
    """Mean around the median (Xie, Koyejo, Gupta 2018): per coordinate, the weighted average of
    the ``n − f`` values closest to the coordinate's (weighted) median.

    Values tied at the ``(n − f)``-th distance (``1`` and ``3`` around a median ``2``) share the
    places left equally, where ByzFL takes whichever ``argpartition`` returns. ``f = 0`` is the
    mean. Requires ``n > 2f``.

    >>> meamed(torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 6.0], [90.0, 0.0], [2.5, 0.0]]), f=2)
    tensor([2.5000, 0.0000])
    """
    updates, coeffs, _ = prepare(updates, weights)
    n = updates.shape[0]
    check_majority("Meamed", n, f)

    def block_meamed(block: Tensor) -> Tensor:
        values = block.double()
        dist = (values - coordinate_median(block, weights).double()).abs()
        share = nearest_coefficients(dist.T, coeffs, n - f)  # [columns, n]
        return (share * values.T).sum(1).to(block.dtype)

    return by_columns(block_meamed, updates)


# --------------------------------------------------------------------------------------------------
# Scenario configuration


class MDAConfig(AggregatorSection):
    """Minimum-diameter averaging: the average of the n − f updates of smallest diameter (brute force over C(n, f) subsets)."""

    name: Literal["mda"] = "mda"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation; needs n > 2f."""
    max_subsets: int = Field(MAX_SUBSETS, ge=1)
    """Refuse (one-line error) an aggregation that would search more than this many subsets C(n, f)."""


class SMEAConfig(AggregatorSection):
    """Smallest-maximum-eigenvalue averaging: the average of the n − f updates whose covariance has the smallest top eigenvalue (brute force over C(n, f) subsets)."""

    name: Literal["smea"] = "smea"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation; needs n > 2f."""
    max_subsets: int = Field(MAX_SUBSETS, ge=1)
    """Refuse (one-line error) an aggregation that would search more than this many subsets C(n, f)."""


class CAFConfig(AggregatorSection):
    """Covariance-bound agnostic filter: down-weights updates along the top covariance direction, returns the least spread weighted mean."""

    name: Literal["caf"] = "caf"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation (filtering stops after 2f of weight); needs n > 2f."""


class MoNNAConfig(AggregatorSection):
    """MoNNA: the average of the n − f updates nearest to a reference point."""

    name: Literal["monna"] = "monna"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation; needs n > 2f."""
    reference: Literal["median", "previous"] = "median"
    """The reference point: the coordinate median of the updates, or the previous aggregate (the median before the first)."""


class MeamedConfig(AggregatorSection):
    """Mean around the median: per coordinate, the average of the n − f values closest to the median."""

    name: Literal["meamed"] = "meamed"
    f: int = Field(1, ge=0)
    """Assumed number of Byzantine updates per aggregation; needs n > 2f."""
