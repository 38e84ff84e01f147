"""Determinism (DESIGN.md "Randomness"; issue 2 "Tests that must exist").

The same scenario and seed give byte-identical ``events.parquet`` files and equal evaluations (all but
the wall-clock column); a different seed gives a different trace. Simulated time comes only from the
timing models, so neither the learning settings, the trainer backend nor the chunking of the trace
may change the events.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fedsim
from fedsim.learning.batched import make_trainer
from fedsim.scenario import load_scenario
from fedsim.simulation import Result, Simulation

from .conftest import SCENARIOS


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: extra intra-op threads only contend (30x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def busy_scenario(algorithm: dict) -> dict:
    """Small, but every random stream in use: partition, heterogeneity, stragglers, slow jobs,
    dropout, network, client sampling, per-job training seeds."""
    return {
        "name": "determinism",
        "seed": 3,
        "stop": {"time_s": 40},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": {"local_steps": 3, "batch_size": 16, "lr": 0.05},
        "clients": {
            "count": 20,
            "compute": {"dist": "lognormal", "mean_s": 2.0, "sigma": 0.5},
            "heterogeneity": {"dist": "lognormal", "sigma": 0.5},
            "stragglers": {"fraction": 0.1, "slowdown": 5.0, "job_prob": 0.05},
            "dropout": {"prob": 0.1},
            "network": {"latency_s": 0.05, "bandwidth_mbps": 10.0},
        },
        "algorithm": algorithm,
        "eval": {"every_s": 7.0},
    }


ALGORITHMS = {
    "fedasync": {"name": "fedasync", "concurrency": 5, "alpha": 0.6},
    "fedavg": {"name": "fedavg", "cohort_size": 4, "over_selection": 0.5, "deadline_s": 6.0},
    "fedbuff": {"name": "fedbuff", "concurrency": 6, "buffer_size": 3},
}
WALL_CLOCK_KEYS = {"wall_time_s", "updates_per_wall_s", "train_wall_s", "eval_wall_s", "run_dir"}


def without_wall_clock(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in WALL_CLOCK_KEYS}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_same_seed_same_bytes_other_seed_other_trace(tmp_path, name):
    scenario = busy_scenario(ALGORITHMS[name])
    a = fedsim.run(scenario, out=tmp_path / "a")
    b = fedsim.run(scenario, out=tmp_path / "b")
    c = fedsim.run(scenario, {"seed": 4}, out=tmp_path / "c")

    # The run did something worth comparing.
    statuses = set(a.events["status"])
    assert len(a.events) > 30 and "dropped" in statuses
    assert statuses & {"applied", "buffered"}
    assert a.evals["accuracy"].notna().all() and len(a.evals) >= 6

    for file in ("events.parquet", "scenario.yaml"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    evals_a = pd.read_parquet(tmp_path / "a" / "evals.parquet").drop(columns=["real_time_s"])
    evals_b = pd.read_parquet(tmp_path / "b" / "evals.parquet").drop(columns=["real_time_s"])
    pd.testing.assert_frame_equal(evals_a, evals_b, check_exact=True)
    pd.testing.assert_frame_equal(a.events, b.events, check_exact=True)
    summary_a = json.loads((tmp_path / "a" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert without_wall_clock(summary_a) == without_wall_clock(summary_b)

    # What was written is what was returned.
    loaded = Result.load(tmp_path / "a")
    pd.testing.assert_frame_equal(loaded.events, a.events, check_exact=True)
    pd.testing.assert_frame_equal(loaded.evals, a.evals, check_exact=True)

    # Another seed: another trace (timing, sampling and training all move).
    assert (tmp_path / "a" / "events.parquet").read_bytes() != (
        tmp_path / "c" / "events.parquet"
    ).read_bytes()
    assert not a.events.equals(c.events)
    n = min(len(a.events), len(c.events))
    assert not np.array_equal(a.events["sim_time"][:n], c.events["sim_time"][:n])
    assert not np.array_equal(a.evals["loss"], c.evals["loss"][: len(a.evals)])


def test_trace_does_not_depend_on_learning_chunking_or_backend(tmp_path):
    """Simulated time comes only from the timing models: the events of a run do not change with the
    learning rate, with ``training: none``, with the trainer backend, or with how often the trace is
    flushed to disk in chunks. (Holds while no update is rejected, which would change a status.)"""
    scenario = busy_scenario(ALGORITHMS["fedbuff"])
    base = fedsim.run(scenario, save=False)
    assert "rejected" not in set(base.events["status"])
    variants = {
        "lr": {"training.lr": 0.2},
        "timing_only": {"training": "none"},
        "backend": {"training.backend": "sequential"},
    }
    for label, override in variants.items():
        other = fedsim.run(scenario, override, save=False)
        pd.testing.assert_frame_equal(other.events, base.events, check_exact=True, obj=label)
    # Learning settings change the model, not the clock: the lr run's losses differ ...
    lr = fedsim.run(scenario, variants["lr"], save=False)
    assert not np.allclose(lr.evals["loss"].iloc[1:], base.evals["loss"].iloc[1:])
    # ... while another backend gives the same model up to float re-association.
    sequential = fedsim.run(scenario, variants["backend"], save=False)
    np.testing.assert_allclose(sequential.evals["loss"], base.evals["loss"], rtol=1e-5, atol=1e-6)
    # The vmap trainer, installed by hand (whatever training.backend selects inside the simulation):
    # the same events, and the same models up to float re-association.
    sim = Simulation(load_scenario(scenario))
    sim.trainer = sim.pool.trainer = make_trainer(sim.trainer.task, "batched")
    batched = sim.run()
    assert sim.trainer.jobs_batched > 0 and sim.trainer.largest_flush > 1
    pd.testing.assert_frame_equal(batched.events, base.events, check_exact=True, obj="batched")
    np.testing.assert_allclose(batched.evals["loss"], base.evals["loss"], rtol=1e-5, atol=1e-6)
    # A trace flushed in chunks of 7 rows reads back the same as one written at the end.
    chunked = fedsim.run(scenario, {"output.flush_rows": 7}, out=tmp_path / "chunked")
    assert len(chunked.events) > 7 * 4
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "chunked" / "events.parquet"), base.events, check_exact=True
    )
    evals = pd.read_parquet(tmp_path / "chunked" / "evals.parquet").drop(columns=["real_time_s"])
    pd.testing.assert_frame_equal(evals, base.evals.drop(columns=["real_time_s"]), check_exact=True)


# ---------------------------------------------------------------------------------------------------
# Every shipped scenario, and every algorithm: the same seed gives the same bytes.

SHORT = {"stop.time_s": 12.0, "stop.max_updates": 150}
"""Brief runs: long enough for every scenario to update, evaluate and (most) to drop or straggle."""

FEWER = {"clients.count": 48, "stop.max_updates": 60}
"""FedAST builds a dataset per task for each of its 200 clients: fewer clients, fewer updates."""
OVERRIDES = {"fedast_multitask": FEWER, "fedast_hetero": FEWER}
SHIPPED = {p.stem: (p, OVERRIDES.get(p.stem, {})) for p in sorted(SCENARIOS.glob("*.yaml"))}
VARIANTS = {  # the algorithms no shipped scenario uses, on the scenario their docs compare them in
    "fedfix_compare-async_fedavg": (
        SCENARIOS / "fedfix_compare.yaml",
        {"algorithm.name": "async_fedavg"},
    ),
    "fedfix_compare-fedbuff_c": (
        SCENARIOS / "fedfix_compare.yaml",
        {"algorithm.name": "fedbuff_c"},
    ),
    "frain_nullifiers-brain": (SCENARIOS / "frain_nullifiers.yaml", {"algorithm.name": "brain"}),
    "fedast_multitask-sync_st": (
        SCENARIOS / "fedast_multitask.yaml",
        {**FEWER, "algorithm.name": "sync_st"},
    ),
}
CASES = {**SHIPPED, **VARIANTS}
HEAVY = {"fedast_multitask"}
"""The heaviest case (a dataset per task, four tasks; 2 s idle, 10–20 s on a busy 2-core machine) is
in the slow tier; the whole file takes about 12 s on an idle 2-core machine."""


def _case(name: str):
    marks = [pytest.mark.slow] if name in HEAVY else []
    return pytest.param(name, id=name, marks=marks)


def test_every_algorithm_and_shipped_scenario_has_a_case():
    from fedsim.algorithms import ALGORITHMS

    covered = {
        load_scenario(path, overrides or None).algorithm.name for path, overrides in CASES.values()
    }
    assert covered == set(ALGORITHMS)
    assert set(SHIPPED) == {p.stem for p in SCENARIOS.glob("*.yaml")} and len(SHIPPED) >= 14


@pytest.mark.parametrize("name", [_case(n) for n in CASES])
def test_shipped_scenario_same_seed_same_bytes(tmp_path: Path, name: str):
    path, overrides = CASES[name]
    merged = {**SHORT, **overrides}
    a = fedsim.run(path, merged, out=tmp_path / "a")
    fedsim.run(path, merged, out=tmp_path / "b")
    assert a.summary["updates"] > 0 and len(a.events) > 0 and len(a.evals) >= 1
    assert a.summary["seed"] == load_scenario(path).seed  # the shipped seed, not a drawn one
    for file in ("events.parquet", "scenario.yaml"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    evals_a = pd.read_parquet(tmp_path / "a" / "evals.parquet").drop(columns=["real_time_s"])
    evals_b = pd.read_parquet(tmp_path / "b" / "evals.parquet").drop(columns=["real_time_s"])
    pd.testing.assert_frame_equal(evals_a, evals_b, check_exact=True)
    summary_a = json.loads((tmp_path / "a" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert without_wall_clock(summary_a) == without_wall_clock(summary_b)
