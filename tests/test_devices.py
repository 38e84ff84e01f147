"""Client devices (``clients.devices``) and per-sample compute (``clients.compute.per_sample``),
issue 15: the samples a job processes against the trainer's own batches, job times in the events
trace against the analytic value, device-profile files (a CSV and a FedScale pickle generated
here) read back and their speeds and bandwidths found in the trace's job durations, and the
one-line errors. Runs build their timing with :meth:`ClientTiming.for_scenario`
(``fedsim/world.py``).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fedsim
from fedsim.cli import main
from fedsim.devices import read_device_profile
from fedsim.learning.data import load_federated
from fedsim.learning.trainer import TrainingConfig, batch_schedule
from fedsim.rng import SeedStreams
from fedsim.scenario import ClientsConfig, load_scenario
from fedsim.timing import ClientTiming, samples_per_job


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _events(result: fedsim.Result) -> pd.DataFrame:
    return pd.read_parquet(result.run_dir / "events.parquet")


def learning(tmp_path: Path, clients: dict, training: dict, seed: int = 3) -> dict:
    return {
        "name": "devices",
        "seed": seed,
        "stop": {"time_s": 40.0},
        "data": {"dataset": "digits", "partition": {"kind": "quantity_skew"}},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": training,
        "clients": clients,
        "algorithm": {"name": "fedasync", "concurrency": 4},
        "eval": {"every_s": 20.0},
        "output": {"dir": str(tmp_path / "run")},
    }


def client_sizes(scenario: dict) -> np.ndarray:
    loaded = load_scenario(scenario)
    data = load_federated(
        loaded.data, loaded.clients.count, SeedStreams(loaded.seed), torch.device("cpu")
    )
    return np.asarray(data.client_sizes)


# ---------------------------------------------------------------------------------------------------
# Samples per job


@pytest.mark.parametrize(
    "training",
    [
        {"local_steps": 3, "batch_size": 32},
        {"local_epochs": 1.5, "batch_size": 32},
        {"local_epochs": 1.0, "batch_size": 7},
        {"local_steps": 2, "batch_size": 32, "sampling": "with_replacement"},
    ],
)
def test_samples_per_job_are_the_rows_the_trainer_feeds(training):
    """Against the trainer's own mini-batch schedule (its rows per job), and by hand."""
    config = TrainingConfig(**training)
    sizes = np.array([10, 50, 100, 33, 1])
    got = samples_per_job(config, sizes)
    replace = config.sampling == "with_replacement"
    for n, samples in zip(sizes, got, strict=True):
        b = config.batch_size if replace else min(config.batch_size, n)
        steps = (
            config.local_steps
            if config.local_epochs is None
            else math.ceil(config.local_epochs * n / b)
        )
        rows = batch_schedule(int(n), steps, config.batch_size, np.random.default_rng(0), replace)
        assert samples == rows.size == steps * b
    assert samples_per_job(config, np.array([0])).tolist() == [0]  # no data: no work, no error
    if training == {"local_epochs": 1.5, "batch_size": 32}:
        # 10: 2 steps of 10; 50: ceil(75/32) = 3 steps of 32 (the partial third one is full)
        assert got.tolist() == [20, 96, 160, 64, 2]


def test_per_sample_job_times_are_samples_times_the_law(tmp_path):
    """Constant 2 ms per sample, one local epoch of batches of 8 on a quantity-skewed split:
    every job's compute_s is 0.002 · ceil(n_i / b_i) · b_i for its client's n_i samples."""
    clients = {"count": 12, "compute": {"dist": "constant", "mean_s": 0.002, "per_sample": True}}
    training = {"local_epochs": 1.0, "batch_size": 8}
    scenario = learning(tmp_path, clients, training)
    result = fedsim.run(scenario)
    rows = _events(result)
    rows = rows[rows["status"] == "applied"]
    assert len(rows) > 20
    sizes = client_sizes(scenario)
    assert len(set(sizes.tolist())) > 3  # sizes differ: so do job times
    width = np.minimum(8, sizes)
    expected = 0.002 * np.ceil(sizes / width) * width
    np.testing.assert_allclose(rows["compute_s"], expected[rows["client"]], rtol=1e-12)


