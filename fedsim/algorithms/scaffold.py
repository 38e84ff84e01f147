"""SCAFFOLD (Karimireddy et al. 2020): FedAvg's rounds with control variates against client drift.

The server keeps a control variate ``c`` and each client that has taken part its own ``c_i`` (a dict:
a client that never took part has ``c_i = 0`` and costs nothing). Every local step of a job uses the
corrected gradient ``g − c_i + c`` (the correction ``c − c_i`` travels with the job; the local
optimiser adds it, on every trainer path). When a round closes with the reports ``S``:

    c_i⁺ = c_i − c + (x − y_i) / (K_i · η_l)          (the paper's option II)
    x ← x + η_g · Σ_{i∈S} q_i (y_i − x)               (FedAvg's step, through server_optimizer)
    c ← c + Σ_{i∈S} p_i (c_i⁺ − c_i)

``K_i`` is the job's number of local steps, ``η_l`` = ``training.lr``, ``q_i`` FedAvg's weights over
the reports and ``p_i`` the same weights over *all* clients (``1/N`` with ``weighting: uniform``,
the paper's ``|S|/N`` factor; ``n_i / n`` with ``data_size``), so ``c`` stays the weighted mean of
every ``c_i``. Control variates cover the parameters, not buffers.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from fedsim.algorithms.base import weighted_sum
from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.fedavg import FedAvg, FedAvgConfig
from fedsim.clients import Job
from fedsim.errors import ScenarioError


class ScaffoldConfig(FedAvgConfig):
    """SCAFFOLD: synchronous rounds whose local steps are corrected by control variates."""

    name: Literal["scaffold"] = "scaffold"  # type: ignore[assignment]
    """Selects this variant."""
    weighting: Literal["data_size", "uniform"] = "data_size"
    """Weights of the reports in x's step and of the control variates in c's: by the client's
    number of samples (c the n_i-weighted mean of every client's c_i), or equal (1/N: the paper's)."""

    def check_scenario(self, scenario: Any) -> None:
        super().check_scenario(scenario)
        training = scenario.training
        if training is None:
            return
        # Option II reads (x − y_i) / (K·η_l) as the mean corrected gradient of the job: true only
        # when each step moves by η_l times that gradient.
        cv = "scaffold's control variate (x − y_i)/(K·η_l)"
        sgd = f"{cv} is the mean local gradient only for plain sgd steps"
        if training.optimizer != "sgd":
            raise ScenarioError(f"{sgd}; use sgd", path="training.optimizer")
        if training.momentum:
            raise ScenarioError(f"{sgd}; set it to 0", path="training.momentum")
        if training.proximal_mu:
            raise ScenarioError(
                f"{cv} would take in the proximal term, not only the loss gradient; set it to 0",
                path="training.proximal_mu",
            )


class Scaffold(FedAvg):
    name = "scaffold"
    config_class = ScaffoldConfig
    config: ScaffoldConfig

    def __init__(self, config: ScaffoldConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        self.controls: dict[int, torch.Tensor] = {}
        """``c_i`` of each client that has taken part (d floats each)."""
        self.c: torch.Tensor | None = None
        """The server's control variate ``c`` (None in timing-only runs)."""
        if self.learning:
            n_params = ctx.model.spec.n_params
            self.c = torch.zeros(n_params, dtype=self.server.params.dtype, device=ctx.model.device)
            self.local_lr = float(ctx.scenario.training.lr)
            if config.weighting == "uniform":
                self.total_weight = float(ctx.clients.count)
            else:
                self.total_weight = float(ctx.clients.sizes.sum())

    def dispatch(self, client: int) -> Job:
        """FedAvg's dispatch, with the job's gradient correction ``c − c_i``."""
        s = self.server
        correction = None
        if self.c is not None:
            own = self.controls.get(client)
            correction = self.c if own is None else self.c - own
        return self.pool.dispatch(
            client, s.index, s.version, s.params, self._arrived, self._lost, correction=correction
        )

    def step(self, jobs: list[Job], deltas: list[torch.Tensor], raw: list[float]) -> None:
        """FedAvg's server step, then the control variates of the reports and the server's."""
        old_c, version = self.c, self.server.version
        super().step(jobs, deltas, raw)
        if self.server.version == version:  # the new model was refused: nothing changes
            return
        n_params = old_c.shape[0]
        changes = []
        for job, delta in zip(jobs, deltas, strict=True):
            steps = self.ctx.model.trainer.task.steps_for(job.client)
            # c_i⁺ − c_i = −c + (x − y_i)/(K·η_l), with y_i − x = delta
            change = -old_c - delta[:n_params] / (steps * self.local_lr)
            own = self.controls.get(job.client)
            self.controls[job.client] = change if own is None else own + change
            changes.append(change)
        shares = [w / self.total_weight for w in raw]
        self.c = old_c + weighted_sum(changes, shares)

    def summary_extra(self) -> dict[str, Any]:
        """summary.json's ``control_variates``: clients holding a ``c_i`` (those that took part)."""
        return {**super().summary_extra(), "control_variates": len(self.controls)}
