"""The server optimiser: the last stage of the server pipeline (screening → aggregation → here).

Every algorithm with a server step hands the aggregated update ``Δ_t`` (the *pseudo-gradient*,
``w_end − w_start`` averaged: it points downhill, the negative of a gradient) to a
:class:`ServerOptimizer`, which returns the step ``u_t`` and its new state; the model becomes
``w_{t+1} = w_t + u_t``. As in optax, the rule is a pure function of ``(Δ_t, state)`` and the state
is an explicit value (:class:`ServerOptState`, one per server or task), so it can be saved and
restored.

The rules (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2; Hsu et al. 2019 for
FedAvgM), with ``η`` = ``lr``, ``β`` = ``momentum``, ``(β1, β2)`` = ``betas``, ``τ`` = ``eps``:

- ``sgd``:       ``u_t = η Δ_t``  (FedAvg's ``w ← w + η_g Δ``, computed as ``w + (η · Δ)``)
- ``momentum``:  ``b_t = β b_{t−1} + Δ_t`` (``b_0 = Δ_0``), ``u_t = η b_t``  (FedAvgM)
- ``nesterov``:  ``b_t`` as above, ``u_t = η (Δ_t + β b_t)``
- ``adagrad``:   ``m_t = β1 m_{t−1} + (1 − β1) Δ_t``, ``v_t = v_{t−1} + Δ_t²``
- ``adam``:      ``m_t`` as above, ``v_t = β2 v_{t−1} + (1 − β2) Δ_t²``
- ``yogi``:      ``m_t`` as above, ``v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)``
- adaptive ones: ``u_t = η m_t / (√v_t + τ)``, with ``m_{−1} = 0`` and ``v_{−1} = τ²`` (the paper's
  ``v_{−1} ≥ τ²``, at its bound); no bias correction (the paper has none).

Momentum and Nesterov follow ``torch.optim.SGD`` (``dampening = 0``) with the gradient ``−Δ``;
``adagrad`` with ``β1 = 0`` is ``torch.optim.Adagrad`` with ``initial_accumulator_value = τ²``;
``adam`` with ``betas = (0, 0)`` is ``torch.optim.Adam`` with the same betas
(``tests/test_server_optimizer.py`` checks all three).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, PositiveFloat, field_validator, model_validator

from fedsim.config_base import Section, betas_in_range

ServerOptName = Literal["sgd", "momentum", "nesterov", "adam", "yogi", "adagrad"]
ADAPTIVE = ("adam", "yogi", "adagrad")
USES = {
    "momentum": ("momentum", "nesterov"),
    "betas": ADAPTIVE,
    "eps": ADAPTIVE,
}
"""Which optimisers read each key (a value other than its default is refused for another)."""


class ServerOptimizerConfig(Section):
    """The server optimiser applied to the aggregated update (Reddi et al. 2021, FedOpt)."""

    name: ServerOptName = "sgd"
    """sgd (FedAvg's step), momentum (FedAvgM), nesterov, adam (FedAdam), yogi (FedYogi) or
    adagrad (FedAdagrad); see docs/algorithms/server-optimizers.md."""
    lr: PositiveFloat | None = None
    """Server learning rate η. null: the algorithm's own server_lr (1 for fedasync) with sgd,
    momentum and nesterov; adam, yogi and adagrad need it set (the paper tunes it, e.g. 0.01)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """β of momentum and nesterov (0: plain sgd)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """(β1, β2) of adam and yogi (adagrad uses β1 only), each in [0, 1); the paper's 0.9, 0.99."""
    eps: PositiveFloat = 1e-3
    """τ, the adaptivity of adam, yogi and adagrad (added to √v; v starts at τ²); the paper's 1e-3."""

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        return betas_in_range(betas)

    @model_validator(mode="after")
    def _keys_of_this_optimizer(self) -> ServerOptimizerConfig:
        for key, users in USES.items():
            # A default value is every optimiser's (a run's scenario.yaml writes every key).
            default = type(self).model_fields[key].default
            if getattr(self, key) != default and self.name not in users:
                raise ValueError(
                    f"{key} is a key of {' and '.join(users)}, not of {self.name}; remove it"
                )
        if self.name in ADAPTIVE and self.lr is None:
            raise ValueError(f"{self.name} needs lr (the server learning rate η, e.g. 0.01)")
        return self

    @property
    def is_default(self) -> bool:
        """The plain server step of every algorithm (sgd at the algorithm's own server_lr)."""
        return self.name == "sgd" and self.lr is None


@dataclass(slots=True)
class ServerOptState:
    """A server's optimiser state: steps taken, first moment (or momentum buffer) and second
    moment (or accumulator); ``None`` before the first step or where the rule has none."""

    step: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None


class ServerOptimizer:
    """One rule of the module docstring with its resolved learning rate ``lr``."""

    def __init__(self, config: ServerOptimizerConfig, lr: float) -> None:
        self.config = config
        self.name = config.name
        self.lr = float(lr)

    @classmethod
    def of(cls, config: ServerOptimizerConfig, server_lr: float = 1.0) -> ServerOptimizer:
        """``config`` with ``lr: null`` resolved to the algorithm's ``server_lr``."""
        return cls(config, config.lr if config.lr is not None else server_lr)

    @property
    def identity(self) -> bool:
        """``u_t = Δ_t`` exactly (sgd at lr 1): FedAsync then keeps its ``torch.lerp`` mixing."""
        return self.name == "sgd" and self.lr == 1.0

    def init(self) -> ServerOptState:
        return ServerOptState()

    def update(
        self, delta: torch.Tensor, state: ServerOptState
    ) -> tuple[torch.Tensor, ServerOptState]:
        """The step ``u_t`` for the aggregated update ``delta`` and the state after it (a new
        object: ``state`` itself is left as it was, so a step that is refused can be dropped)."""
        cfg, lr = self.config, self.lr
        if self.name == "sgd":
            return lr * delta, ServerOptState(state.step + 1)
        if self.name in ("momentum", "nesterov"):
            beta = cfg.momentum
            buf = delta.clone() if state.m is None else beta * state.m + delta
            direction = delta + beta * buf if self.name == "nesterov" else buf
            return lr * direction, ServerOptState(state.step + 1, buf)
        beta1, beta2 = cfg.betas
        tau = cfg.eps
        m_prev = torch.zeros_like(delta) if state.m is None else state.m
        v_prev = torch.full_like(delta, tau * tau) if state.v is None else state.v
        m = beta1 * m_prev + (1 - beta1) * delta
        sq = delta * delta
        if self.name == "adagrad":
            v = v_prev + sq
        elif self.name == "adam":
            v = beta2 * v_prev + (1 - beta2) * sq
        else:  # yogi
            v = v_prev - (1 - beta2) * sq * torch.sign(v_prev - sq)
        return lr * m / (v.sqrt() + tau), ServerOptState(state.step + 1, m, v)
