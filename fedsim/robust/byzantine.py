"""The scenario's ``byzantine`` section: which clients attack, how, and how fast.

Byzantine clients are drawn once per run from the named stream ``byzantine.choice`` (or listed
explicitly). Client-side attacks transform the delta a Byzantine job sends when the server reads it;
``label_flip`` trains the client on flipped labels; server-side attacks (ALIE, IPM) replace the
Byzantine rows of the set being aggregated (a FedAvg round's reports, a FedBuff buffer).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from fedsim.config_base import Section
from fedsim.robust.attacks import AttackField, SignFlipConfig


class ByzantineConfig(Section):
    """Byzantine (adversarial) clients."""

    fraction: float = Field(0, ge=0, lt=1)
    """Fraction of the clients that are Byzantine, drawn once per run (round(fraction·count) clients)."""
    clients: list[int] | None = None
    """Explicit Byzantine client indices (instead of fraction; not both)."""
    attack: AttackField = Field(default_factory=SignFlipConfig)
    """What the Byzantine clients do (name + its parameters)."""
    speed: PositiveFloat = 1.0
    """Compute-time multiplier of the Byzantine clients (< 1: fast attackers)."""
    window: PositiveInt = 10
    """Recent updates FedAsync keeps for its robust aggregation window and for ALIE/IPM."""

    @model_validator(mode="after")
    def _one_choice(self) -> ByzantineConfig:
        if self.clients is not None and self.fraction > 0:
            raise ValueError("byzantine: set fraction or clients, not both")
        if self.clients is not None and any(c < 0 for c in self.clients):
            raise ValueError("byzantine.clients: indices must be >= 0")
        return self

    def choose(self, n_clients: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask [n_clients] of the Byzantine clients."""
        mask = np.zeros(n_clients, dtype=bool)
        if self.clients is not None:
            bad = [c for c in self.clients if c >= n_clients]
            if bad:
                from fedsim.errors import ScenarioError

                raise ScenarioError(
                    f"client index {bad[0]} out of range (count {n_clients})",
                    path="byzantine.clients",
                )
            mask[self.clients] = True
            return mask
        k = round(self.fraction * n_clients)
        if k:
            mask[rng.choice(n_clients, size=k, replace=False)] = True
        return mask
