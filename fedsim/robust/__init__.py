"""Byzantine robustness: robust aggregators, update screening and attacks (pure functions + configs)."""

from __future__ import annotations

from fedsim.robust.aggregators import (
    AGGREGATORS,
    AggregatorConfig,
    AggregatorField,
    ScreeningConfig,
    aggregate,
    centered_clipping,
    check_krum,
    coordinate_median,
    geometric_median,
    krum,
    mean,
    screen_updates,
    trimmed_mean,
)
from fedsim.robust.attacks import (
    ATTACKS,
    AttackConfig,
    AttackField,
    alie,
    alie_z,
    client_attack,
    flip_labels,
    ipm,
    server_attack,
)

__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "AggregatorConfig",
    "AggregatorField",
    "AttackConfig",
    "AttackField",
    "ScreeningConfig",
    "aggregate",
    "alie",
    "alie_z",
    "centered_clipping",
    "check_krum",
    "client_attack",
    "coordinate_median",
    "flip_labels",
    "geometric_median",
    "ipm",
    "krum",
    "mean",
    "screen_updates",
    "server_attack",
    "trimmed_mean",
]
