"""Your own data (issue 12 §2): npz files, imported loaders and arrays passed from Python.

Each source trains (accuracy well above chance, or a regression loss far below the target's
variance), the natural partition gives each client exactly its own samples, arrays passed in
memory give the same trace as the same arrays in an npz file, and every kind of bad input is one
line naming the key, through ``fedsim validate``, ``fedsim run`` and the Python API.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import fedsim
import fedsim.simulation
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.imports import resolve_target
from fedsim.learning.data import DataConfig, check_data, dataset_info, load_federated
from fedsim.learning.user_data import _IMPORT_CACHE, Dataset, npz_headers, using_data
from fedsim.rng import SeedStreams

CPU = torch.device("cpu")
N_CLIENTS = 8


def _digits(seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's digits, shuffled, 1400 train / 397 test, owners in blocks of 8 clients."""
    from fedsim.learning.data import _load_digits

    x, y = _load_digits()
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    return {
        "x_train": x[:1400],
        "y_train": y[:1400],
        "x_test": x[1400:],
        "y_test": y[1400:],
        "owner_train": np.arange(1400) % N_CLIENTS,
    }


def _regression(seed: int = 0) -> dict[str, np.ndarray]:
    """y = x · w + 1 + small noise, 3 features, floats."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (600, 3)).astype(np.float32)
    y = (x @ np.array([2.0, -1.0, 0.5]) + 1.0 + 0.05 * rng.standard_normal(600)).astype(np.float32)
    return {"x_train": x[:500], "y_train": y[:500], "x_test": x[500:], "y_test": y[500:]}


def _scenario(data: dict, *, time_s: float = 120, model: dict | None = None) -> dict:
    return {
        "name": "byo",
        "seed": 5,
        "stop": {"time_s": time_s},
        "data": data,
        "model": model or {"kind": "mlp", "hidden": [32]},
        "training": {"local_steps": 5, "batch_size": 16, "lr": 0.1},
        "clients": {"count": N_CLIENTS, "compute": {"dist": "exponential", "mean_s": 2.0}},
        "algorithm": {"name": "fedasync", "concurrency": 4},
        "eval": {"every_s": 30.0},
    }


def _npz(tmp_path: Path, arrays: dict, name: str = "data.npz") -> Path:
    file = tmp_path / name
    np.savez(file, **arrays)
    return file


LOADER = '''
import numpy as np
import torch

CALLS = []


def load(seed=0, as_torch=False, owners=True):
    """The digits as a dict (numpy or torch)."""
    from fedsim.learning.data import _load_digits

    CALLS.append(seed)
    x, y = _load_digits()
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    out = {"x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:], "y_test": y[1400:]}
    if owners:
        out["owner_train"] = np.arange(1400) % 8
    if as_torch:
        out = {k: torch.as_tensor(v) for k, v in out.items()}
    return out


class Pairs(torch.utils.data.Dataset):
    """A map-style dataset of (x, y) pairs that is not a TensorDataset."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.as_tensor(self.x[i]), int(self.y[i])


def load_datasets():
    d = load(owners=False)
    train = Pairs(d["x_train"], d["y_train"])
    test = torch.utils.data.TensorDataset(torch.as_tensor(d["x_test"]), torch.as_tensor(d["y_test"]))
    return train, test


def raises():
    raise RuntimeError("the share is not mounted")


def wrong_type():
    return 42


