"""Algorithms, registered by name for the scenario's ``algorithm.name``."""

from __future__ import annotations

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.fedasync import FedAsync, FedAsyncConfig
from fedsim.algorithms.fedavg import FedAvg, FedAvgConfig
from fedsim.algorithms.fedbuff import FedBuff, FedBuffConfig

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedAvg, FedAsync, FedBuff)}
"""name → algorithm class; each class names its config model."""

AlgorithmConfig = FedAvgConfig | FedAsyncConfig | FedBuffConfig

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig"]
