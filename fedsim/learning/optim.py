"""The local update rule, one implementation for a single flat vector and for a stack of them.

Every job starts with fresh optimiser state (zero momentum, zero Adam moments, step count 0), so
its state is as much its own as its seed: the sequential trainer keeps it for one vector ``[d]``,
the batched trainer for a stack ``[n, d]`` whose first ``k`` rows are still training. The rules
follow ``torch.optim.SGD`` (``dampening = 0``) and ``torch.optim.Adam`` (L2 ``weight_decay``
added to the gradient); ``tests/test_optim.py`` checks them against those classes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # trainer imports this module
    from fedsim.learning.trainer import TrainingConfig


class LocalOptimizer:
    """``step`` updates parameters in place from their gradients and the job's optimiser state."""

    def __init__(
        self,
        name: str,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if name not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {name!r}; expected sgd or adam")
        self.name, self.lr, self.momentum, self.weight_decay = name, lr, momentum, weight_decay
        self.betas, self.eps = betas, eps

    @classmethod
    def from_config(cls, config: TrainingConfig) -> LocalOptimizer:
        return cls(
            config.optimizer,
            config.lr,
            config.momentum,
            config.weight_decay,
            tuple(config.betas),
            config.eps,
        )

    def step(
        self,
        w: torch.Tensor,
        g: torch.Tensor,
        state: dict[str, torch.Tensor],
        t: int,
        k: int | None = None,
    ) -> None:
        """Local step ``t`` (0-based) on ``w``, in place.

        ``k``: ``w`` and ``g`` are the first ``k`` rows of a stack whose state has a row per job
        (the jobs still training); ``None``: the state has the shape of ``w``.
        """
        if self.weight_decay:
            g = g + self.weight_decay * w
        if self.name == "adam":
            self._adam(w, g, state, t, k)
            return
        if self.momentum:
            if "buf" not in state:
                state["buf"] = g  # torch.optim.SGD: the first buffer is the gradient itself
            else:
                buf = state["buf"] if k is None else state["buf"][:k]
                buf.mul_(self.momentum).add_(g)
                g = buf
        w -= self.lr * g

    def _adam(
        self,
        w: torch.Tensor,
        g: torch.Tensor,
        state: dict[str, torch.Tensor],
        t: int,
        k: int | None,
    ) -> None:
        if "m" not in state:  # step 0: every job of the stack is training
            state["m"] = torch.zeros_like(g)
            state["v"] = torch.zeros_like(g)
        m = state["m"] if k is None else state["m"][:k]
        v = state["v"] if k is None else state["v"][:k]
        beta1, beta2 = self.betas
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        correction1 = 1 - beta1 ** (t + 1)
        correction2 = 1 - beta2 ** (t + 1)
        denom = (v.sqrt() / math.sqrt(correction2)).add_(self.eps)
        w.addcdiv_(m, denom, value=-self.lr / correction1)
