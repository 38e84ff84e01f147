"""The local update rule, one implementation for a single flat vector and for a stack of them.

Every job starts with fresh optimiser state (zero momentum, zero Adam moments, step count 0), so
its state is as much its own as its seed: the sequential trainer keeps it for one vector ``[d]``,
the batched trainer for a stack ``[n, d]`` whose first ``k`` rows are still training. The rules
follow ``torch.optim.SGD`` (``dampening = 0``) and ``torch.optim.Adam`` (L2 ``weight_decay``
added to the gradient); ``tests/test_optim.py`` checks them against those classes.

FedProx (Li et al. 2020; also FedAsync's regularised local objective): with ``proximal_mu = μ > 0``
the job minimises ``f(w) + μ/2 ‖w − w_start‖²``, whose gradient adds ``μ (w − w_start)`` to the
loss gradient before the rule above. It acts on the parameters the trainers step (the head of the
flat vector: buffers in its tail are never stepped), for one vector and for a stack alike; the
trainer gives the start with :meth:`LocalOptimizer.begin` (``tests/test_proximal.py``).

SCAFFOLD (Karimireddy et al. 2020): a job may carry a gradient correction ``c − c_i`` (the server's
control variate minus the client's), added to every gradient of the job before the rule above; the
trainer gives it with :meth:`LocalOptimizer.correct` (a row per job on a stack).
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
        proximal_mu: float = 0.0,
    ) -> None:
        if name not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {name!r}; expected sgd or adam")
        self.name, self.lr, self.momentum, self.weight_decay = name, lr, momentum, weight_decay
        self.betas, self.eps = betas, eps
        self.proximal_mu = proximal_mu

    @classmethod
    def from_config(cls, config: TrainingConfig) -> LocalOptimizer:
        return cls(
            config.optimizer,
            config.lr,
            config.momentum,
            config.weight_decay,
            tuple(config.betas),
            config.eps,
            config.proximal_mu,
        )

    def begin(self, state: dict[str, torch.Tensor], start: torch.Tensor) -> None:
        """A job (or a stack of jobs) starts from ``start`` (the parameters ``step`` will update,
        ``[d]`` or ``[n, d]``; not modified afterwards): the anchor of the proximal term."""
        if self.proximal_mu:
            state["anchor"] = start

    def correct(self, state: dict[str, torch.Tensor], correction: torch.Tensor) -> None:
        """Add ``correction`` (``[d]``, or ``[n, d]`` a row per job; not modified) to every
        gradient of the job(s): SCAFFOLD's ``g − c_i + c``."""
        state["correction"] = correction

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
        if "correction" in state:  # SCAFFOLD: g − c_i + c
            correction = state["correction"]
            g = g + (correction if k is None else correction[:k])
        if self.weight_decay:
            g = g + self.weight_decay * w
        if self.proximal_mu:  # ∇ μ/2 ‖w − w_start‖² = μ (w − w_start)
            anchor = state["anchor"] if k is None else state["anchor"][:k]
            g = g + self.proximal_mu * (w - anchor)
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
