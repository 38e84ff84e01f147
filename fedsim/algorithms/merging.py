"""Model merging on flat parameter vectors: LERP and SLERP (FRAIN's merge, ALGORITHMS.md §3.7).

``lerp(a, b, t) = (1 − t)·a + t·b`` is ``torch.lerp`` (the same call FedAsync uses, so BRAIN's LERP
merge is bit-identical to FedAsync's mixing).

``slerp(a, b, t)`` interpolates along the great circle between the *directions* of ``a`` and ``b``
and applies the weights to the raw vectors (mergekit style, as in the FRAIN authors' code). The
exact rule, for each segment (a parameter tensor, given by ``bounds``; the whole vector if None):

1. ``n0 = ‖a‖``, ``n1 = ‖b‖``. If either is ``≤ eps`` (``eps = 1e-8``; a nullifier's all-zero
   model) the direction is undefined: with ``zero="lerp"`` (default) the segment is LERPed (``torch.lerp``); with
   ``zero="orthogonal"`` (the authors' code) the zero vector counts as orthogonal, giving
   ``cos(tπ/2)·a + sin(tπ/2)·b``.
2. ``d = ⟨a, b⟩ / (n0·n1)`` clamped to ``[−1, 1]``. If ``|d| > 0.9995`` (near-parallel or
   near-antiparallel: ``sin θ`` too small to divide by) the segment is LERPed.
3. Otherwise ``θ = arccos d``, ``s0 = sin((1 − t)θ)/sin θ``, ``s1 = sin(tθ)/sin θ`` and the
   segment is ``s0·a + s1·b``.

So ``t = 0`` gives ``a``, ``t = 1`` gives ``b``, equal-norm inputs keep their norm, the angle to
``a`` is ``t·θ``, and no input (zero, parallel, antiparallel) gives NaN. The coefficients are
computed in float64 Python arithmetic; only the final combination runs in the tensors' dtype.

>>> e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
>>> slerp(e0, e1, 0.5)
tensor([0.7071, 0.7071])
>>> slerp(e0, torch.zeros(2), 0.25)
tensor([0.7500, 0.0000])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

EPS = 1e-8
"""Norm at or below which a segment counts as the zero vector."""
PARALLEL_DOT = 0.9995
"""``|cos θ|`` above which SLERP falls back to LERP."""

ZeroRule = Literal["lerp", "orthogonal"]


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """``(1 − t)·a + t·b`` (``torch.lerp``)."""
    return torch.lerp(a, b, t)


def slerp_coefficients(
    dot: float, norm_a: float, norm_b: float, t: float, zero: ZeroRule = "lerp"
) -> tuple[float, float] | None:
    """The weights ``(s0, s1)`` with ``slerp = s0·a + s1·b`` for one segment, or None where the
    rule (module doc) falls back to LERP."""
    if norm_a <= EPS or norm_b <= EPS:
        if zero == "lerp":
            return None
        d = 0.0
    else:
        d = min(1.0, max(-1.0, dot / (norm_a * norm_b)))
    if abs(d) > PARALLEL_DOT:
        return None
    theta = math.acos(d)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp(
    a: torch.Tensor,
    b: torch.Tensor,
    t: float,
    bounds: Sequence[int] | None = None,
    *,
    zero: ZeroRule = "lerp",
) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1), segment by segment.

    ``bounds`` are the segment start offsets (``ParamSpec.offsets``: one segment per parameter
    tensor, as FRAIN merges tensor by tensor); None treats the vector as one segment.
    """
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"slerp needs two flat vectors of one shape, got {a.shape}, {b.shape}")
    n = a.numel()
    starts = [0] if not bounds else list(bounds)
    ends = [*starts[1:], n]
    # Segment dot products and norms, one float64 pass per segment (a few per model).
    a64, b64 = a.double(), b.double()
    pieces = []
    for lo, hi in zip(starts, ends, strict=True):
        sa, sb = a64[lo:hi], b64[lo:hi]
        dot = float(sa @ sb)
        coeffs = slerp_coefficients(dot, float(sa.norm()), float(sb.norm()), float(t), zero=zero)
        if coeffs is None:
            pieces.append(torch.lerp(a[lo:hi], b[lo:hi], t))
        else:
            pieces.append(coeffs[0] * a[lo:hi] + coeffs[1] * b[lo:hi])
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def merge(
    kind: Literal["lerp", "slerp"],
    a: torch.Tensor,
    b: torch.Tensor,
    t: float,
    bounds: Sequence[int] | None = None,
    *,
    zero: ZeroRule = "lerp",
) -> torch.Tensor:
    """``lerp`` or ``slerp`` by name (what FRAIN's ``merge`` key selects)."""
    if kind == "lerp":
        return lerp(a, b, t)
    return slerp(a, b, t, bounds, zero=zero)
