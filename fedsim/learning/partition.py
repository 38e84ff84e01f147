"""Partitions: which training samples each client holds. Pure functions of labels and a generator."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, PositiveFloat

from fedsim.config_base import DefaultTag, Section
from fedsim.errors import ScenarioError


class IIDPartition(Section):
    """Shuffle the training set and deal it out evenly."""

    kind: Literal["iid"] = "iid"
    """Selects this variant."""


class DirichletPartition(Section):
    """Label skew: each class is split across clients with proportions drawn from Dirichlet(alpha)."""

    kind: Literal["dirichlet"] = "dirichlet"
    """Selects this variant."""
    alpha: PositiveFloat = 0.5
    """Concentration: small alpha gives each client few classes; large alpha approaches IID."""
    min_samples: int = Field(1, ge=1)
    """Every client holds at least this many samples (the draw is repeated until it does)."""


Partition = Annotated[
    IIDPartition | DirichletPartition, Field(discriminator="kind"), DefaultTag("kind", "dirichlet")
]


def partition_iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float,
    min_samples: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Split each class over clients in Dirichlet(alpha) proportions; redraw until sizes are ok."""
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for idx in by_class:
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(m) for m in merged) >= min_samples:
            return merged
    raise ScenarioError(
        f"could not give every one of {n_clients} clients {min_samples} samples in {max_tries} "
        f"draws; raise alpha, lower clients.count or min_samples",
        path="data.partition.alpha",
        value=alpha,
    )


def make_partition(
    config: IIDPartition | DirichletPartition,
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    if n_clients > len(labels):
        raise ScenarioError(
            f"{n_clients} clients but only {len(labels)} training samples", path="clients.count"
        )
    if isinstance(config, IIDPartition):
        return partition_iid(labels, n_clients, rng)
    return partition_dirichlet(
        labels, n_clients, rng, alpha=config.alpha, min_samples=config.min_samples
    )
