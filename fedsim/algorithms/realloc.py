"""FedAST's client-budget arithmetic as pure functions (ALGORITHMS.md §3.4, authors' code).

* :func:`split_proportional` deals an integer budget out in proportion to weights (initial
  allocation, Sync-ST's clients per round, a finished task's budget handed to the others);
* :func:`dispersion` is the heterogeneity statistic ``σ̂²_m`` of a window of a task's deltas;
* :func:`reallocate` is Realloc: the busy-client budget ``R_tot`` moved between unfinished tasks
  in proportion to their mean dispersion, in chunks of ``unit`` (the request/buffer ratio ρ).

>>> split_proportional(10, [1.0, 1.0, 2.0])
[3, 2, 5]
>>> reallocate([1.0, 3.0], total=16, unit=4, active=[True, True])
[4, 12]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def split_proportional(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """``total`` as integers ``∝ weights`` (largest remainder; ties to the lower index).

    Entries with weight 0 get 0; the others get at least ``minimum`` first, then the rest of the
    budget in proportion. Deterministic (the authors' code assigns remainders at random).
    """
    if total < 0 or any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError("total and weights must be finite and non-negative")
    live = [i for i, w in enumerate(weights) if w > 0]
    out = [0] * len(weights)
    if not live:
        return out
    if minimum * len(live) > total:
        raise ValueError(f"cannot give {len(live)} entries at least {minimum} of {total}")
    for i in live:
        out[i] = minimum
    rest = total - minimum * len(live)
    weight_sum = sum(weights[i] for i in live)
    exact = {i: rest * weights[i] / weight_sum for i in live}
    for i in live:
        out[i] += math.floor(exact[i])
    left = total - sum(out)
    by_remainder = sorted(live, key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    for i in by_remainder[:left]:
        out[i] += 1
    return out


def dispersion(
    window: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    local_lr: float,
    server_lr: float,
    local_steps: float,
) -> float:
    """Heterogeneity estimate of a task from its last deltas ``window`` (``[n, d]``, n ≥ 2).

    ``σ̂² = η_g · Σ_k ‖Δ_k − Δ̄‖² / (‖Δ̄‖² · n · η_l · τ²)`` over the coordinates in ``mask`` (the
    code skips bias tensors). This is the authors' ``η_l η_g · num / (den · n) / (η_l τ)²`` without
    their extra halving (a constant factor, irrelevant to the proportional allocation). NaN when the
    mean delta is zero (undefined; the caller skips such samples).
    """
    x = window if mask is None else window[:, mask]
    x = x.double()
    mean = x.mean(0)
    num = float(((x - mean) ** 2).sum())
    den = float((mean**2).sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else math.nan
    return server_lr * num / (den * x.shape[0] * local_lr * local_steps**2)


def reallocate(
    dispersions: Sequence[float], total: int, unit: int, active: Sequence[bool]
) -> list[int] | None:
    """New targets ``R_m``: every active task gets ``unit``, the rest goes ``∝ dispersion``.

    The authors' ``redistributeActiveWorks``: start from ``unit`` per active task (0 for finished
    ones), compute ``need_m = ⌊total · σ_m / Σσ⌋ − unit`` and hand out the slack in chunks of
    ``unit`` to the largest remaining need. Here the last chunk is cut to what is left, so the
    result always sums to ``total`` (the code can overshoot when ``total`` is not a multiple of
    ``unit``). Returns None when the dispersions carry no information (sum 0 or not finite): the
    caller keeps its current allocation.
    """
    n_active = sum(bool(a) for a in active)
    if n_active == 0:
        return [0] * len(active)
    if unit < 1 or unit * n_active > total:
        raise ValueError(f"{n_active} active tasks need at least {unit * n_active} of {total}")
    values = [float(d) if a else 0.0 for d, a in zip(dispersions, active, strict=True)]
    weight_sum = sum(values)
    if not math.isfinite(weight_sum) or weight_sum <= 0 or any(v < 0 for v in values):
        return None
    alloc = [unit if a else 0 for a in active]
    need = [
        math.floor(total * v / weight_sum) - unit if a else -math.inf
        for v, a in zip(values, active, strict=True)
    ]
    slack = total - sum(alloc)
    while slack > 0:
        j = max(range(len(need)), key=lambda i: (need[i], -i))
        step = min(unit, slack)
        alloc[j] += step
        need[j] -= unit
        slack -= step
    return alloc
