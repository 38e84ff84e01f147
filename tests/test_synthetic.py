"""FedProx's Synthetic(α, β) (fedsim.learning.synthetic) against what its generator implies.

The statistics are checked against the generative model itself: with α = 0 every client's model is
centred on 0, with α > 0 the spread of the client means of W_k is √(α² + 1/(d·c)); the same for
the feature means v_k and β; the labels are the argmax of each client's own affine map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedsim
from fedsim.errors import ScenarioError
from fedsim.learning.data import DataConfig, dataset_info, load_federated
from fedsim.learning.synthetic import SyntheticFedProx, draw_client, feature_scales, generate
from fedsim.rng import SeedStreams

CPU = torch.device("cpu")


def _config(**kw) -> SyntheticFedProx:
    return SyntheticFedProx(**kw)


def test_same_seed_same_data_and_client_k_independent_of_client_count():
    cfg = _config(alpha=0.5, beta=0.5)
    a = generate(cfg, 10, SeedStreams(3), 0.2)
    b = generate(cfg, 10, SeedStreams(3), 0.2)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    more = generate(cfg, 12, SeedStreams(3), 0.2)
    for k in range(10):
        assert np.array_equal(a.clients[k].x, more.clients[k].x)
    other = generate(cfg, 10, SeedStreams(4), 0.2)
    assert not np.array_equal(a.clients[0].w, other.clients[0].w)


def test_shapes_sizes_and_natural_partition():
    config = DataConfig(dataset="synthetic_fedprox", partition={"kind": "natural"})
    data = load_federated(config, 20, SeedStreams(0), CPU)
    assert data.x_train.shape[1] == 60 and data.info.n_classes == 10
    assert dataset_info(config).in_features == 60
    sizes = np.array(
        [len(d.y) for d in generate(config.synthetic_fedprox, 20, SeedStreams(0), 0.2).clients]
    )
    assert (sizes >= 50).all() and sizes.max() > 2 * sizes.min()  # heavy-tailed, at least 50
    # client k holds exactly the training share of its own samples, and every sample is someone's
    n_test = [min(round(0.2 * n), n - 1) for n in sizes]
    assert [len(ix) for ix in data.client_indices] == [
        n - t for n, t in zip(sizes, n_test, strict=True)
    ]
    assert len(data.y_test) == sum(n_test)
    assert int(data.y_train.max()) < 10 and int(data.y_train.min()) >= 0


def test_labels_are_argmax_of_each_clients_own_model():
    cfg = _config(alpha=1.0, beta=1.0, n_features=8, n_classes=4)
    split = generate(cfg, 5, SeedStreams(1), 0.0)
    start = 0
    for k, c in enumerate(split.clients):
        logits = c.x @ c.w + c.b
        assert np.array_equal(c.y, logits.argmax(1))
        rows = split.owners == k
        assert np.allclose(split.x_train[rows], c.x.astype(np.float32))
        start += len(c.y)
    assert start == len(split.y_train)


def test_features_have_the_papers_diagonal_covariance():
    cfg = _config(alpha=0.0, beta=0.0, size_log_sigma=0.0, size_log_mean=np.log(4000.0))
    draw = draw_client(cfg, SeedStreams(2), 0)
    sd = (draw.x - draw.v).std(axis=0)
    expected = np.arange(1, 61) ** -0.6
    assert np.allclose(feature_scales(60), expected)
    assert np.allclose(sd, expected, rtol=0.06)


def _client_means(cfg: SyntheticFedProx, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    streams = SeedStreams(0)
    draws = [draw_client(cfg, streams, k) for k in range(n)]
    return np.array([d.w.mean() for d in draws]), np.array([d.v.mean() for d in draws])


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_client_means_spread_with_alpha_and_beta(alpha, beta):
    """The mean of W_k over its d·c entries is u_k + noise: its spread over clients is
    √(α² + 1/(d·c)); the mean of v_k is B_k + noise, spread √(β² + 1/d)."""
    cfg = _config(alpha=alpha, beta=beta, max_samples=50)
    w_means, v_means = _client_means(cfg)
    assert w_means.std() == pytest.approx(np.sqrt(alpha**2 + 1 / 600), rel=0.12)
    assert v_means.std() == pytest.approx(np.sqrt(beta**2 + 1 / 60), rel=0.12)
    assert abs(w_means.mean()) < 4 * w_means.std() / np.sqrt(len(w_means))


def test_alpha_zero_centres_every_model_and_iid_shares_one():
    """Synthetic(0, 0): every W_k is drawn about the same mean 0 (the models still differ, as in
    the paper); Synthetic-IID: every client has the very same W and b, and v_k = B_k · 1."""
    plain = generate(_config(alpha=0, beta=0, max_samples=60), 6, SeedStreams(0), 0.2)
    assert all(c.u == 0 and c.b_prior == 0 for c in plain.clients)
    assert not np.array_equal(plain.clients[0].w, plain.clients[1].w)
    iid = generate(_config(alpha=0, beta=0, iid=True, max_samples=60), 6, SeedStreams(0), 0.2)
    for c in iid.clients[1:]:
        assert np.array_equal(c.w, iid.clients[0].w) and np.array_equal(c.b, iid.clients[0].b)
        assert np.array_equal(c.v, np.zeros(60))


def test_heterogeneity_raises_label_skew():
    """Larger (α, β) makes clients' label histograms differ more (total variation to the pooled one)."""

    def skew(alpha: float) -> float:
        split = generate(_config(alpha=alpha, beta=alpha, max_samples=300), 40, SeedStreams(0), 0.0)
        pooled = np.bincount(split.y_train, minlength=10) / len(split.y_train)
        tv = [
            0.5 * np.abs(np.bincount(c.y, minlength=10) / len(c.y) - pooled).sum()
            for c in split.clients
        ]
        return float(np.mean(tv))

    iid = generate(_config(alpha=0, beta=0, iid=True, max_samples=300), 40, SeedStreams(0), 0.0)
    pooled = np.bincount(iid.y_train, minlength=10) / len(iid.y_train)
    iid_tv = np.mean(
        [
            0.5 * np.abs(np.bincount(c.y, minlength=10) / len(c.y) - pooled).sum()
            for c in iid.clients
        ]
    )
    assert iid_tv < skew(0.0) < skew(1.0)


