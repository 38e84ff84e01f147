"""Algorithms, registered by name for the scenario's ``algorithm.name``."""

from __future__ import annotations

import typing

from fedsim.algorithms.async_fedavg import AsyncFedAvg
from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.brain import Brain, Frain
from fedsim.algorithms.dfl import DFL
from fedsim.algorithms.drpga import Drpga
from fedsim.algorithms.dsgd import DSGD
from fedsim.algorithms.fedast import FedAst
from fedsim.algorithms.fedasync import FedAsync
from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedbuff import FedBuff
from fedsim.algorithms.fedbuff_c import FedBuffC
from fedsim.algorithms.fedfix import FedFix
from fedsim.algorithms.modest import Modest
from fedsim.algorithms.scaffold import Scaffold
from fedsim.algorithms.sync_st import SyncSt

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls
    for cls in (
        *(FedAvg, FedAsync, FedBuff),  # the classics
        *(FedFix, AsyncFedAvg, FedBuffC),  # Fraboni et al.
        *(Brain, Frain),  # committee-scored, seed 000
        *(FedAst, SyncSt),  # multi-task, seed 002
        *(DFL, DSGD, Modest),  # multi-server and decentralized, seeds 001 and 003
        Drpga,  # partial delayed averaging, seed 004
        Scaffold,  # control variates (Karimireddy et al. 2020)
    )
}
"""name → algorithm class; each class names its config model."""

AlgorithmConfig = typing.Union[tuple(cls.config_class for cls in ALGORITHMS.values())]  # noqa: UP007
"""The scenario's ``algorithm`` section: every registered algorithm's config, tagged by ``name``
(derived from :data:`ALGORITHMS`; :mod:`fedsim.plugins` adds plugins to both)."""

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig"]
