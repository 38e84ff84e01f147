"""Datasets and partitions: every sample dealt exactly once, skews measured, everything offline."""

from __future__ import annotations

import gzip
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.learning.data import (
    CIFAR10_FILES,
    IDX_FILES,
    DataConfig,
    client_offsets,
    dataset_info,
    describe_partition,
    load_federated,
    regression_strata,
)
from fedsim.learning.partition import (
    DirichletPartition,
    IIDPartition,
    QuantitySkewPartition,
    ShardsPartition,
    make_partition,
    quantity_skew_sizes,
)
from fedsim.rng import SeedStreams

CPU = torch.device("cpu")


def _labels(n: int = 5000, n_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(n_classes, size=n)


def _rng(seed: int = 1) -> np.random.Generator:
    return np.random.default_rng(seed)


def _hist(labels: np.ndarray, parts: list[np.ndarray], n_classes: int = 10) -> np.ndarray:
    return np.stack([np.bincount(labels[p], minlength=n_classes) for p in parts])


# ---------------------------------------------------------------------------------------------------
# Partitions


@pytest.mark.parametrize(
    "config",
    [
        IIDPartition(),
        DirichletPartition(alpha=0.1),
        DirichletPartition(alpha=100.0),
        ShardsPartition(classes_per_client=2),
        ShardsPartition(classes_per_client=3),
        QuantitySkewPartition(exponent=1.2, min_samples=5),
    ],
    ids=lambda c: f"{c.kind}",
)
@pytest.mark.parametrize("n_clients", [7, 50])  # 7 × 2 shards ≥ 10 classes
def test_every_sample_is_assigned_exactly_once(config, n_clients):
    labels = _labels(3001)
    parts = make_partition(config, labels, n_clients, _rng())
    assert len(parts) == n_clients
    assert all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    again = make_partition(config, labels, n_clients, _rng())
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize("k", [1, 2, 3, 10])
@pytest.mark.parametrize("n_clients", [10, 17, 64])
def test_shards_give_exactly_k_classes_per_client(k, n_clients):
    labels = _labels(4000)
    parts = make_partition(ShardsPartition(classes_per_client=k), labels, n_clients, _rng(k))
    held = _hist(labels, parts) > 0
    assert (held.sum(axis=1) == k).all()
    holders = held.sum(axis=0)  # every class held by about the same number of clients
    assert holders.min() >= 1 and holders.max() - holders.min() <= 1


def test_shards_refuse_impossible_settings():
    labels = _labels(200)
    with pytest.raises(ScenarioError, match="only 10 classes") as info:
        make_partition(ShardsPartition(classes_per_client=11), labels, 5, _rng())
    assert info.value.path == "data.partition.classes_per_client"
    with pytest.raises(ScenarioError, match="leave some"):
        make_partition(ShardsPartition(classes_per_client=2), labels, 4, _rng())


def _mean_tv_from_global(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label shares and the global shares."""
    hist = _hist(labels, parts)
    shares = hist / hist.sum(axis=1, keepdims=True)
    overall = np.bincount(labels, minlength=10) / len(labels)
    return float(0.5 * np.abs(shares - overall).sum(axis=1).mean())


def test_dirichlet_large_alpha_approaches_iid_and_small_alpha_concentrates():
    labels = _labels(20000)
    tv = {
        alpha: _mean_tv_from_global(
            labels, make_partition(DirichletPartition(alpha=alpha), labels, 10, _rng(2))
        )
        for alpha in (0.05, 0.5, 5.0, 1e4)
    }
    iid = _mean_tv_from_global(labels, make_partition(IIDPartition(), labels, 10, _rng(2)))
    # IID dealing of ~2000 samples per client is off the global shares by sampling noise only.
    assert iid < 0.05
    assert tv[1e4] < 0.05
    assert tv[0.05] > 0.6  # each client is dominated by one or two classes
    assert tv[0.05] > tv[0.5] > tv[5.0] > tv[1e4]
    # Small alpha: most of a client's samples come from its largest class.
    parts = make_partition(DirichletPartition(alpha=0.05), labels, 10, _rng(2))
    hist = _hist(labels, parts)
    assert np.median(hist.max(axis=1) / hist.sum(axis=1)) > 0.6


def _hill_tail_index(sizes: np.ndarray, k: int) -> float:
    top = np.sort(sizes)[::-1][: k + 1].astype(float)
    return 1.0 / float(np.mean(np.log(top[:k] / top[k])))


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_quantity_skew_sizes_follow_the_power_law(exponent):
    n_clients, n_samples = 4000, 4_000_000
    sizes = quantity_skew_sizes(n_samples, n_clients, _rng(3), exponent=exponent, min_samples=1)
    assert sizes.sum() == n_samples and sizes.min() >= 1
    # The tail index estimated from the largest sizes matches the configured one (loosely).
    assert _hill_tail_index(sizes, k=400) == pytest.approx(exponent, rel=0.2)
    # Smaller exponents give heavier tails: the largest client holds a bigger share.
    lighter = quantity_skew_sizes(n_samples, n_clients, _rng(3), exponent=exponent + 2)
    assert sizes.max() > lighter.max()


def test_quantity_skew_keeps_labels_iid_and_respects_min_samples():
    labels = _labels(10000)
    cfg = QuantitySkewPartition(exponent=1.0, min_samples=20)
    parts = make_partition(cfg, labels, 40, _rng())
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 20 and sizes.max() > 5 * np.median(sizes)
    big = parts[int(np.argmax(sizes))]
    shares = np.bincount(labels[big], minlength=10) / len(big)
    assert np.abs(shares - 0.1).max() < 0.05
    with pytest.raises(ScenarioError, match="need more than"):
        make_partition(QuantitySkewPartition(min_samples=300), labels, 40, _rng())


# ---------------------------------------------------------------------------------------------------
# Synthetic datasets and the natural partition


def _load(n_clients: int = 8, seed: int = 0, **data) -> object:
    return load_federated(DataConfig(**data), n_clients, SeedStreams(seed), CPU)


def test_synthetic_classification_natural_partition_has_per_client_feature_shift():
    spec = {"n_samples": 1600, "n_features": 6, "feature_shift": 3.0}
    data = _load(
        8, dataset="synthetic_classification", partition={"kind": "natural"},
        synthetic_classification=spec,
    )  # fmt: skip
    assert data.info.in_features == 6 and data.info.has_owners
    assert data.x_train.shape == (1280, 6) and data.y_train.dtype == torch.int64
    sizes = data.client_sizes
    assert sizes.sum() == 1280 and sizes.min() > 150  # 200 generated per client, 20% held out
    # Each client's features are centred on its own offset (row i of the shift stream).
    offsets = client_offsets(SeedStreams(0), "data.synthetic.shift", 8, 6, 3.0)
    means = np.stack([data.x_train[ix].mean(0).numpy() for ix in data.client_indices])
    assert np.abs(means - offsets).max() < 0.5  # noise and class means average out
    # Client i's offset does not depend on how many clients there are.
    more = client_offsets(SeedStreams(0), "data.synthetic.shift", 20, 6, 3.0)
    assert np.array_equal(more[:8], offsets)
    # Without a shift, clients are alike.
    plain = _load(
        8, dataset="synthetic_classification", partition={"kind": "natural"},
        synthetic_classification={**spec, "feature_shift": 0.0},
    )  # fmt: skip
    plain_means = np.stack([plain.x_train[ix].mean(0).numpy() for ix in plain.client_indices])
    assert np.abs(plain_means).max() < 0.6


def test_synthetic_regression_recovers_known_w_star():
    data = _load(
        5, dataset="synthetic_regression", partition={"kind": "natural"},
        synthetic_regression={"n_samples": 1000, "feature_shift": 1.0},
    )  # fmt: skip
    info = data.info
    assert info.task == "regression" and info.n_classes == 1 and info.in_features == 1
    assert data.y_train.dtype == torch.float32
    np.testing.assert_array_equal(data.meta["w_star"], [5.0, 2.0])
    x = data.x_train.numpy()[:, 0]
    design = np.stack([x, np.ones_like(x)], axis=1)
    fit = np.linalg.lstsq(design, data.y_train.numpy(), rcond=None)[0]
    np.testing.assert_allclose(fit, [5.0, 2.0], atol=0.03)
    # Clients see different x ranges (client-dependent offsets) but the same line.
    frame = describe_partition(data)
    assert list(frame.columns) == ["samples", "y_mean", "y_std", "x_mean"]
    assert frame["x_mean"].max() - frame["x_mean"].min() > 0.5
    # Label-skew partitions split quantile bins of y.
    strata = regression_strata(data.y_train.numpy())
    assert set(np.unique(strata)) == set(range(10))
    skewed = _load(
        5, dataset="synthetic_regression", partition={"kind": "shards", "classes_per_client": 2}
    )
    assert len(skewed.client_indices) == 5


def test_synthetic_regression_dimension_and_w_star_validation():
    data = _load(4, dataset="synthetic_regression", synthetic_regression={"n_features": 3})
    assert data.x_train.shape[1] == 3 and data.meta["w_star"].shape == (4,)
    assert (
        dataset_info(
            DataConfig(dataset="synthetic_regression", synthetic_regression={"n_features": 3})
        ).in_features
        == 3
    )
    with pytest.raises(ValidationError, match="n_features \\+ 1"):
        DataConfig(dataset="synthetic_regression", synthetic_regression={"w_star": [1.0]})


def test_natural_partition_needs_a_dataset_with_owners():
    with pytest.raises(ValidationError, match="needs a dataset with owners"):
        DataConfig(dataset="digits", partition={"kind": "natural"})


def test_describe_partition_matches_the_indices():
    data = _load(6, partition={"kind": "shards", "classes_per_client": 2})
    frame = describe_partition(data)
    assert len(frame) == 6 and frame.index.name == "client"
    assert (frame["classes"] == 2).all()
    assert (frame["samples"] == data.client_sizes).all()
    labels = [f"label_{c}" for c in range(10)]
    assert (frame[labels].sum(axis=1) == frame["samples"]).all()
    assert frame[labels].to_numpy().sum() == len(data.y_train)


def test_digits_unchanged_and_shaped_for_cnns():
    info = dataset_info("digits")
    assert (info.in_features, info.n_classes, info.input_shape) == (64, 10, (1, 8, 8))
    data = _load(10, partition={"kind": "iid"})
    assert data.x_train.shape == (1438, 64) and data.x_test.shape == (359, 64)


def test_digits_read_from_scikit_learns_file_equal_its_loader():
    """The loader reads scikit-learn's data file without importing scikit-learn (a second saved
    per run); the arrays must be exactly what ``load_digits`` gives."""
    from sklearn.datasets import load_digits

    from fedsim.learning.data import _digits_file, _load_digits

    assert _digits_file() is not None
    x, y = _load_digits()
    bunch = load_digits()
    np.testing.assert_array_equal(x, (bunch.data / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, bunch.target)


# ---------------------------------------------------------------------------------------------------
# Local files (written here, small)


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_mnist(folder, n_train=30, n_test=12, gz=False) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(4)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28)),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 28, 28)),
        rng.integers(0, 10, n_test),
    )
    for name, array in zip(IDX_FILES, arrays, strict=True):
        _write_idx(folder / name, array, gz)
    return arrays


@pytest.mark.parametrize("dataset", ["mnist_idx", "fashion_mnist_idx"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_datasets_load_from_local_files(tmp_path, dataset, gz):
    xs, _ys, _xt, yt = _write_mnist(tmp_path, gz=gz)
    data = _load(3, dataset=dataset, path=str(tmp_path), partition={"kind": "iid"})
    assert data.info.input_shape == (1, 28, 28)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(data.x_train[:, 0].numpy(), xs / 255.0, atol=1e-7)
    assert np.array_equal(data.y_test.numpy(), yt)
    assert sum(data.client_sizes) == 30  # the file's own test split, not test_fraction


def test_idx_files_in_torchvision_layout_are_found(tmp_path):
    _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    data = _load(2, dataset="fashion_mnist_idx", path=str(tmp_path), partition={"kind": "iid"})
    assert data.x_train.shape[0] == 30


def test_cifar10_loads_from_local_pickles(tmp_path):
    rng = _rng(5)
    for name in CIFAR10_FILES:
        batch = {
            b"data": rng.integers(0, 256, (8, 3072)).astype(np.uint8),
            b"labels": rng.integers(0, 10, 8).tolist(),
        }
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    data = _load(4, dataset="cifar10", path=str(tmp_path), partition={"kind": "iid"})
    assert data.x_train.shape == (40, 3, 32, 32) and data.x_test.shape == (8, 3, 32, 32)
    assert data.info.input_shape == (3, 32, 32)
    assert abs(float(data.x_train.mean())) < 0.5  # normalised per channel


@pytest.mark.parametrize(
    ("dataset", "first"), [("mnist_idx", IDX_FILES[0]), ("cifar10", "data_batch_1")]
)
def test_missing_local_files_name_the_expected_paths(tmp_path, dataset, first):
    with pytest.raises(ScenarioError) as info:
        _load(2, dataset=dataset, path=str(tmp_path))
    assert info.value.path == "data.path"
    assert str(tmp_path / first) in str(info.value)
    assert "\n" not in str(info.value)


def test_file_datasets_need_a_path():
    with pytest.raises(ValidationError, match=r"set data\.path"):
        DataConfig(dataset="cifar10")


def test_missing_local_file_exits_2_with_one_line(tmp_path, capsys):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        f"data: {{dataset: mnist_idx, path: {tmp_path / 'nowhere'}}}\nstop: {{time_s: 5}}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(scenario), "--quiet", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "data.path" in lines[0] and str(tmp_path / "nowhere" / IDX_FILES[0]) in lines[0]


# ---------------------------------------------------------------------------------------------------
# mnist1d (generated offline by the mnist1d package)


def test_mnist1d_generates_offline_caches_and_leaves_global_rng_alone(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    import mnist1d.data

    from fedsim.learning import data as data_module

    np_before = np.random.get_state()[1].copy()  # noqa: NPY002
    py_before = random.getstate()
    data = _load(5, dataset="mnist1d", cache_dir=str(tmp_path), partition={"kind": "iid"})
    assert np.array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002
    assert random.getstate() == py_before
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)  # standard split
    assert data.info.input_shape == (40,) and int(data.y_train.max()) == 9
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    # A second load reads the cache: the generator is not called again.
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: pytest.fail("regenerated"))
    cached = data_module.mnist1d_arrays(tmp_path)
    assert np.array_equal(cached["x"], data.x_train.numpy())