def test_bad_keys_are_one_line_errors():
    with pytest.raises(Exception, match="max_samples"):
        fedsim.load_scenario(
            {"data": {"dataset": "synthetic_fedprox", "synthetic_fedprox": {"max_samples": 10}}}
        )
    with pytest.raises(ScenarioError, match="alpha"):
        fedsim.load_scenario(
            {"data": {"dataset": "synthetic_fedprox", "synthetic_fedprox": {"alpha": -1}}}
        )


def test_tiny_run_end_to_end_learns():
    """FedAvg with logistic regression on Synthetic(0.5, 0.5) beats the majority class."""
    result = fedsim.run(
        {
            "seed": 0,
            "stop": {"time_s": 60},
            "data": {
                "dataset": "synthetic_fedprox",
                "partition": {"kind": "natural"},
                "synthetic_fedprox": {"alpha": 0.5, "beta": 0.5, "max_samples": 200},
            },
            "model": {"kind": "logreg"},
            "training": {"local_steps": 10, "batch_size": 10, "lr": 0.05},
            "clients": {"count": 10, "compute": {"dist": "constant", "mean_s": 1.0}},
            "algorithm": {"name": "fedavg", "cohort_size": 5},
            "eval": {"every_s": 10},
        },
        save=False,
    )
    y = result.summary
    data = load_federated(
        DataConfig(
            dataset="synthetic_fedprox",
            partition={"kind": "natural"},
            synthetic_fedprox={"alpha": 0.5, "beta": 0.5, "max_samples": 200},
        ),
        10,
        SeedStreams(0),
        CPU,
    )
    majority = torch.bincount(data.y_test).max().item() / len(data.y_test)
    assert y["updates"] > 0
    assert y["final_accuracy"] > majority + 0.05