def test_per_sample_off_is_the_default_and_unchanged(tmp_path, small_learning):
    """per_sample: false and devices: builtin written out give the default's exact trace."""
    small_learning["stop"] = {"time_s": 20}
    a = fedsim.run(small_learning, out=tmp_path / "a")
    explicit = dict(small_learning)
    explicit["clients"] = {
        **small_learning["clients"],
        "compute": {**small_learning["clients"]["compute"], "per_sample": False},
        "devices": {"kind": "builtin"},
    }
    b = fedsim.run(explicit, out=tmp_path / "b")
    pd.testing.assert_frame_equal(_events(a), _events(b))


# ---------------------------------------------------------------------------------------------------
# Device profiles


DEVICES = {7: (10.0, 800.0), 2: (20.0, 4000.0), 5: (40.0, 1600.0)}
"""client id -> (ms per sample, kbit/s); in increasing id order: 2, 5, 7."""


def _profile_csv(path: Path) -> Path:
    lines = ["client,compute_ms_per_sample,bandwidth_kbps", "# a comment"]
    lines += [f"{c},{ms},{kbps}" for c, (ms, kbps) in DEVICES.items()]
    return _write(path, "\n".join(lines) + "\n")


def _profile_pickle(path: Path) -> Path:
    capacity = {c: {"computation": ms, "communication": kbps} for c, (ms, kbps) in DEVICES.items()}
    path.write_bytes(pickle.dumps(capacity))
    return path


@pytest.mark.parametrize("make", [_profile_csv, _profile_pickle])
def test_device_profiles_round_trip(tmp_path, make):
    path = make(tmp_path / "client_device_capacity")
    assert read_device_profile(path) == DEVICES


@pytest.mark.parametrize("make", [_profile_csv, _profile_pickle])
def test_profile_speeds_and_bandwidths_are_the_trace_durations(tmp_path, make):
    """Timing-only, constant 6 s jobs: client i runs device (2, 5, 7)[i mod 3]; its jobs compute
    6 · ms_i / mean(ms) seconds and each transfer takes latency + bytes · 8 / (1000 · kbps)."""
    profile = make(tmp_path / "devices")
    clients = {
        "count": 7,
        "compute": {"dist": "constant", "mean_s": 6.0},
        "network": {"latency_s": 0.25},
        "devices": {"kind": "profile", "path": str(profile)},
    }
    scenario = {
        "name": "devices",
        "seed": 1,
        "stop": {"time_s": 200.0},
        "training": "none",
        "clients": clients,
        "algorithm": {"name": "fedasync", "concurrency": 3},
        "eval": {"every_s": 100.0},
    }
    timing = ClientTiming.for_scenario(
        load_scenario(scenario), sizes=np.ones(7), streams=SeedStreams(1), model_bytes=1000
    )
    ms = np.array([DEVICES[k][0] for k in (2, 5, 7)])
    kbps = np.array([DEVICES[k][1] for k in (2, 5, 7)])
    assert timing.speed == pytest.approx((ms / ms.mean())[np.arange(7) % 3].tolist(), rel=1e-12)
    rows = _events(fedsim.run(scenario, out=tmp_path / "run"))
    rows = rows[rows["status"] == "applied"]
    assert set(rows["client"]) == set(range(7))
    device = rows["client"].to_numpy() % 3
    np.testing.assert_allclose(rows["compute_s"], 6.0 * ms[device] / ms.mean(), rtol=1e-12)
    transfer = (rows["bytes_down"] + rows["bytes_up"]) * 8 / (1000 * kbps[device])
    np.testing.assert_allclose(rows["comm_s"], 2 * 0.25 + transfer, rtol=1e-12)


