"""Shared fixtures: the repository root, and small scenarios that run in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def small_learning() -> dict:
    """A digits scenario small enough to run in about a second."""
    return {
        "name": "small",
        "seed": 3,
        "stop": {"time_s": 60},
        "data": {"dataset": "digits", "partition": {"kind": "iid"}},
        "model": {"kind": "mlp", "hidden": [32]},
        "training": {"local_steps": 5, "batch_size": 16, "lr": 0.05},
        "clients": {"count": 20, "compute": {"dist": "exponential", "mean_s": 2.0}},
        "algorithm": {"name": "fedasync", "concurrency": 5},
        "eval": {"every_s": 10.0},
    }


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def restore_algorithm_registry():
    """A test that reads a scenario naming a plugin algorithm registers it (and widens the
    scenario's union), or registers an aggregator or attack; later tests see the registries as
    they were (schema and reference tests)."""
    from fedsim import plugins

    before = set(plugins.catalogue_sources())
    aggregators = set(plugins.aggregator_sources())
    attacks = set(plugins.attack_sources())
    yield
    for name in set(plugins.catalogue_sources()) - before:
        plugins.unregister_algorithm(name)
    for name in set(plugins.aggregator_sources()) - aggregators:
        plugins.unregister_aggregator(name)
    for name in set(plugins.attack_sources()) - attacks:
        plugins.unregister_attack(name)
