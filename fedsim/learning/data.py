"""Datasets (never downloaded) and the device-resident federated view of them.

All training samples live in one tensor on the device; a client is a set of row indices into it. A
client that is not training holds no tensors at all.

Every dataset is generated, shipped inside an installed package, or read from a local path the user
gives (``data.path``); nothing is ever fetched from the network. A loader returns a :class:`RawData`:
samples and labels, and, where the dataset has them, its own test split and each sample's owner (the
client it was generated for, used by the ``natural`` partition).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import random
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.learning.partition import (
    DirichletPartition,
    NaturalPartition,
    Partition,
    make_partition,
)
from fedsim.learning.synthetic import SyntheticFedProx, generate
from fedsim.learning.user_data import (
    OWNERS,
    Dataset,
    check_dataset,
    check_npz,
    check_owners,
    import_dataset,
    in_memory_data,
    load_npz,
    read_npz_arrays,
    resolve_path,
)
from fedsim.rng import SeedStreams

DatasetName = Literal[
    "digits",
    "synthetic_classification",
    "synthetic_regression",
    "synthetic_fedprox",
    "mnist1d",
    "mnist_idx",
    "fashion_mnist_idx",
    "cifar10",
    "npz",
    "import",
    "memory",
]
FILE_DATASETS = ("mnist_idx", "fashion_mnist_idx", "cifar10")
"""Datasets read from local files under ``data.path``."""
USER_DATASETS = ("npz", "import", "memory")
"""A user's own data: an .npz file (``data.path``), a loader (``data.target``), or arrays passed
to ``fedsim.run(data=...)`` (``memory``)."""


class SyntheticClassification(Section):
    """Gaussian mixture drawn from the scenario seed, generated client by client.

    Class means are drawn once; sample j of class c is ``mean_c + noise`` plus the offset of the
    client it was generated for. Client i's offset is drawn from the seed (the i-th row of one
    stream, so it does not depend on the number of clients): with ``feature_shift > 0`` and the
    ``natural`` partition each client sees its own shifted features (feature skew). Samples are
    generated for clients in equal blocks; labels are uniform.
    """

    n_samples: PositiveInt = 2000
    """Samples generated in all, test samples included."""
    n_features: PositiveInt = 20
    """Dimension of each sample."""
    n_classes: int = Field(10, ge=2)
    """Number of classes (mixture components)."""
    class_sep: PositiveFloat = 0.5
    """Standard deviation of each coordinate of a class mean (larger separates classes more)."""
    noise: PositiveFloat = 1.0
    """Standard deviation of each coordinate of the within-class noise."""
    feature_shift: float = Field(0.0, ge=0)
    """Standard deviation of each coordinate of a client's offset; 0 = no feature skew."""


class SyntheticRegression(Section):
    """Linear model ``y = x · w + b + noise`` with known ``w* = (w, b)``, generated client by client.

    Features are uniform on ``[x_low, x_high)`` in every coordinate, plus the offset of the client
    they were generated for (drawn from the seed as in ``synthetic_classification``), so with
    ``feature_shift > 0`` and the ``natural`` partition clients see different x ranges but share
    the optimum w*. Defaults give the DFL toy of ALGORITHMS.md §3.8: ``y = 5x + 2 + N(0, 0.1²)``.
    """

    n_samples: PositiveInt = 2000
    """Samples generated in all, test samples included."""
    n_features: PositiveInt = 1
    """Dimension of x."""
    w_star: list[float] | None = None
    """True coefficients then intercept (n_features + 1 numbers); null: (5, 2) for one feature,
    else drawn from N(0, 1) with the seed."""
    noise: float = Field(0.1, ge=0)
    """Standard deviation of the Gaussian noise added to y."""
    x_low: float = 0.0
    """Lower end of the range of every coordinate of x (before the client's offset)."""
    x_high: float = 1.0
    """Upper end of the range of every coordinate of x (before the client's offset)."""
    feature_shift: float = Field(0.0, ge=0)
    """Standard deviation of each coordinate of a client's offset to x; 0 = same x range for all."""

    @model_validator(mode="after")
    def _check(self) -> SyntheticRegression:
        if self.w_star is not None and len(self.w_star) != self.n_features + 1:
            raise ValueError(
                f"w_star needs n_features + 1 = {self.n_features + 1} numbers (coefficients, then "
                f"the intercept), got {len(self.w_star)}"
            )
        if self.x_high <= self.x_low:
            raise ValueError(f"x_high ({self.x_high}) must be above x_low ({self.x_low})")
        return self