def test_profile_with_per_sample_gives_the_devices_absolute_times(tmp_path):
    """per_sample with a profile: a job computes the device's ms per sample × its samples (a
    constant law is noise 1, whatever its mean)."""
    profile = _profile_pickle(tmp_path / "capacity.pkl")
    clients = {
        "count": 6,
        "compute": {"dist": "constant", "mean_s": 123.0, "per_sample": True},
        "devices": {"kind": "profile", "path": str(profile)},
    }
    scenario = learning(tmp_path, clients, {"local_steps": 2, "batch_size": 16})
    rows = _events(fedsim.run(scenario))
    rows = rows[rows["status"] == "applied"]
    assert len(rows) > 10
    sizes = client_sizes(scenario)
    ms = np.array([DEVICES[k][0] for k in (2, 5, 7)])
    client = rows["client"].to_numpy()
    expected = ms[client % 3] / 1000 * 2 * np.minimum(16, sizes[client])
    np.testing.assert_allclose(rows["compute_s"], expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Errors


def _validate(tmp_path: Path, capsys, clients: str, training: str = "none") -> str:
    scenario_file = _write(
        tmp_path / "s.yaml",
        f"name: t\ntraining: {training}\nstop: {{time_s: 5}}\nclients: {clients}\n",
    )
    with pytest.raises(SystemExit) as info:
        main(["validate", str(scenario_file)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,10\n", "line 1: expected 3 fields"),
        ("client,compute_ms_per_sample,bandwidth_kbps\n0,x,5\n", "line 2: not a number"),
        ("0,0,5\n", "compute_ms_per_sample must be > 0"),
        ("0,5,-1\n", "bandwidth_kbps must be > 0"),
        ("0,5,1\n0,6,1\n", "client 0 appears twice"),
        ("# nothing\n", "holds no devices"),
    ],
)
def test_bad_profile_csv(tmp_path, capsys, text, message):
    _write(tmp_path / "d.csv", text)
    err = _validate(tmp_path, capsys, "{count: 2, devices: {kind: profile, path: d.csv}}")
    assert "d.csv" in err and message in err and "clients.devices.path" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({0: {"computation": 5}}, "expected a dict with keys computation and communication"),
        ({0: {"computation": 5, "communication": 0}}, "communication must be > 0"),
        ([5], "non-empty dict client_id"),
    ],
)
def test_bad_profile_pickle(tmp_path, capsys, content, message):
    (tmp_path / "d.pkl").write_bytes(pickle.dumps(content))
    err = _validate(tmp_path, capsys, "{count: 2, devices: {kind: profile, path: d.pkl}}")
    assert "d.pkl" in err and message in err


def test_a_profile_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    class_ref = pickle.dumps({0: {"computation": np.float64(5.0), "communication": 1.0}})
    (tmp_path / "d.pkl").write_bytes(class_ref)  # numpy scalars: a global the reader refuses
    err = _validate(tmp_path, capsys, "{count: 2, devices: {kind: profile, path: d.pkl}}")
    assert "only plain dicts, lists and numbers" in err and "numpy" in err


@pytest.mark.parametrize(
    ("clients", "key"),
    [
        (
            "{heterogeneity: {dist: lognormal}, devices: {kind: profile, path: d.csv}}",
            "clients.heterogeneity",
        ),
        (
            "{network: {bandwidth_mbps: 10}, devices: {kind: profile, path: d.csv}}",
            "clients.network.bandwidth_mbps",
        ),
    ],
)
def test_profile_and_builtin_speeds_are_not_both_set(tmp_path, capsys, clients, key):
    _profile_csv(tmp_path / "d.csv")
    assert key in _validate(tmp_path, capsys, clients)


def test_per_sample_needs_training(tmp_path, capsys):
    err = _validate(tmp_path, capsys, "{compute: {dist: constant, per_sample: true}}")
    assert "clients.compute.per_sample" in err and "training" in err


def test_a_delay_law_elsewhere_has_no_per_sample():
    """per_sample belongs to clients.compute, not to every delay law (a Markov spell has none)."""
    with pytest.raises(Exception, match="per_sample"):
        ClientsConfig(
            availability={"kind": "markov", "online": {"dist": "constant", "per_sample": True}}
        )