def missing_array():
    return {"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, dtype=int)}


not_callable = 3
'''


@pytest.fixture
def loader_file(tmp_path: Path) -> Path:
    file = tmp_path / "my_loader.py"
    file.write_text(LOADER)
    return file


def _final(result):
    """The last evaluation row."""
    return result.evals.iloc[-1]


# ---------------------------------------------------------------------------------------------------
# npz: round trips


def test_npz_classification_trains(tmp_path):
    file = _npz(tmp_path, _digits())
    data = {"dataset": "npz", "path": str(file), "partition": {"kind": "iid"}}
    result = fedsim.run(_scenario(data), save=False)
    assert result.evals["accuracy"].iloc[0] < 0.3
    assert _final(result)["accuracy"] > 0.7  # chance is 0.1


def test_npz_regression_trains(tmp_path):
    arrays = _regression()
    file = _npz(tmp_path, arrays)
    data = {"dataset": "npz", "path": str(file), "partition": {"kind": "iid"}}
    info = dataset_info(DataConfig.model_validate(data))
    assert (info.task, info.n_classes, info.input_shape) == ("regression", 1, (3,))
    result = fedsim.run(_scenario(data, model={"kind": "linear"}), save=False)
    variance = float(np.var(arrays["y_test"]))
    assert result.evals["loss"].iloc[0] > 0.5 * variance
    assert _final(result)["loss"] < 0.05 * variance


def test_npz_info_from_headers_only(tmp_path, monkeypatch):
    """validate reads the headers (and labels), never the samples; n_classes may add classes."""
    arrays = _digits()
    arrays["x_train"] = arrays["x_train"].reshape(-1, 1, 8, 8)
    arrays["x_test"] = arrays["x_test"].reshape(-1, 1, 8, 8)
    file = _npz(tmp_path, arrays)
    headers = npz_headers(file)
    assert headers["x_train"] == ((1400, 1, 8, 8), np.dtype(np.float32))
    read: list[str] = []
    real = np.lib.npyio.NpzFile.__getitem__

    def spy(self, key):
        read.append(key)
        return real(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", spy)
    config = DataConfig(dataset="npz", path=str(file), n_classes=12, partition={"kind": "natural"})
    info = dataset_info(config)
    assert (info.n_classes, info.input_shape, info.has_owners) == (12, (1, 8, 8), True)
    assert check_data(config, N_CLIENTS) == 1400
    assert "x_train" not in read and "x_test" not in read
    assert "y_train" in read


def test_npz_path_relative_to_base_dir_then_cwd(tmp_path, monkeypatch):
    _npz(tmp_path, _regression(), name="rel.npz")
    config = DataConfig(dataset="npz", path="rel.npz", partition={"kind": "iid"})
    assert check_data(config, 4, base_dir=tmp_path) == 500
    with pytest.raises(ScenarioError, match="no such file"):
        check_data(config, 4, base_dir=tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    assert check_data(config, 4) == 500
    data = load_federated(config, 4, SeedStreams(0), CPU)
    assert data.x_train.shape == (500, 3) and data.info.task == "regression"


def test_natural_partition_gives_each_client_its_owners_samples(tmp_path):
    arrays = _digits()
    rng = np.random.default_rng(3)
    owners = rng.integers(N_CLIENTS, size=1400)  # uneven, interleaved
    arrays["owner_train"] = owners
    file = _npz(tmp_path, arrays)
    config = DataConfig(dataset="npz", path=str(file), partition={"kind": "natural"})
    data = load_federated(config, N_CLIENTS, SeedStreams(0), CPU)
    for client, rows in enumerate(data.client_indices):
        np.testing.assert_array_equal(rows, np.flatnonzero(owners == client))
        np.testing.assert_array_equal(
            data.x_train[rows].numpy(), arrays["x_train"][owners == client]
        )
        np.testing.assert_array_equal(
            data.y_train[rows].numpy(), arrays["y_train"][owners == client]
        )
    np.testing.assert_array_equal(
        data.x_test.numpy(), arrays["x_test"]
    )  # the file's own test split


# ---------------------------------------------------------------------------------------------------
# import: round trips


@pytest.mark.parametrize("as_torch", [False, True])
def test_import_file_target_trains_and_is_called_once(loader_file, as_torch):
    _IMPORT_CACHE.clear()
    target = f"{loader_file}:load"
    module = resolve_target(target, key="data.target")
    module_calls = resolve_target(f"{loader_file}:CALLS", key="data.target")
    module_calls.clear()
    data = {
        "dataset": "import",
        "target": target,
        "kwargs": {"seed": 1, "as_torch": as_torch},
        "partition": {"kind": "natural"},
    }
    result = fedsim.run(_scenario(data), save=False)
    assert _final(result)["accuracy"] > 0.7
    assert module_calls == [1]  # validation, the model's shape and the run share one call
    assert not _IMPORT_CACHE  # the run took the arrays
    assert callable(module)


def test_import_torch_datasets_materialised(loader_file):
    _IMPORT_CACHE.clear()
    config = DataConfig(dataset="import", target=f"{loader_file}:load_datasets")
    info = dataset_info(config)
    assert (info.n_classes, info.input_shape, info.has_owners) == (10, (64,), False)
    data = load_federated(config, N_CLIENTS, SeedStreams(0), CPU)
    expected = _digits()
    np.testing.assert_array_equal(data.x_train.numpy(), expected["x_train"])
    np.testing.assert_array_equal(data.y_test.numpy(), expected["y_test"])
    assert data.y_train.dtype == torch.int64 and data.x_train.dtype == torch.float32
    assert sum(len(ix) for ix in data.client_indices) == 1400


def test_import_module_target(tmp_path, monkeypatch, loader_file):
    monkeypatch.syspath_prepend(str(tmp_path))
    _IMPORT_CACHE.clear()
    config = DataConfig(dataset="import", target="my_loader:load", kwargs={"seed": 2})
    data = load_federated(config, N_CLIENTS, SeedStreams(0), CPU)
    np.testing.assert_array_equal(data.x_test.numpy(), _digits(seed=2)["x_test"])


# ---------------------------------------------------------------------------------------------------
# Arrays in memory


def _memory_run(scenario: dict, dataset: Dataset, out: Path):
    """``fedsim.run`` with ``dataset`` passed in memory: the wiring of ``fedsim.run(data=...)``."""
    with using_data(dataset):
        return fedsim.run(scenario, out=out)


def test_memory_dataset_same_trace_as_npz(tmp_path):
    arrays = _digits()
    file = _npz(tmp_path, arrays)
    data = {"dataset": "npz", "path": str(file), "partition": {"kind": "natural"}}
    scenario = _scenario(data, time_s=60)
    fedsim.run(scenario, out=tmp_path / "from_npz")
    # The in-memory arrays are torch tensors of other dtypes: converted exactly as the file's.
    dataset = Dataset(
        x_train=torch.as_tensor(arrays["x_train"]).double(),
        y_train=torch.as_tensor(arrays["y_train"]).int(),
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        owner_train=arrays["owner_train"].astype(np.int32),
    )
    memory = dict(scenario, data={"dataset": "memory", "partition": {"kind": "natural"}})
    _memory_run(memory, dataset, tmp_path / "from_memory")
    events = (tmp_path / "from_npz" / "events.parquet").read_bytes()
    assert (tmp_path / "from_memory" / "events.parquet").read_bytes() == events
    evals = _evals(tmp_path / "from_npz")
    pd.testing.assert_frame_equal(_evals(tmp_path / "from_memory"), evals)
    # The comparison can fail: other labels train another model (the timing does not change).
    changed = Dataset(**{**dataset.__dict__, "y_train": np.roll(arrays["y_train"], 1)})
    _memory_run(memory, changed, tmp_path / "changed")
    assert not _evals(tmp_path / "changed")["accuracy"].equals(evals["accuracy"])


def _evals(run_dir: Path) -> pd.DataFrame:
    """The evaluations without their wall-clock column."""
    return pd.read_parquet(run_dir / "evals.parquet").drop(columns="real_time_s")


def test_memory_dataset_load_matches_npz(tmp_path):
    arrays = _digits()
    file = _npz(tmp_path, arrays)
    config = DataConfig(dataset="npz", path=str(file), partition={"kind": "dirichlet"})
    from_file = load_federated(config, N_CLIENTS, SeedStreams(4), CPU)
    from_memory = load_federated(config, N_CLIENTS, SeedStreams(4), CPU, fedsim.Dataset(**arrays))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(from_file, name), getattr(from_memory, name))
    for a, b in zip(from_file.client_indices, from_memory.client_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    assert from_file.info == from_memory.info.__class__(
        **{**from_memory.info.__dict__, "name": "npz"}
    )


@pytest.mark.skipif(
    "data" not in inspect.signature(fedsim.run).parameters,
    reason="fedsim.run(data=...) is not wired in simulation.py yet",
)
def test_run_data_keyword_same_trace_as_npz(tmp_path):
    arrays = _digits()
    file = _npz(tmp_path, arrays)
    scenario = _scenario(
        {"dataset": "npz", "path": str(file), "partition": {"kind": "iid"}}, time_s=60
    )
    fedsim.run(scenario, out=tmp_path / "a")
    fedsim.run(scenario, out=tmp_path / "b", data=fedsim.Dataset(**arrays))
    events = (tmp_path / "a" / "events.parquet").read_bytes()
    assert (tmp_path / "b" / "events.parquet").read_bytes() == events
    pd.testing.assert_frame_equal(_evals(tmp_path / "a"), _evals(tmp_path / "b"))


# ---------------------------------------------------------------------------------------------------
# Bad input: one line naming the key, through the CLI (validate and run) and the API


def _bad_npz(tmp_path: Path, case: str) -> Path:
    d = _digits()
    file = tmp_path / "bad.npz"
    if case == "missing_file":
        return tmp_path / "nowhere.npz"
    if case == "not_npz":
        file.write_text("x_train,y_train\n1,2\n")
        return file
    if case == "folder":
        return tmp_path
    if case == "no_x_test":
        del d["x_test"]
    elif case == "lengths":
        d["y_train"] = d["y_train"][:-3]
    elif case == "object":
        d["y_train"] = np.array([int(v) for v in d["y_train"]], dtype=object)
    elif case == "strings":
        d["y_train"] = d["y_train"].astype(str)
    elif case == "mixed_labels":
        d["y_test"] = d["y_test"].astype(np.float32)
    elif case == "negative_label":
        d["y_test"][5] = -1
    elif case == "test_shape":
        d["x_test"] = d["x_test"][:, :10]
    elif case == "owner_range":
        d["owner_train"][7] = N_CLIENTS
    elif case == "few_owners":
        d["owner_train"] = np.arange(1400) % (N_CLIENTS - 2)
    elif case == "owner_length":
        d["owner_train"] = d["owner_train"][:100]
    elif case == "owner_float":
        d["owner_train"] = d["owner_train"].astype(np.float64)
    elif case == "no_owners":
        del d["owner_train"]
    np.savez(file, **d)
    return file


NPZ_CASES = {
    "missing_file": "no such file",
    "not_npz": "is not an .npz file",
    "folder": "is a folder",
    "no_x_test": "has no x_test",
    "lengths": "x_train has 1400 samples but y_train has 1397",
    "object": "array of Python objects",
    "strings": "y_train has type <U",
    "mixed_labels": "y_train has type int64 but y_test float32",
    "negative_label": "y_test holds label -1 at index 5",
    "test_shape": "x_train samples have shape (64,) but x_test samples (10,)",
    "owner_range": f"owner_train names client {N_CLIENTS}, but clients are 0..{N_CLIENTS - 1}",
    "few_owners": f"has {N_CLIENTS - 2} distinct owners for {N_CLIENTS} clients",
    "owner_length": "owner_train has shape (100,)",
    "owner_float": "owner_train has type float64",
    "no_owners": "has no owner_train",
}

IMPORT_CASES = {
    "nope_module_xyz:load": "no module named 'nope_module_xyz'",
    "{file}:absent": "has no attribute 'absent'",
    "{dir}/nowhere.py:load": "no such file",
    "{file}:raises": "raised RuntimeError: the share is not mounted",
    "{file}:wrong_type": "returned a int; expected a dict",
    "{file}:missing_array": "has no x_test, y_test",
    "{file}:not_callable": "is a int, not a function",
    "no colon": "is not a target",
}


def _write_scenario(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "scenario.yaml"
    scenario = _scenario(data, time_s=30)
    scenario["output"] = {"dir": str(tmp_path / "run")}
    path.write_text(yaml.safe_dump(scenario))
    return path


def _cli(args: list[str], capsys) -> str:
    """Run the CLI; assert exit status 2 and one ``error:`` line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0].removeprefix("error: ")


def _line_of(path: Path, key: str) -> int:
    """The line (from 1) of ``section.key`` in a block-style YAML file, found by reading it."""
    section, name = key.split(".")
    text = path.read_text().splitlines()
    start = text.index(f"{section}:")
    return next(i for i, t in enumerate(text) if i > start and t.startswith(f"  {name}:")) + 1


def _all_refuse(path: Path, key: str, fragment: str, capsys) -> None:
    """``fedsim validate``, ``fedsim run`` and ``fedsim.run`` all refuse with the same line,
    which starts with ``FILE:LINE:`` of the key."""
    where = f"{path}:{_line_of(path, key)}: {key}: "
    for command in ("validate", "run"):
        line = _cli([command, str(path)], capsys)
        assert line.startswith(where), line
        assert fragment in line, line
    with pytest.raises(ScenarioError) as info:
        fedsim.run(path, save=False)
    assert str(info.value).startswith(where) and fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert not (path.parent / "run").exists()


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_npz_one_line(tmp_path, capsys, case):
    natural = case.startswith(("owner_", "few_", "no_owners"))
    partition = {"kind": "natural" if natural else "iid"}
    data = {"dataset": "npz", "path": str(_bad_npz(tmp_path, case)), "partition": partition}
    _all_refuse(_write_scenario(tmp_path, data), "data.path", NPZ_CASES[case], capsys)


@pytest.mark.parametrize("target", list(IMPORT_CASES))
def test_bad_import_one_line(tmp_path, capsys, loader_file, target):
    _IMPORT_CACHE.clear()
    resolved = target.format(file=loader_file, dir=tmp_path)
    data = {"dataset": "import", "target": resolved, "partition": {"kind": "iid"}}
    _all_refuse(_write_scenario(tmp_path, data), "data.target", IMPORT_CASES[target], capsys)


def test_import_owners_checked_for_natural_partition(tmp_path, capsys, loader_file):
    _IMPORT_CACHE.clear()
    data = {
        "dataset": "import",
        "target": f"{loader_file}:load",
        "kwargs": {"owners": False},
        "partition": {"kind": "natural"},
    }
    _all_refuse(_write_scenario(tmp_path, data), "data.target", "has no owner_train", capsys)


def test_missing_path_or_target_is_a_config_error(tmp_path, capsys):
    for data, key, fragment in (
        ({"dataset": "memory"}, "data.dataset", "none were passed"),
        ({"dataset": "npz"}, "data", "set data.path to the .npz file"),
        ({"dataset": "import"}, "data", "set data.target"),
        ({"dataset": "digits", "target": "m:f"}, "data", "data.target is read by dataset import"),
    ):
        path = _write_scenario(tmp_path, data)
        line = _cli(["validate", str(path)], capsys)
        assert f"{key}: " in line and fragment in line, line


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"y_train": np.zeros(5, dtype=np.int64)}, "x_train has 1400 samples but y_train has 5"),
        ({"x_train": np.array([["a"] * 64] * 1400)}, "x_train has type <U1"),
        ({"y_test": np.full(397, 11)}, "label 11 is outside 0..9"),
        ({"x_test": np.full((397, 64), np.nan, dtype=np.float32)}, "not a finite number"),
        ({"owner_train": np.arange(1400) % 3}, "3 distinct owners for 8 clients"),
    ],
)
def test_bad_memory_dataset(change, fragment):
    arrays = {**_digits(), **change}
    config = DataConfig(dataset="memory", partition={"kind": "natural"})
    dataset = fedsim.Dataset(**arrays, n_classes=10)
    scenario = _scenario({"dataset": "memory", "partition": {"kind": "natural"}})

    def run():
        with using_data(dataset):
            fedsim.run(scenario, save=False)

    for call in (
        lambda: check_data(config, N_CLIENTS, dataset),
        lambda: load_federated(config, N_CLIENTS, SeedStreams(0), CPU, dataset),
        run,
    ):
        with pytest.raises(ScenarioError) as info:
            call()
        assert str(info.value).startswith("data: ") and fragment in str(info.value), info.value


def test_loader_file_source_shown(loader_file):
    """A target's file is imported under a private name, so two files named alike do not clash."""
    other = loader_file.parent / "sub"
    other.mkdir()
    (other / "my_loader.py").write_text(textwrap.dedent("def load():\n    return 'other'\n"))
    assert resolve_target(f"{other / 'my_loader.py'}:load", key="k")() == "other"
    assert resolve_target(f"{loader_file}:not_callable", key="k") == 3