class DataConfig(Section):
    """Which dataset, how much is held out for evaluation, and how the rest is split over clients."""

    dataset: DatasetName = "digits"
    """Dataset name: digits (scikit-learn's 8x8 handwritten digits, 1797 samples, ships offline),
    synthetic_classification, synthetic_regression, synthetic_fedprox (FedProx's Synthetic(α, β);
    generated from the seed), mnist1d (generated
    offline by the mnist1d package, cached), mnist_idx, fashion_mnist_idx (IDX files under path),
    cifar10 (the python pickles under path), npz (your own arrays in the .npz file path), import
    (your own loader, data.target), memory (the arrays passed to fedsim.run(data=...); fedsim.run
    sets it)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of samples held out as the server's test set (datasets with their own test split,
    mnist1d, mnist_idx, fashion_mnist_idx and cifar10, use that split instead)."""
    partition: Partition = Field(default_factory=DirichletPartition)
    """How training samples are dealt to clients."""
    path: str | None = None
    """Local folder of the files of mnist_idx, fashion_mnist_idx or cifar10 (never downloaded); for
    npz, the .npz file holding x_train, y_train, x_test, y_test and optionally owner_train. A
    relative path is relative to the scenario file's folder (made absolute when it is loaded)."""
    target: str | None = None
    """For import: the loader, module.path:name or path/to/file.py:name (a relative file is
    relative to the scenario file's folder), returning x_train, y_train, x_test, y_test (a dict or
    an object; numpy or torch; optionally owner_train) or (train, test) map-style torch Datasets of
    (x, y) pairs."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """For import: keyword arguments passed to the loader."""
    n_classes: int | None = Field(None, ge=2)
    """For npz and import with integer labels: the number of classes; null: the largest label
    plus one."""
    cache_dir: str | None = None
    """Where generated datasets (mnist1d) are cached (a relative path is relative to the scenario
    file's folder); null: $XDG_CACHE_HOME/fedsim or ~/.cache/fedsim."""
    synthetic_classification: SyntheticClassification = Field(
        default_factory=SyntheticClassification
    )
    """Parameters of the synthetic_classification dataset (ignored by the others)."""
    synthetic_regression: SyntheticRegression = Field(default_factory=SyntheticRegression)
    """Parameters of the synthetic_regression dataset (ignored by the others)."""
    synthetic_fedprox: SyntheticFedProx = Field(default_factory=SyntheticFedProx)
    """Parameters of the synthetic_fedprox dataset (ignored by the others)."""

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.dataset == "npz" and self.path is None:
            raise ValueError("dataset npz reads your arrays: set data.path to the .npz file")
        if self.dataset == "import" and self.target is None:
            raise ValueError(
                "dataset import calls your loader: set data.target to module.path:name or "
                "path/to/file.py:name"
            )
        if self.dataset != "import" and (self.target is not None or self.kwargs):
            which = "target" if self.target is not None else "kwargs"
            raise ValueError(f"data.{which} is read by dataset import only, not {self.dataset}")
        if self.dataset not in USER_DATASETS and self.n_classes is not None:
            raise ValueError(f"data.n_classes is read by npz and import only, not {self.dataset}")
        if self.dataset in USER_DATASETS:
            return self  # owners and the rest are checked from the data (check_data)
        if self.dataset in FILE_DATASETS and self.path is None:
            raise ValueError(
                f"dataset {self.dataset} is read from local files: set data.path to the folder "
                f"holding {', '.join(_expected_files(self.dataset))}"
            )
        if isinstance(self.partition, NaturalPartition) and not dataset_info(self).has_owners:
            owned = [
                name
                for name, (info, _) in DATASETS.items()
                if info.has_owners and name not in USER_DATASETS
            ]
            raise ValueError(
                f"partition natural needs a dataset with owners ({', '.join(owned)}, or npz or "
                f"import with owner_train); {self.dataset} has none"
            )
        return self


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, available without loading it.

    ``n_classes`` is the number of model outputs: the classes, or 1 for a regression target.
    ``input_shape`` is the shape of one sample (``(in_features,)`` unless given); ``vocab_size``
    is set for datasets of token ids.
    """

    name: str
    in_features: int
    n_classes: int
    input_shape: tuple[int, ...] = ()
    task: Literal["classification", "regression"] = "classification"
    has_owners: bool = False
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if not self.input_shape:
            object.__setattr__(self, "input_shape", (self.in_features,))
        numel = int(np.prod(self.input_shape))
        if numel != self.in_features:
            raise ValueError(f"input_shape {self.input_shape} has {numel} != {self.in_features}")


@dataclass
class RawData:
    """What a loader returns: all samples, or a train set plus the dataset's own test set."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    owners: np.ndarray | None = None
    """The client each sample was generated for (``natural`` partition), or None."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainLabels:
    """What a partition reads, known without the samples: the labels (and owners) of the samples
    the clients split. ``split``: the test set is still to be drawn from them (no own test set)."""

    y: np.ndarray
    owners: np.ndarray | None = None
    split: bool = False
    task: Literal["classification", "regression"] = "classification"


Loader = Callable[[DataConfig, int, SeedStreams], RawData]


# ---------------------------------------------------------------------------------------------------
# digits


def _digits_file() -> Path | None:
    """scikit-learn's own copy of the digits (``datasets/data/digits.csv.gz``), found without
    importing scikit-learn (which takes about a second)."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        file = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if file.is_file():
            return file
    return None


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8×8 digits scaled to [0, 1], and their labels: the same arrays as
    ``sklearn.datasets.load_digits`` (read from the same file)."""
    file = _digits_file()
    if file is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data, target = bunch.data, bunch.target
    else:
        table = np.loadtxt(file, delimiter=",")
        data, target = table[:, :-1], table[:, -1]
    return (data / 16.0).astype(np.float32), target.astype(np.int64)


def _digits(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    return RawData(*_load_digits())


# ---------------------------------------------------------------------------------------------------
# synthetic, generated client by client


def client_blocks(n_samples: int, n_clients: int) -> np.ndarray:
    """The owner of each generated sample: clients in equal consecutive blocks (sizes differ ≤ 1)."""
    sizes = np.full(n_clients, n_samples // n_clients)
    sizes[: n_samples % n_clients] += 1
    return np.repeat(np.arange(n_clients), sizes)


def client_offsets(
    streams: SeedStreams, name: str, n_clients: int, dim: int, scale: float
) -> np.ndarray:
    """``[n_clients, dim]`` offsets; row i is the same whatever the number of clients."""
    if scale == 0:
        return np.zeros((n_clients, dim))
    return scale * streams.generator(name).standard_normal((n_clients, dim))


def _enough_samples(n_samples: int, n_clients: int, path: str) -> None:
    """A generated dataset gives every client at least one sample, or it is a one-line error."""
    if n_samples < n_clients:
        raise ScenarioError(
            f"{n_samples} samples for {n_clients} clients", path=path, value=n_samples
        )


def _synthetic_classification(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    cfg = config.synthetic_classification
    _enough_samples(cfg.n_samples, n_clients, "data.synthetic_classification.n_samples")
    d = cfg.n_features
    means = cfg.class_sep * streams.generator("data.synthetic.means").standard_normal(
        (cfg.n_classes, d)
    )
    offsets = client_offsets(streams, "data.synthetic.shift", n_clients, d, cfg.feature_shift)
    owners = client_blocks(cfg.n_samples, n_clients)
    rng = streams.generator("data.synthetic.samples")
    y = rng.integers(cfg.n_classes, size=cfg.n_samples)
    x = means[y] + cfg.noise * rng.standard_normal((cfg.n_samples, d)) + offsets[owners]
    return RawData(x.astype(np.float32), y.astype(np.int64), owners=owners)


def _synthetic_fedprox(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    split = generate(config.synthetic_fedprox, n_clients, streams, config.test_fraction)
    return RawData(split.x_train, split.y_train, split.x_test, split.y_test, owners=split.owners)


def regression_w_star(cfg: SyntheticRegression, streams: SeedStreams) -> np.ndarray:
    """The true ``(coefficients..., intercept)`` of synthetic_regression."""
    if cfg.w_star is not None:
        return np.asarray(cfg.w_star, dtype=np.float64)
    if cfg.n_features == 1:
        return np.array([5.0, 2.0])
    return streams.generator("data.synthetic.w_star").standard_normal(cfg.n_features + 1)


def _synthetic_regression(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    cfg = config.synthetic_regression
    _enough_samples(cfg.n_samples, n_clients, "data.synthetic_regression.n_samples")
    d = cfg.n_features
    w = regression_w_star(cfg, streams)
    offsets = client_offsets(streams, "data.synthetic.shift", n_clients, d, cfg.feature_shift)
    owners = client_blocks(cfg.n_samples, n_clients)
    rng = streams.generator("data.synthetic.samples")
    x = rng.uniform(cfg.x_low, cfg.x_high, (cfg.n_samples, d)) + offsets[owners]
    y = x @ w[:-1] + w[-1] + cfg.noise * rng.standard_normal(cfg.n_samples)
    return RawData(
        x.astype(np.float32), y.astype(np.float32), owners=owners, meta={"w_star": w.copy()}
    )


# ---------------------------------------------------------------------------------------------------
# mnist1d, generated offline by the mnist1d package and cached


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedsim"


def mnist1d_arrays(cache_dir: Path, **overrides: Any) -> dict[str, np.ndarray]:
    """MNIST-1D as the mnist1d package generates it (default: 4000 train / 1000 test), cached.

    ``overrides`` change the generator's arguments (e.g. ``num_samples``) and the cache key. The
    generator seeds numpy's and Python's global RNGs; their states are restored afterwards.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ScenarioError(
            "dataset mnist1d needs the mnist1d package (pip install mnist1d scipy)",
            path="data.dataset",
            value="mnist1d",
        ) from None
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    args.update(overrides)
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    file = Path(cache_dir) / f"mnist1d-{key}.npz"
    if file.is_file():
        with np.load(file) as cached:
            return {k: cached[k] for k in ("x", "y", "x_test", "y_test")}
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        made = make_dataset(_ObjectView(args))
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    arrays = {
        "x": made["x"].astype(np.float32),
        "y": made["y"].astype(np.int64),
        "x_test": made["x_test"].astype(np.float32),
        "y_test": made["y_test"].astype(np.int64),
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, file)
    return arrays


def _check_cache_dir(cache: Path, *, given: bool) -> None:
    """The cache folder (or the nearest existing parent) must be a folder."""
    key = "data.cache_dir" if given else "data.dataset"
    for folder in (cache, *cache.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ScenarioError(
                    f"{folder} is a file, not a folder: cannot cache datasets under {cache}",
                    path=key,
                    value=str(cache),
                )
            return


class _ObjectView:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _mnist1d(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    _check_cache_dir(cache, given=bool(config.cache_dir))
    a = mnist1d_arrays(cache)
    return RawData(a["x"], a["y"], a["x_test"], a["y_test"])


# ---------------------------------------------------------------------------------------------------
# Local files: MNIST / Fashion-MNIST IDX, CIFAR-10 python pickles

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""File names of an MNIST-style dataset (each may also be gzipped, ending in .gz)."""
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
"""File names of CIFAR-10's python version."""
_IDX_SUBDIRS = {"mnist_idx": "MNIST/raw", "fashion_mnist_idx": "FashionMNIST/raw"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _expected_files(dataset: str) -> tuple[str, ...]:
    return CIFAR10_FILES if dataset == "cifar10" else IDX_FILES


def _find(root: Path, subdirs: tuple[str, ...], names: tuple[str, ...], gz: bool) -> list[Path]:
    """The files ``names`` in ``root`` or one of its ``subdirs`` (first folder holding them all)."""
    for folder in (root, *(root / s for s in subdirs)):
        found = []
        for name in names:
            options = [folder / name, *([folder / f"{name}.gz"] if gz else [])]
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    missing = [str(root / n) + ("[.gz]" if gz else "") for n in names if not _present(root, n, gz)]
    raise ScenarioError(
        f"missing local dataset file(s): {', '.join(missing)} (nothing is downloaded)",
        path="data.path",
        value=str(root),
    )


def _present(folder: Path, name: str, gz: bool) -> bool:
    return (folder / name).is_file() or (gz and (folder / f"{name}.gz").is_file())


def _read_bytes(file: Path, limit: int | None = None) -> bytes:
    """The (gunzipped, for ``.gz``) bytes of ``file``, all or the first ``limit``; one-line errors."""
    with _reading(file) as f:
        return f.read() if limit is None else f.read(limit)


def _gunzipped_size(file: Path, chunk: int = 1 << 20) -> int:
    """Bytes a ``.gz`` file holds once decompressed, read in chunks (never all at once)."""
    size = 0
    with _reading(file) as f:
        while block := f.read(chunk):
            size += len(block)
    return size


@contextmanager
def _reading(file: Path) -> Iterator[Any]:
    """``file`` opened for reading (gunzipped for ``.gz``); a damaged gzip stream or an unreadable
    file is a one-line ScenarioError naming it."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            yield f
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise ScenarioError(
            f"{file} is not a valid gzip file ({problem})", path="data.path", value=str(file)
        ) from None
    except OSError as exc:
        raise ScenarioError(
            f"cannot read {file}: {exc.strerror or exc}", path="data.path", value=str(file)
        ) from None


def idx_header(file: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The element type and shape an IDX file declares, read from its first bytes; its size is
    checked against them (a ``.gz`` file is decompressed in chunks for that, never held whole)."""
    head = _read_bytes(file, 4 + 4 * 255)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise ScenarioError(f"{file} is not an IDX file", path="data.path", value=str(file))
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise ScenarioError(f"{file} ends inside its IDX header", path="data.path", value=str(file))
    shape = tuple(int(d) for d in np.frombuffer(head, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    size = _gunzipped_size(file) if file.suffix == ".gz" else file.stat().st_size
    if size != expected:
        raise ScenarioError(
            f"{file} holds {size} bytes, its header says {expected}",
            path="data.path",
            value=str(file),
        )
    return dtype, shape


def _check_idx_files(files: list[Path], labels: list[np.ndarray] | None = None) -> int:
    """Images ``[n, 28, 28]`` and labels ``[n]`` in 0..9 for the train and the test split; the
    number of training samples. ``labels`` are read here when not given."""
    headers = [idx_header(f) for f in files]
    for images, labels_file in ((0, 1), (2, 3)):
        (_, ishape), (_, lshape) = headers[images], headers[labels_file]
        if len(ishape) != 3 or ishape[1:] != (28, 28):
            raise ScenarioError(
                f"{files[images]} holds images of shape {ishape[1:]}, expected 28×28",
                path="data.path",
                value=str(files[images]),
            )
        if len(lshape) != 1:
            raise ScenarioError(
                f"{files[labels_file]} holds an array of shape {lshape}, expected a list of labels",
                path="data.path",
                value=str(files[labels_file]),
            )
        if ishape[0] != lshape[0]:
            raise ScenarioError(
                f"{files[images]} holds {ishape[0]} images but {files[labels_file]} holds "
                f"{lshape[0]} labels",
                path="data.path",
                value=str(files[images]),
            )
        y = read_idx(files[labels_file]) if labels is None else labels[images // 2]
        _check_labels(y, files[labels_file])
    return headers[0][1][0]


def _check_labels(y: np.ndarray, file: Path, n_classes: int = 10) -> None:
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ScenarioError(
            f"{file}: label {y[i]} at index {i} is outside 0..{n_classes - 1}",
            path="data.path",
            value=str(file),
        )


def read_idx(file: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as an array of its declared type and shape."""
    raw = _read_bytes(file)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ScenarioError(f"{file} is not an IDX file", path="data.path", value=str(file))
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ScenarioError(f"{file} ends inside its IDX header", path="data.path", value=str(file))
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ScenarioError(
            f"{file} holds {len(raw)} bytes, its header says {expected}",
            path="data.path",
            value=str(file),
        )
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape)


def _idx(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    assert config.path is not None
    subdirs = (_IDX_SUBDIRS[config.dataset],)
    files = _find(Path(config.path), subdirs, IDX_FILES, gz=True)
    xs, ys, xt, yt = (read_idx(f) for f in files)
    _check_idx_files(files, labels=[ys, yt])

    def images(a: np.ndarray) -> np.ndarray:
        x = a.astype(np.float32)
        x /= 255.0  # in place: one float copy of the images, not two
        return x.reshape(len(a), 1, 28, 28)

    return RawData(images(xs), ys.astype(np.int64), images(xt), yt.astype(np.int64))


def _check_pickle(file: Path) -> None:
    """A CIFAR-10 batch is a python pickle (protocol 2 or later starts with byte 0x80)."""
    with open(file, "rb") as f:
        head = f.read(2)
    if len(head) < 2 or head[0] != 0x80:
        raise ScenarioError(
            f"{file} is not a CIFAR-10 batch (not a python pickle)",
            path="data.path",
            value=str(file),
        )


_CIFAR_GLOBALS = {
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    *(
        (f"numpy.{core}.multiarray", name)
        for core in ("core", "_core")
        for name in ("_reconstruct", "scalar")
    ),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}
"""The only globals a CIFAR-10 batch refers to (NumPy arrays): unpickling anything else, which
could run arbitrary code, is refused."""


class _ArrayHeader:
    """Stands in for a pickled NumPy array when only its shape is wanted (``fedsim validate``)."""

    def __init__(self, shape: tuple[int, ...] = (0,)) -> None:
        self.shape = tuple(int(d) for d in shape)

    def __setstate__(self, state: tuple) -> None:  # (version, shape, dtype, is_fortran, raw)
        self.shape = tuple(int(d) for d in state[1])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else; with ``arrays=False`` arrays stay headers."""

    def __init__(self, file: Any, *, arrays: bool) -> None:
        super().__init__(file, encoding="bytes")
        self.arrays = arrays

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a batch never does")
        if not self.arrays and name == "_reconstruct":
            return lambda _cls, shape, _code: _ArrayHeader(shape)
        if not self.arrays and name == "_frombuffer":
            return lambda _buffer, _dtype, shape, _order: _ArrayHeader(shape)
        return super().find_class(module, name)


CIFAR10_IMAGE = 3 * 32 * 32
"""Values per CIFAR-10 image (3 channels of 32×32 pixels)."""


def _cifar_batch(file: Path, *, arrays: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """A CIFAR-10 batch's images ``[n, 3, 32, 32]`` (None unless ``arrays``) and labels, checked.

    ``fedsim validate`` reads batches with ``arrays=False``: the labels and the images' shape,
    never an array of pixels, so it knows the exact number of samples and gives the same one-line
    errors as the run."""
    _check_pickle(file)
    try:
        with open(file, "rb") as f:
            batch = _CifarUnpickler(f, arrays=arrays).load()
    except Exception as exc:  # a damaged pickle raises almost anything
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise ScenarioError(
            f"{file} is not a CIFAR-10 batch (cannot unpickle it: {problem})",
            path="data.path",
            value=str(file),
        ) from None
    if not isinstance(batch, dict):
        raise ScenarioError(
            f"{file} is not a CIFAR-10 batch (holds a {type(batch).__name__}, not a dict)",
            path="data.path",
            value=str(file),
        )
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ScenarioError(
            f"{file} is not a CIFAR-10 batch (no data/labels)", path="data.path", value=str(file)
        )
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if isinstance(data, _ArrayHeader):
            if data.size % CIFAR10_IMAGE:
                raise ValueError
            x, n_images = None, data.size // CIFAR10_IMAGE
        else:
            x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
            n_images = len(x)
    except (ValueError, TypeError, OverflowError):
        raise ScenarioError(
            f"{file}: data is not a list of 3×32×32 images with integer labels",
            path="data.path",
            value=str(file),
        ) from None
    if n_images != len(y):
        raise ScenarioError(
            f"{file} holds {n_images} images but {len(y)} labels",
            path="data.path",
            value=str(file),
        )
    _check_labels(y, file)
    return x, y


CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def _cifar10(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    assert config.path is not None
    files = _find(Path(config.path), ("cifar-10-batches-py",), CIFAR10_FILES, gz=False)
    xs, ys = [], []
    for file in files:
        x, y = _cifar_batch(file, arrays=True)
        xs.append(x)
        ys.append(y)

    def images(a: np.ndarray) -> np.ndarray:
        x = a.astype(np.float32)
        x /= 255.0
        x -= CIFAR10_MEAN[:, None, None]
        x /= CIFAR10_STD[:, None, None]
        return x

    return RawData(images(np.concatenate(xs[:-1])), np.concatenate(ys[:-1]), images(xs[-1]), ys[-1])


# ---------------------------------------------------------------------------------------------------
# A user's own data (see fedsim.learning.user_data)


def _user_raw(dataset: Dataset) -> RawData:
    return RawData(
        dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, dataset.owner_train
    )


def _npz(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    assert config.path is not None
    return _user_raw(load_npz(config.path, n_classes=config.n_classes)[0])


def _import(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    assert config.target is not None
    loaded = import_dataset(config.target, config.kwargs, n_classes=config.n_classes, take=True)
    return _user_raw(loaded[0])


def _memory(config: DataConfig, n_clients: int, streams: SeedStreams) -> RawData:
    _no_arrays()
    raise AssertionError  # pragma: no cover


def _given(config: Any, user_data: Dataset | None) -> Dataset | None:
    """The arrays that replace the config's dataset: those passed, else for dataset memory those
    of the enclosing ``using_data`` block (a one-line error when there are none)."""
    if user_data is not None or getattr(config, "dataset", None) != "memory":
        return user_data
    found = in_memory_data()
    if found is None:
        _no_arrays()
    return found


def _no_arrays() -> None:
    raise ScenarioError(
        "dataset memory holds the arrays passed to fedsim.run(data=fedsim.Dataset(...)); none "
        "were passed (a saved scenario of such a run needs them again)",
        path="data.dataset",
        value="memory",
    )


def check_user_data(
    config: DataConfig,
    n_clients: int,
    user_data: Dataset | None = None,
    *,
    base_dir: str | Path | None = None,
) -> TrainLabels:
    """Check a user's own data (npz from its headers, labels and owners; import by calling the
    loader once; or arrays passed in) as loading would; return its training labels and owners.
    With the natural partition, every owner must be a client and every client own a sample."""
    natural = isinstance(config.partition, NaturalPartition)
    user_data = _given(config, user_data)
    if user_data is None and config.dataset == "npz":
        assert config.path is not None
        info, _n_train = check_npz(
            config.path,
            n_classes=config.n_classes,
            base_dir=base_dir,
            n_clients=n_clients if natural else None,
        )
        small = read_npz_arrays(resolve_path(config.path, base_dir), ["y_train", OWNERS])
        y = small["y_train"].reshape(-1)  # as check_dataset converts it for the run
        y = y.astype(np.int64 if info.task == "classification" else np.float32)
        owners = small[OWNERS].astype(np.int64) if OWNERS in small else None
        return TrainLabels(y, owners, task=info.task)
    if user_data is not None:
        checked, info = check_dataset(user_data, key="data", n_classes=config.n_classes)
    else:
        assert config.target is not None
        checked, info = import_dataset(
            config.target, config.kwargs, n_classes=config.n_classes, base_dir=base_dir
        )
    if natural:
        _check_natural(checked, n_clients, *_user_source(config, user_data, base_dir))
    return TrainLabels(checked.y_train, checked.owner_train, task=info.task)


def _user_source(
    config: DataConfig, user_data: Dataset | None, base_dir: str | Path | None
) -> tuple[str, str]:
    """The key and the words that name where a user's data came from, for error messages."""
    if user_data is not None:
        return "data", "the dataset"
    if config.dataset == "npz":
        assert config.path is not None
        return "data.path", str(resolve_path(config.path, base_dir))
    return "data.target", repr(config.target)


def _check_natural(checked: Dataset, n_clients: int, key: str, where: str) -> None:
    if checked.owner_train is None:
        raise ScenarioError(
            f"{where} has no {OWNERS}: the natural partition needs the client of every "
            "training sample",
            path=key,
        )
    check_owners(checked.owner_train, n_clients, key=key, where=where)


# ---------------------------------------------------------------------------------------------------
# Registry

DATASETS: dict[str, tuple[DatasetInfo, Loader]] = {
    "digits": (DatasetInfo("digits", 64, 10, (1, 8, 8)), _digits),
    "synthetic_classification": (
        DatasetInfo("synthetic_classification", 20, 10, has_owners=True),
        _synthetic_classification,
    ),
    "synthetic_regression": (
        DatasetInfo("synthetic_regression", 1, 1, task="regression", has_owners=True),
        _synthetic_regression,
    ),
    "synthetic_fedprox": (
        DatasetInfo("synthetic_fedprox", 60, 10, has_owners=True),
        _synthetic_fedprox,
    ),
    "mnist1d": (DatasetInfo("mnist1d", 40, 10), _mnist1d),
    "mnist_idx": (DatasetInfo("mnist_idx", 784, 10, (1, 28, 28)), _idx),
    "fashion_mnist_idx": (DatasetInfo("fashion_mnist_idx", 784, 10, (1, 28, 28)), _idx),
    "cifar10": (DatasetInfo("cifar10", 3072, 10, (3, 32, 32)), _cifar10),
    "npz": (DatasetInfo("npz", 1, 1, has_owners=True), _npz),
    "import": (DatasetInfo("import", 1, 1, has_owners=True), _import),
    "memory": (DatasetInfo("memory", 1, 1, has_owners=True), _memory),
}
"""Dataset name → (info with default parameters, loader). The info of npz and import is a
placeholder: their shapes come from the data (``dataset_info(config)``)."""


def dataset_info(
    dataset: str | DataConfig,
    user_data: Dataset | None = None,
    *,
    base_dir: str | Path | None = None,
) -> DatasetInfo:
    """The dataset's info; pass the DataConfig for datasets whose shape is configurable or comes
    from the data. ``user_data`` (arrays passed to ``fedsim.run``) takes the place of the dataset
    the config names. An npz file is read for its headers and labels only; an import loader is
    called once (its arrays are kept for the run). Relative paths are resolved against
    ``base_dir`` (the scenario file's folder), else the working directory."""
    user_data = _given(dataset, user_data)
    if user_data is not None:
        n_classes = dataset.n_classes if isinstance(dataset, DataConfig) else None
        return check_dataset(user_data, key="data", n_classes=n_classes)[1]
    if isinstance(dataset, str):
        if dataset in USER_DATASETS:
            raise ValueError(f"the info of dataset {dataset} comes from its data: pass the config")
        return DATASETS[dataset][0]
    if dataset.dataset == "npz":
        assert dataset.path is not None
        return check_npz(dataset.path, n_classes=dataset.n_classes, base_dir=base_dir)[0]
    if dataset.dataset == "import":
        assert dataset.target is not None
        return import_dataset(
            dataset.target, dataset.kwargs, n_classes=dataset.n_classes, base_dir=base_dir
        )[1]
    info = DATASETS[dataset.dataset][0]
    if dataset.dataset == "synthetic_classification":
        cfg = dataset.synthetic_classification
        return DatasetInfo(info.name, cfg.n_features, cfg.n_classes, has_owners=True)
    if dataset.dataset == "synthetic_regression":
        d = dataset.synthetic_regression.n_features
        return DatasetInfo(info.name, d, 1, task="regression", has_owners=True)
    if dataset.dataset == "synthetic_fedprox":
        cfg_fp = dataset.synthetic_fedprox
        return DatasetInfo(info.name, cfg_fp.n_features, cfg_fp.n_classes, has_owners=True)
    return info


# ---------------------------------------------------------------------------------------------------
# The federated view


@dataclass
class FederatedData:
    """Training and test tensors on the device, and each client's row indices into the training set."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    client_indices: list[np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra facts from the loader (``w_star`` for synthetic_regression)."""

    @property
    def client_sizes(self) -> np.ndarray:
        return np.array([len(ix) for ix in self.client_indices])


def regression_strata(y: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Quantile bins of a regression target: the 'labels' that label-skew partitions split."""
    edges = np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, y, side="right")


MNIST1D_TRAIN = 4000
"""Training samples of mnist1d as fedsim generates it (the package's defaults)."""


def _test_split(
    n: int, test_fraction: float, streams: SeedStreams
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows of a dataset without its own test set (the run's ``data.split``)."""
    order = streams.generator("data.split").permutation(n)
    n_test = round(test_fraction * n)
    return order[n_test:], order[:n_test]


def _partition(
    config: DataConfig,
    y_train: np.ndarray,
    owners: np.ndarray | None,
    task: str,
    n_clients: int,
    streams: SeedStreams,
) -> list[np.ndarray]:
    """The run's partition draw (``data.partition``) of the training labels."""
    labels = y_train if task == "classification" else regression_strata(y_train)
    return make_partition(
        config.partition, labels, n_clients, streams.generator("data.partition"), owners=owners
    )


def draw_partition(
    config: DataConfig, train: TrainLabels, n_clients: int, streams: SeedStreams
) -> list[np.ndarray]:
    """The partition the run will draw, from the labels only: a partition that cannot be made
    (Dirichlet draws that leave a client short, a class with fewer samples than its shards)
    raises the run's one-line error."""
    y, owners = train.y, train.owners
    if train.split:
        keep, _test = _test_split(len(y), config.test_fraction, streams)
        y, owners = y[keep], (owners[keep] if owners is not None else None)
    return _partition(config, y, owners, train.task, n_clients, streams)


def _generated_labels(
    name: str, config: DataConfig, n_clients: int, streams: SeedStreams
) -> TrainLabels:
    """The labels of a dataset generated from the seed (or shipped), generated as the run does."""
    info, loader = DATASETS[name]
    raw = loader(config, n_clients, streams)
    return TrainLabels(raw.y, raw.owners, split=raw.x_test is None, task=info.task)


def check_data(
    config: DataConfig,
    n_clients: int,
    user_data: Dataset | None = None,
    *,
    base_dir: str | Path | None = None,
    streams: SeedStreams | None = None,
) -> int:
    """Check what loading would check, reading headers and labels but not samples; return the
    number of training samples. Every client needs at least one. ``user_data`` and ``base_dir``
    as for :func:`load_federated`. With ``streams`` (the run's), the partition is drawn as the
    run draws it (:func:`draw_partition`), so one that cannot be made is refused here too."""
    user_data = _given(config, user_data)
    name = config.dataset if user_data is None else "the dataset"
    train: TrainLabels | None = None
    if user_data is not None or config.dataset in USER_DATASETS:
        train = check_user_data(config, n_clients, user_data, base_dir=base_dir)
        n_train = len(train.y)
    elif name in ("mnist_idx", "fashion_mnist_idx"):
        assert config.path is not None
        folder = resolve_path(config.path, base_dir)
        files = _find(folder, (_IDX_SUBDIRS[name],), IDX_FILES, gz=True)
        labels = [read_idx(files[1]), read_idx(files[3])]
        n_train = _check_idx_files(files, labels)
        train = TrainLabels(labels[0])
    elif name == "cifar10":
        assert config.path is not None
        folder = resolve_path(config.path, base_dir)
        files = _find(folder, ("cifar-10-batches-py",), CIFAR10_FILES, gz=False)
        ys = [_cifar_batch(file, arrays=False)[1] for file in files]
        train = TrainLabels(np.concatenate(ys[:-1]))
        n_train = len(train.y)
    elif name == "mnist1d":
        if importlib.util.find_spec("mnist1d") is None:
            raise ScenarioError(
                "dataset mnist1d needs the mnist1d package (pip install mnist1d scipy)",
                path="data.dataset",
                value="mnist1d",
            )
        cache = (
            resolve_path(config.cache_dir, base_dir) if config.cache_dir else default_cache_dir()
        )
        _check_cache_dir(cache, given=bool(config.cache_dir))
        n_train = MNIST1D_TRAIN
        if streams is not None:  # generated (and cached) here if it is not yet, as a run would
            train = TrainLabels(mnist1d_arrays(cache)["y"])
    elif name == "synthetic_fedprox":
        n_train = n_clients  # at least: every client keeps a training sample (sizes are drawn)
        if streams is not None:
            train = _generated_labels(name, config, n_clients, streams)
            n_train = len(train.y)
    else:
        n = {
            "digits": 1797,
            "synthetic_classification": config.synthetic_classification.n_samples,
            "synthetic_regression": config.synthetic_regression.n_samples,
        }[name]
        if name != "digits":
            _enough_samples(n, n_clients, f"data.{name}.n_samples")
        n_train = n - round(config.test_fraction * n)
        if n_train == n:
            raise ScenarioError(
                f"{config.test_fraction:g} of the {n} samples of {name} rounds to no test sample "
                "(the run evaluates on them); raise test_fraction",
                path="data.test_fraction",
                value=config.test_fraction,
            )
        if streams is not None:
            train = _generated_labels(name, config, n_clients, streams)
    if n_train < n_clients:
        raise ScenarioError(
            f"{n_clients} clients for the {n_train} training samples of {name}: every client "
            "needs at least one",
            path="clients.count",
            value=n_clients,
        )
    if train is not None and streams is not None:
        draw_partition(config, train, n_clients, streams)
    return n_train


def load_federated(
    config: DataConfig,
    n_clients: int,
    streams: SeedStreams,
    device: torch.device,
    user_data: Dataset | None = None,
    *,
    base_dir: str | Path | None = None,
) -> FederatedData:
    """The dataset on ``device``, split over ``n_clients`` by ``config.partition``.

    ``user_data`` (arrays passed to ``fedsim.run(data=...)``) replaces the dataset the config
    names; ``config.partition`` and ``config.n_classes`` still apply. ``base_dir`` is the folder
    relative paths (an npz file, a loader's .py file) are read from; None: the working directory.
    """
    user_data = _given(config, user_data)
    if user_data is not None or config.dataset in USER_DATASETS:
        if user_data is not None:
            checked, info = check_dataset(user_data, key="data", n_classes=config.n_classes)
        elif config.dataset == "npz":
            assert config.path is not None
            checked, info = load_npz(config.path, n_classes=config.n_classes, base_dir=base_dir)
        else:
            assert config.target is not None
            checked, info = import_dataset(
                config.target,
                config.kwargs,
                n_classes=config.n_classes,
                base_dir=base_dir,
                take=True,
            )
        if isinstance(config.partition, NaturalPartition):
            _check_natural(checked, n_clients, *_user_source(config, user_data, base_dir))
        raw = _user_raw(checked)
    else:
        info = dataset_info(config)
        raw = DATASETS[config.dataset][1](config, n_clients, streams)
    owners = raw.owners
    if raw.x_test is None:
        train, test = _test_split(len(raw.y), config.test_fraction, streams)
        x_train, y_train, x_test, y_test = raw.x[train], raw.y[train], raw.x[test], raw.y[test]
        if owners is not None:
            owners = owners[train]
    else:
        assert raw.y_test is not None
        x_train, y_train, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
    parts = _partition(config, y_train, owners, info.task, n_clients, streams)
    return FederatedData(
        info=info,
        x_train=torch.as_tensor(x_train, device=device),
        y_train=torch.as_tensor(y_train, device=device),
        x_test=torch.as_tensor(x_test, device=device),
        y_test=torch.as_tensor(y_test, device=device),
        client_indices=parts,
        meta=raw.meta,
    )


def describe_partition(data: FederatedData):
    """Per-client sizes and label histogram, one row per client (a pandas DataFrame).

    Columns: ``samples``, ``classes`` (distinct labels held), then ``label_<c>`` counts for every
    class; for a regression dataset ``samples``, ``y_mean``, ``y_std``, ``x_mean`` instead.
    """
    import pandas as pd

    y = data.y_train.detach().cpu().numpy()
    rows = data.client_indices
    columns: dict[str, Any] = {"samples": [len(ix) for ix in rows]}
    if data.info.task == "regression":
        x = data.x_train.detach().cpu().reshape(len(y), -1).numpy()
        columns["y_mean"] = [float(y[ix].mean()) if len(ix) else np.nan for ix in rows]
        columns["y_std"] = [float(y[ix].std()) if len(ix) else np.nan for ix in rows]
        columns["x_mean"] = [float(x[ix].mean()) if len(ix) else np.nan for ix in rows]
    else:
        n_classes = max(data.info.n_classes, int(y.max(initial=-1)) + 1)
        hist = np.stack([np.bincount(y[ix], minlength=n_classes) for ix in rows])
        columns["classes"] = (hist > 0).sum(axis=1)
        columns.update({f"label_{c}": hist[:, c] for c in range(n_classes)})
    frame = pd.DataFrame(columns)
    frame.index.name = "client"
    return frame
