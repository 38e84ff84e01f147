"""Partitions: which training samples each client holds. Pure functions of labels and a generator.

Every partition assigns every training sample to exactly one client. Label-skew partitions
(``dirichlet``, ``shards``) read class labels; for a regression dataset the loader passes quantile
bins of the target instead, so they skew the target's range. ``natural`` needs the dataset to say
who owns each sample (the synthetic datasets generate their samples per client; your own data may
give ``owner_train``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt

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


class ShardsPartition(Section):
    """Label skew: every client holds exactly ``classes_per_client`` classes.

    Each client is given that many distinct classes, always among the classes held by the fewest
    clients so far (ties broken at random), so every class is held by about the same number of
    clients; each class's samples are then split evenly over the clients that hold it.
    """

    kind: Literal["shards"] = "shards"
    """Selects this variant."""
    classes_per_client: PositiveInt = 2
    """Distinct classes each client holds (at most the number of classes)."""


class QuantitySkewPartition(Section):
    """Quantity skew: client sizes follow a power law; labels within a client are IID.

    Each client draws a weight from a Pareto distribution with tail index ``exponent``
    (``P(weight > s) = s^-exponent`` for ``s ≥ 1``); samples beyond ``min_samples`` per client are
    dealt in proportion to the weights.
    """

    kind: Literal["quantity_skew"] = "quantity_skew"
    """Selects this variant."""
    exponent: PositiveFloat = 1.5
    """Pareto tail index of client sizes: smaller is more skewed (a few very large clients)."""
    min_samples: int = Field(1, ge=1)
    """Every client holds at least this many samples."""


class NaturalPartition(Section):
    """The dataset's own owners: client i holds the samples generated for (or written by) client i.

    Only for datasets that have owners: ``synthetic_classification``, ``synthetic_regression`` and
    ``synthetic_fedprox`` generate each client's samples separately; ``npz``, ``import``
    and ``memory`` data with ``owner_train`` name the client of every training sample.
    """

    kind: Literal["natural"] = "natural"
    """Selects this variant."""


PartitionConfig = (
    IIDPartition | DirichletPartition | ShardsPartition | QuantitySkewPartition | NaturalPartition
)
Partition = Annotated[PartitionConfig, Field(discriminator="kind"), DefaultTag("kind", "dirichlet")]


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


def partition_shards(
    labels: np.ndarray, n_clients: int, rng: np.random.Generator, *, classes_per_client: int
) -> list[np.ndarray]:
    """Every client gets exactly ``classes_per_client`` distinct classes (see ShardsPartition)."""
    classes = np.unique(labels)
    k = classes_per_client
    if k > len(classes):
        raise ScenarioError(
            f"{k} classes per client but the dataset has only {len(classes)} classes",
            path="data.partition.classes_per_client",
            value=k,
        )
    if n_clients * k < len(classes):
        raise ScenarioError(
            f"{n_clients} clients × {k} classes leave some of the {len(classes)} classes with no "
            "client (every sample must be held); raise classes_per_client or clients.count",
            path="data.partition.classes_per_client",
            value=k,
        )
    uses = np.zeros(len(classes), dtype=np.int64)
    holders: list[list[int]] = [[] for _ in classes]
    for client in range(n_clients):
        # The k least-held classes, ties at random: holder counts never differ by more than one.
        chosen = np.lexsort((rng.random(len(classes)), uses))[:k]
        uses[chosen] += 1
        for c in chosen:
            holders[c].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if len(idx) < len(holders[c]):
            raise ScenarioError(
                f"class {cls} has {len(idx)} training samples for {len(holders[c])} clients; "
                "lower clients.count or classes_per_client",
                path="data.partition.classes_per_client",
                value=k,
            )
        for client, piece in zip(holders[c], np.array_split(idx, len(holders[c])), strict=True):
            parts[client].append(piece)
    return [np.sort(np.concatenate(p)) for p in parts]


def quantity_skew_sizes(
    n_samples: int,
    n_clients: int,
    rng: np.random.Generator,
    *,
    exponent: float,
    min_samples: int = 1,
) -> np.ndarray:
    """Client sizes summing to ``n_samples``: ``min_samples`` each plus Pareto-weighted shares."""
    spare = n_samples - n_clients * min_samples
    if spare < 0:
        raise ScenarioError(
            f"{n_clients} clients × {min_samples} samples need more than the {n_samples} "
            "training samples",
            path="data.partition.min_samples",
            value=min_samples,
        )
    weights = rng.pareto(exponent, n_clients) + 1.0  # Pareto with scale 1, tail index exponent
    exact = spare * weights / weights.sum()
    sizes = np.floor(exact).astype(np.int64)
    # Largest remainders get the samples lost to rounding down.
    short = spare - int(sizes.sum())
    sizes[np.argsort(sizes - exact, kind="stable")[:short]] += 1
    return sizes + min_samples


def partition_quantity_skew(
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    *,
    exponent: float,
    min_samples: int = 1,
) -> list[np.ndarray]:
    sizes = quantity_skew_sizes(
        len(labels), n_clients, rng, exponent=exponent, min_samples=min_samples
    )
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def partition_natural(owners: np.ndarray, n_clients: int) -> list[np.ndarray]:
    """Client i holds the samples whose owner is i."""
    if owners.size and (owners.min() < 0 or owners.max() >= n_clients):
        raise ScenarioError(
            f"the dataset's owners run from {owners.min()} to {owners.max()}, "
            f"not 0 to {n_clients - 1}",
            path="data.partition.kind",
            value="natural",
        )
    order = np.argsort(owners, kind="stable")
    counts = np.bincount(owners, minlength=n_clients)
    if counts.min(initial=1) == 0:
        raise ScenarioError(
            f"client {int(np.argmin(counts))} owns no training sample; "
            "raise the dataset's n_samples or lower test_fraction",
            path="data.partition.kind",
            value="natural",
        )
    return [np.sort(part) for part in np.split(order, np.cumsum(counts)[:-1])]


def make_partition(
    config: PartitionConfig,
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    *,
    owners: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Each client's sorted indices into ``labels``; every index appears exactly once.

    ``owners`` (the owning client of each sample) is needed by the ``natural`` partition only.
    """
    if n_clients > len(labels):
        raise ScenarioError(
            f"{n_clients} clients but only {len(labels)} training samples", path="clients.count"
        )
    if isinstance(config, IIDPartition):
        return partition_iid(labels, n_clients, rng)
    if isinstance(config, DirichletPartition):
        return partition_dirichlet(
            labels, n_clients, rng, alpha=config.alpha, min_samples=config.min_samples
        )
    if isinstance(config, ShardsPartition):
        return partition_shards(
            labels, n_clients, rng, classes_per_client=config.classes_per_client
        )
    if isinstance(config, QuantitySkewPartition):
        return partition_quantity_skew(
            labels, n_clients, rng, exponent=config.exponent, min_samples=config.min_samples
        )
    if isinstance(config, NaturalPartition):
        if owners is None:
            raise ScenarioError(
                "this dataset has no natural owners; use iid, dirichlet, shards or quantity_skew",
                path="data.partition.kind",
                value="natural",
            )
        return partition_natural(np.asarray(owners), n_clients)
    raise TypeError(f"unknown partition config {config!r}")
