"""The run directory's facts about its world (issue 15): ``clients.parquet``,
``availability.parquet``, ``topology.parquet`` and ``mixing.npy`` agree with the events trace,
round-trip through ``Result``, hold one row per client and task for the multi-task algorithms,
and a run directory written before them still loads and plots (with a clear message)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import fedsim
from fedsim import plots
from fedsim.errors import ScenarioError
from fedsim.result import CLIENTS_SCHEMA
from fedsim.scenario import load_scenario

DIGITS_TRAIN = 1797 - round(0.2 * 1797)
"""Training samples of digits with the default test_fraction 0.2."""


def learning(**overrides) -> dict:
    base = {
        "name": "facts",
        "seed": 5,
        "stop": {"time_s": 30},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [8]},
        "training": {"local_steps": 1, "batch_size": 8, "lr": 0.05},
        "clients": {
            "count": 12,
            "compute": {"dist": "constant", "mean_s": 2.0},
            "heterogeneity": {"dist": "lognormal", "sigma": 0.5},
            "stragglers": {"fraction": 0.25, "slowdown": 4.0},
            "network": {"latency_s": 0.1},
        },
        "byzantine": {"fraction": 0.25, "speed": 0.5, "attack": {"name": "sign_flip"}},
        "algorithm": {"name": "fedasync", "concurrency": 4},
        "eval": {"every_s": 10.0},
    }
    base.update(overrides)
    return base


def timing_only(availability: dict | None = None, **overrides) -> dict:
    clients = {"count": 10, "compute": {"dist": "exponential", "mean_s": 1.0}}
    if availability is not None:
        clients["availability"] = availability
    base = {
        "name": "facts_timing",
        "seed": 2,
        "stop": {"time_s": 120},
        "training": "none",
        "clients": clients,
        "algorithm": {"name": "fedasync", "concurrency": 4},
        "eval": {"every_s": 60.0},
    }
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    out = tmp_path_factory.mktemp("facts") / "run"
    return fedsim.run(learning(), out=out)


def test_clients_file_agrees_with_the_events_trace(attacked):
    clients = pd.read_parquet(attacked.run_dir / "clients.parquet")
    assert list(clients.columns) == CLIENTS_SCHEMA.names
    assert clients["client"].tolist() == list(range(12)) and (clients["task"] == 0).all()
    jobs = attacked.events[attacked.events["status"] != "message"]
    assert len(jobs) > 20 and jobs["byzantine"].any()
    # Accepted updates come only from clients the file lists.
    accepted = jobs[jobs["status"].isin(["applied", "buffered"])]
    assert set(accepted["client"]) <= set(clients["client"])
    # The byzantine column of every job is its client's flag in the file.
    by_client = clients.set_index("client")
    np.testing.assert_array_equal(
        jobs["byzantine"].to_numpy(), by_client.loc[jobs["client"], "byzantine"].to_numpy()
    )
    assert clients["byzantine"].sum() == attacked.summary["byzantine_clients"] == 3
    # Constant compute law, no slow jobs: each job's compute time is its client's speed × 2 s,
    # attackers (byzantine.speed 0.5) included.
    np.testing.assert_allclose(
        jobs["compute_s"].to_numpy(), 2.0 * by_client.loc[jobs["client"], "speed"].to_numpy()
    )
    assert clients["straggler"].sum() == 3
    # The clients' data is the whole training set, and their label counts add up to it.
    assert clients["data_size"].sum() == DIGITS_TRAIN
    counts = np.stack(clients["label_counts"].to_numpy())
    np.testing.assert_array_equal(counts.sum(axis=1), clients["data_size"])
    assert counts.shape == (12, 10)
    # Always online: online for the whole run.
    assert clients["online_at_start"].all()
    np.testing.assert_allclose(clients["online_s"], attacked.summary["sim_time_s"])
    assert (clients["server"] == 0).all()


def test_clients_round_trip_through_result(attacked):
    in_memory = fedsim.run(learning(), save=False)
    loaded = fedsim.Result.load(attacked.run_dir)
    pd.testing.assert_frame_equal(loaded.clients, in_memory.clients)
    pd.testing.assert_frame_equal(attacked.clients, loaded.clients)
    assert loaded.topology is None
    assert loaded.availability.empty


def test_topology_round_trips_through_result(tmp_path, root):
    scenario = load_scenario(root / "scenarios" / "dfl_toy.yaml")
    short = {"stop.time_s": 3.0}
    saved = fedsim.run(scenario, short, out=tmp_path / "dfl")
    in_memory = fedsim.run(scenario, short, save=False)
    assert {"topology.parquet", "mixing.npy"} <= {p.name for p in saved.run_dir.iterdir()}
    loaded = fedsim.Result.load(saved.run_dir).topology
    built = in_memory.topology
    np.testing.assert_array_equal(loaded.W, built.W)
    assert sorted(loaded.graph.edges()) == sorted(built.graph.edges())
    assert loaded.gap == pytest.approx(saved.summary["topology"]["spectral_gap"])
    assert loaded.assignment == built.assignment
    clients = fedsim.Result.load(saved.run_dir).clients
    for server, members in enumerate(built.assignment):
        assert set(clients.loc[clients["server"] == server, "client"]) == set(members)
    # Client jobs run on their own server.
    jobs = saved.events[saved.events["status"] != "message"]
    np.testing.assert_array_equal(
        jobs["server"].to_numpy(), clients.set_index("client").loc[jobs["client"], "server"]
    )


def _spans(at_start: bool, switches: pd.DataFrame, end: float) -> list[tuple[float, float]]:
    """One client's online intervals from its state at 0 and its switches (the test's own walk)."""
    spans, online, since = [], at_start, 0.0
    for t, state in zip(switches["sim_time"], switches["online"], strict=True):
        if online and not state:
            spans.append((since, t))
        if state and not online:
            since = t
        online = state
    if online:
        spans.append((since, end))
    return spans


def test_availability_file_agrees_with_the_trace(tmp_path):
    markov = {
        "kind": "markov",
        "online": {"dist": "exponential", "mean_s": 15.0},
        "offline": {"dist": "exponential", "mean_s": 10.0},
    }
    result = fedsim.run(timing_only(markov), out=tmp_path / "markov")
    clients = result.clients.set_index("client")
    switches = pd.read_parquet(result.run_dir / "availability.parquet")
    assert switches["sim_time"].is_monotonic_increasing and len(switches) > 20
    end = result.summary["sim_time_s"]
    jobs = result.events
    offline_drops = jobs[jobs["reason"] == "offline"]
    assert len(offline_drops) > 0
    for client in range(10):
        own = switches[switches["client"] == client]
        spans = _spans(bool(clients.loc[client, "online_at_start"]), own, end)
        # Time online: the file's figure is the length of the client's online spans.
        assert clients.loc[client, "online_s"] == pytest.approx(sum(b - a for a, b in spans))
        # Every job of the client started while it was online ...
        for start in jobs.loc[jobs["client"] == client, "dispatched_at"]:
            assert any(a <= start < b for a, b in spans), (client, start)
        # ... and a job lost to its client going offline ends exactly at a switch offline.
        went_off = set(own.loc[~own["online"], "sim_time"])
        assert set(offline_drops.loc[offline_drops["client"] == client, "sim_time"]) <= went_off


@pytest.mark.parametrize("algorithm", ["fedast", "sync_st"])
def test_multitask_algorithms_write_per_task_facts(tmp_path, algorithm):
    params = (
        {"concurrency": 6, "buffer_ratio": 2} if algorithm == "fedast" else {"clients_per_round": 6}
    )
    scenario = {
        "name": "tasks",
        "seed": 1,
        "stop": {"time_s": 8},
        "training": {"local_steps": 1, "batch_size": 16, "lr": 0.05},
        "clients": {"count": 16, "compute": {"dist": "exponential", "mean_s": 1.0}},
        "algorithm": {
            "name": algorithm,
            **params,
            "tasks": [
                {
                    "data": {"dataset": "digits", "partition": {"kind": "iid"}},
                    "model": {"kind": "mlp", "hidden": [8]},
                },
                {
                    "data": {
                        "dataset": "synthetic_classification",
                        "synthetic_classification": {"n_samples": 1000},
                        "partition": {"kind": "dirichlet", "alpha": 0.5},
                    },
                    "model": {"kind": "mlp", "hidden": [8]},
                },
            ],
        },
        "eval": {"every_s": 4.0},
    }
    result = fedsim.run(scenario, out=tmp_path / algorithm)
    clients = fedsim.Result.load(result.run_dir).clients
    assert len(clients) == 2 * 16
    assert sorted(set(clients["task"])) == [0, 1]
    sizes = clients.groupby("task")["data_size"].sum()
    assert sizes[0] == DIGITS_TRAIN and sizes[1] == 800
    for _, rows in clients.groupby("task"):
        counts = np.stack(rows["label_counts"].to_numpy())
        np.testing.assert_array_equal(counts.sum(axis=1), rows["data_size"])
    # The clients (and their speeds) are shared by the tasks; only the data differs.
    first, second = (rows.reset_index(drop=True) for _, rows in clients.groupby("task"))
    pd.testing.assert_series_equal(first["speed"], second["speed"])
    task1 = plots.client_label_counts(result, task=1)
    assert task1.shape[0] == 16 and task1.sum() == 800
    # Every task's jobs come from the listed clients.
    assert set(result.events["client"]) <= set(first["client"])


def test_old_run_directory_without_the_files_still_loads_and_plots(tmp_path):
    markov = {
        "kind": "markov",
        "online": {"dist": "exponential", "mean_s": 20.0},
        "offline": {"dist": "exponential", "mean_s": 10.0},
    }
    run_dir = tmp_path / "old"
    fedsim.run(timing_only(markov), out=run_dir)
    for name in ("clients.parquet", "availability.parquet"):
        (run_dir / name).unlink()
    old = fedsim.Result.load(run_dir)
    assert len(old.events) > 0 and old.summary["updates"] > 0
    with pytest.raises(ScenarioError, match=r"clients\.parquet is missing.*run the scenario again"):
        _ = old.clients
    with pytest.raises(ScenarioError, match=r"clients\.parquet"):
        plots.client_speeds(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = plots.standard_figures(old)
    said = " ".join(str(w.message) for w in caught)
    assert "contribution drawn without speeds" in said and "clients.parquet is missing" in said
    assert {"timeline", "contribution"} <= set(figures)
    assert len(figures["contribution"].axes) == 1  # no speed panel without the speeds
    assert "online" not in figures


def test_importing_the_plots_does_not_import_the_engine(root):
    code = (
        "import sys, fedsim.plots, fedsim.plots_network, fedsim.plots_tasks\n"
        "engine = [m for m in ('fedsim.simulation', 'fedsim.checkpoint') if m in sys.modules]\n"
        "assert not engine, engine\n"
        "import fedsim\n"
        "assert fedsim.Result is fedsim.plots.Result\n"
        "assert 'fedsim.simulation' not in sys.modules\n"
        "fedsim.run\n"
        "assert 'fedsim.simulation' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr


class _StopAt:
    """Stops the process at an evaluation, as a kill would: no file is finished."""

    def __init__(self, at: float) -> None:
        self.at = at

    def on_eval(self, *, sim_time: float) -> None:
        if sim_time >= self.at:
            raise KeyboardInterrupt


def test_a_resumed_run_writes_the_same_facts(tmp_path):
    """The availability log travels in the checkpoint: time online counts the spans before it."""
    markov = {
        "kind": "markov",
        "online": {"dist": "exponential", "mean_s": 15.0},
        "offline": {"dist": "exponential", "mean_s": 10.0},
    }
    data = timing_only(markov, output={"checkpoint_every_s": 25.0}, eval={"every_s": 10.0})
    fedsim.run(data, out=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(data, out=tmp_path / "stopped", callbacks=[_StopAt(70.0)])
    assert (tmp_path / "stopped" / "checkpoint.pkl").is_file()
    fedsim.run(resume=tmp_path / "stopped")
    for name in ("clients.parquet", "availability.parquet"):
        whole, resumed = (pd.read_parquet(tmp_path / d / name) for d in ("whole", "stopped"))
        pd.testing.assert_frame_equal(whole, resumed, check_exact=True)


def test_fedsim_plot_online_and_participation(tmp_path, capsys):
    from fedsim.cli import main

    markov = {
        "kind": "markov",
        "online": {"dist": "exponential", "mean_s": 15.0},
        "offline": {"dist": "exponential", "mean_s": 10.0},
    }
    run_dir = tmp_path / "run"
    fedsim.run(timing_only(markov), out=run_dir)
    for kind in ("online", "participation"):
        out = tmp_path / f"{kind}.png"
        main(["plot", str(run_dir), "--kind", kind, "--out", str(out)])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (run_dir / "clients.parquet").unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["plot", str(run_dir), "--kind", "online", "--out", str(tmp_path / "old.png")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clients.parquet is missing" in err[0]
