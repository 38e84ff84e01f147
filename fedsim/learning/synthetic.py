"""FedProx's Synthetic(α, β) benchmark (Li et al. 2020, "Federated Optimization in Heterogeneous
Networks", §5.1), generated from the scenario seed: heterogeneity with two knobs.

Client k draws ``u_k ~ N(0, α)`` and ``B_k ~ N(0, β)``, then its own softmax model
``W_k ~ N(u_k, 1)`` (60 × 10), ``b_k ~ N(u_k, 1)``, and its feature mean ``v_k ~ N(B_k, 1)``; its
samples are ``x ~ N(v_k, Σ)`` with ``Σ = diag(j^-1.2)``, labelled ``y = argmax(W_k x + b_k)``. α
controls how much the clients' *models* differ, β how much their *data* differ; with ``iid: true``
every client shares one ``(W, b)`` and ``v_k = B_k · 1`` (the paper's Synthetic-IID, with α = β = 0).

As in the authors' generator (``generate_niid.py``), the second argument of ``N(·, ·)`` is a
standard deviation, and client k holds ``⌊lognormal(4, 2)⌋ + 50`` samples (a heavy-tailed,
power-law-like spread of sizes). Each client's draws come from its own stream
(``data.synthetic_fedprox``, k), so client k's data do not depend on the number of clients; each
client's samples are split into train and test by ``data.test_fraction`` (every client keeps at
least one training sample), and the ``natural`` partition gives client k its own samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from fedsim.config_base import Section
from fedsim.rng import SeedStreams

STREAM = "data.synthetic_fedprox"
"""Name of the per-client streams (client k draws from ``STREAM, k``)."""


class SyntheticFedProx(Section):
    """FedProx's Synthetic(α, β) (Li et al. 2020): α spreads the clients' models, β their features."""

    alpha: float = Field(1.0, ge=0)
    """Standard deviation of u_k, the mean of client k's W_k and b_k (model heterogeneity)."""
    beta: float = Field(1.0, ge=0)
    """Standard deviation of B_k, the mean of client k's feature mean v_k (data heterogeneity)."""
    iid: bool = False
    """The paper's Synthetic-IID: one W and b shared by every client, and v_k = B_k · 1."""
    n_features: PositiveInt = 60
    """Dimension of x (the paper's 60)."""
    n_classes: int = Field(10, ge=2)
    """Number of classes (the paper's 10)."""
    size_log_mean: float = 4.0
    """Client k holds floor(lognormal(size_log_mean, size_log_sigma)) + min_samples samples."""
    size_log_sigma: float = Field(2.0, ge=0)
    """σ of the log of a client's size (0: every client holds the same number)."""
    min_samples: int = Field(50, ge=2)
    """Samples every client holds at least (the paper's 50), test samples included."""
    max_samples: PositiveInt | None = None
    """Cap on a client's samples (null: none, as in the paper; the tail reaches thousands)."""

    @model_validator(mode="after")
    def _check(self) -> SyntheticFedProx:
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ValueError(
                f"max_samples ({self.max_samples}) is below min_samples ({self.min_samples})"
            )
        return self


@dataclass
class ClientDraw:
    """What client k's stream gave: its priors, its model, its feature mean and its samples."""

    u: float
    b_prior: float
    w: np.ndarray
    """``[n_features, n_classes]``"""
    b: np.ndarray
    """``[n_classes]``"""
    v: np.ndarray
    """``[n_features]``"""
    x: np.ndarray
    y: np.ndarray


def feature_scales(n_features: int) -> np.ndarray:
    """Standard deviation of each coordinate of x about v_k: ``sqrt(j^-1.2)``, j = 1..d."""
    return np.arange(1, n_features + 1, dtype=np.float64) ** -0.6


def shared_model(cfg: SyntheticFedProx, streams: SeedStreams) -> tuple[np.ndarray, np.ndarray]:
    """The ``(W, b)`` every client uses with ``iid: true`` (each drawn from N(0, 1))."""
    rng = streams.generator(f"{STREAM}.shared")
    return rng.normal(0, 1, (cfg.n_features, cfg.n_classes)), rng.normal(0, 1, cfg.n_classes)


def draw_client(
    cfg: SyntheticFedProx,
    streams: SeedStreams,
    k: int,
    shared: tuple[np.ndarray, np.ndarray] | None = None,
) -> ClientDraw:
    """Client k's draws, in a fixed order from its own stream (``shared`` is the iid model)."""
    rng = streams.generator(STREAM, k)
    d, c = cfg.n_features, cfg.n_classes
    size = int(rng.lognormal(cfg.size_log_mean, cfg.size_log_sigma)) + cfg.min_samples
    if cfg.max_samples is not None:
        size = min(size, cfg.max_samples)
    u = float(rng.normal(0, cfg.alpha))
    b_prior = float(rng.normal(0, cfg.beta))
    v = np.full(d, b_prior) if cfg.iid else rng.normal(b_prior, 1, d)
    w, b = rng.normal(u, 1, (d, c)), rng.normal(u, 1, c)
    if shared is not None:
        w, b = shared
    x = v + feature_scales(d) * rng.standard_normal((size, d))
    y = np.argmax(x @ w + b, axis=1)  # softmax is monotone: its argmax is the logits'
    return ClientDraw(u, b_prior, w, b, v, x, y)


@dataclass
class SyntheticSplit:
    """Train and test arrays, the owner of each training sample, and every client's draws."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    owners: np.ndarray
    clients: list[ClientDraw]


def generate(
    cfg: SyntheticFedProx, n_clients: int, streams: SeedStreams, test_fraction: float
) -> SyntheticSplit:
    """Synthetic(α, β) for ``n_clients``; each client's first ``n − n_test`` samples train."""
    shared = shared_model(cfg, streams) if cfg.iid else None
    clients = [draw_client(cfg, streams, k, shared) for k in range(n_clients)]
    xs, ys, owners, x_test, y_test = [], [], [], [], []
    for k, draw in enumerate(clients):
        n = len(draw.y)
        n_train = n - min(round(test_fraction * n), n - 1)
        xs.append(draw.x[:n_train])
        ys.append(draw.y[:n_train])
        owners.append(np.full(n_train, k))
        x_test.append(draw.x[n_train:])
        y_test.append(draw.y[n_train:])
    return SyntheticSplit(
        np.concatenate(xs).astype(np.float32),
        np.concatenate(ys).astype(np.int64),
        np.concatenate(x_test).astype(np.float32),
        np.concatenate(y_test).astype(np.int64),
        np.concatenate(owners),
        clients,
    )
