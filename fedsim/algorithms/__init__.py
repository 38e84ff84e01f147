"""Algorithms, registered by name for the scenario's ``algorithm.name``."""

from __future__ import annotations

from fedsim.algorithms.async_fedavg import AsyncFedAvg, AsyncFedAvgConfig
from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.brain import Brain, BrainConfig, Frain, FrainConfig
from fedsim.algorithms.dfl import DFL, DFLConfig
from fedsim.algorithms.drpga import Drpga, DrpgaConfig
from fedsim.algorithms.dsgd import DSGD, DSGDConfig
from fedsim.algorithms.fedast import FedAst, FedAstConfig
from fedsim.algorithms.fedasync import FedAsync, FedAsyncConfig
from fedsim.algorithms.fedavg import FedAvg, FedAvgConfig
from fedsim.algorithms.fedbuff import FedBuff, FedBuffConfig
from fedsim.algorithms.fedbuff_c import FedBuffC, FedBuffCConfig
from fedsim.algorithms.fedfix import FedFix, FedFixConfig
from fedsim.algorithms.modest import Modest, ModestConfig
from fedsim.algorithms.sync_st import SyncSt, SyncStConfig

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls
    for cls in (
        *(FedAvg, FedAsync, FedBuff),  # the classics
        *(FedFix, AsyncFedAvg, FedBuffC),  # Fraboni et al.
        *(Brain, Frain),  # committee-scored, seed 000
        *(FedAst, SyncSt),  # multi-task, seed 002
        *(DFL, DSGD, Modest),  # multi-server and decentralized, seeds 001 and 003
        Drpga,  # partial delayed averaging, seed 004
    )
}
"""name → algorithm class; each class names its config model."""

AlgorithmConfig = (
    FedAvgConfig
    | FedAsyncConfig
    | FedBuffConfig
    | FedFixConfig
    | AsyncFedAvgConfig
    | FedBuffCConfig
    | DrpgaConfig
    | ModestConfig
    | DFLConfig
    | DSGDConfig
    | BrainConfig
    | FrainConfig
    | FedAstConfig
    | SyncStConfig
)

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig"]
