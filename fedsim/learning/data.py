"""Datasets (never downloaded) and the device-resident federated view of them.

All training samples live in one tensor on the device; a client is a set of row indices into it. A
client that is not training holds no tensors at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedsim.config_base import Section
from fedsim.learning.partition import DirichletPartition, Partition, make_partition
from fedsim.rng import SeedStreams


class DataConfig(Section):
    """Which dataset, how much is held out for evaluation, and how the rest is split over clients."""

    dataset: Literal["digits"] = "digits"
    """Dataset name: digits (scikit-learn's 8x8 handwritten digits, 1797 samples, ships offline)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of samples held out as the server's test set."""
    partition: Partition = Field(default_factory=DirichletPartition)
    """How training samples are dealt to clients."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, available without loading it."""

    name: str
    in_features: int
    n_classes: int


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


DATASETS: dict[str, tuple[DatasetInfo, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "digits": (DatasetInfo("digits", 64, 10), _load_digits),
}


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS[name][0]


@dataclass
class FederatedData:
    """Training and test tensors on the device, and each client's row indices into the training set."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    client_indices: list[np.ndarray]

    @property
    def client_sizes(self) -> np.ndarray:
        return np.array([len(ix) for ix in self.client_indices])


def load_federated(
    config: DataConfig, n_clients: int, streams: SeedStreams, device: torch.device
) -> FederatedData:
    info, loader = DATASETS[config.dataset]
    x, y = loader()
    order = streams.generator("data.split").permutation(len(y))
    n_test = round(config.test_fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    parts = make_partition(
        config.partition, y[train], n_clients, streams.generator("data.partition")
    )
    return FederatedData(
        info=info,
        x_train=torch.as_tensor(x[train], device=device),
        y_train=torch.as_tensor(y[train], device=device),
        x_test=torch.as_tensor(x[test], device=device),
        y_test=torch.as_tensor(y[test], device=device),
        client_indices=parts,
    )
