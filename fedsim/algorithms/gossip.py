"""Gossip maths shared by DFL and D-SGD: mixing with what actually arrived, the random-r operator of
the single-global-merge paper and its schedules of r over training progress.

Pure functions of arrays and generators, so each can be tested alone (ALGORITHMS.md §3.8, §3.10).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, NonNegativeFloat

from fedsim.config_base import Section

EDGE_TOL = 1e-9
"""Progress within this of a schedule's edge counts as on it: π = t / rounds and point1 +
window_size are rounded differently (0.1 + 0.05 > 15 / 100), which would otherwise give windows of
the same width a different number of rounds."""


def received_mixing(W: np.ndarray, inbox: list[dict[int, object]]) -> np.ndarray:
    """``W`` restricted to the messages that arrived: weight ``W[i, j]`` on a sender ``j`` whose
    model did not reach ``i`` (link or server down) moves to ``W[i, i]``, so rows still sum to 1
    and a server never mixes a model it does not hold.

    >>> received_mixing(np.full((2, 2), 0.5), [{1: "m"}, {}]).tolist()
    [[0.5, 0.5], [0.0, 1.0]]
    """
    return np.stack([received_row(W[i], i, got) for i, got in enumerate(inbox)])


def received_row(row: np.ndarray, i: int, got: dict[int, object]) -> np.ndarray:
    """Row ``i`` of :func:`received_mixing` alone (an asynchronous peer mixes by itself).

    >>> received_row(np.array([0.25, 0.5, 0.25]), 1, {0: "m"}).tolist()
    [0.25, 0.75, 0.0]
    """
    out = np.array(row, dtype=float)
    for j in np.flatnonzero(out > 0):
        if j != i and int(j) not in got:
            out[i] += out[j]
            out[j] = 0.0
    return out


def random_r_matrix(n: int, r: float, rng: np.random.Generator) -> np.ndarray:
    """The random topology of arXiv 2507.06542 (authors' code): node ``i`` keeps itself, takes
    ``⌊r⌋`` distinct random others plus one more with probability ``r − ⌊r⌋``, and averages
    uniformly over that set.

    Row-stochastic, not symmetric: ``W[i, j] > 0`` means ``i`` receives ``j``'s model. ``r ≥ n − 1``
    is full averaging (the global merge). Draws from ``rng`` in node order.

    >>> random_r_matrix(2, 1.0, np.random.default_rng(0)).tolist()  # r = n − 1: everyone
    [[0.5, 0.5], [0.5, 0.5]]
    """
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    W = np.zeros((n, n))
    if r >= n - 1:
        W[:] = 1.0 / n
        return W
    whole = math.floor(r)
    frac = r - whole
    for i in range(n):
        k = whole + int(rng.random() < frac) if frac > 0 else whole
        others = np.delete(np.arange(n), i)
        chosen = rng.choice(others, size=min(k, n - 1), replace=False) if k else []
        members = [i, *(int(j) for j in chosen)]
        W[i, members] = 1.0 / len(members)
    return W


class RSchedule(Section):
    """How many extra random neighbours ``r`` each node averages with, over training progress π.

    π is the fraction of communication rounds done (round t of R has π = t/R, t = 1…R).
    """

    kind: Literal["fixed", "linear", "cosine", "truncate", "truncate_v2"] = "fixed"
    """fixed: r_start always; linear / cosine: from r_start at π = 0 to r_end at π = 1;
    truncate: r_start before point1, r_end from point1 on; truncate_v2: r_end only for π in
    [point1, point1 + window_size), r_start elsewhere."""
    r_start: NonNegativeFloat = 0.2
    """r at the start (and throughout with kind fixed); 0.2 = one random peer about every fifth round."""
    r_end: NonNegativeFloat = 0.2
    """r at the end (linear, cosine), after point1 (truncate) or inside the window (truncate_v2);
    servers − 1 means full averaging."""
    point1: float = Field(0.997, ge=0, le=1)
    """Progress at which truncate switches to r_end, or where truncate_v2's window opens."""
    window_size: float = Field(0.05, gt=0, le=1)
    """Width of truncate_v2's window, in progress units."""

    def at(self, progress: float) -> float:
        """r at progress π ∈ [0, 1]."""
        a, b = self.r_start, self.r_end
        if self.kind == "fixed":
            return a
        if self.kind == "linear":
            return a + (b - a) * progress
        if self.kind == "cosine":
            return b + (a - b) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "truncate":
            return a if progress < self.point1 - EDGE_TOL else b
        start = self.point1 - EDGE_TOL
        inside = start <= progress < start + self.window_size
        return b if inside else a
