"""Limiting cases with real training (ALGORITHMS.md §3.1-3.3 "Tests", §4 L1-L3).

Each case runs a small digits scenario and compares it with what the case must equal: another
algorithm run through the simulator (FedBuff ≡ FedAvg, FedBuff ≡ FedAsync), or an independent
re-implementation written here with plain ``torch.nn`` and ``torch.optim.SGD`` (sequential SGD,
full-batch gradient descent). Evaluations happen at multiples of sqrt(2) s while rounds end at whole
seconds, so an evaluation never ties with an aggregation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fedsim.learning.batched import BatchedTrainer, make_trainer
from fedsim.learning.trainer import batch_schedule
from fedsim.rng import SeedStreams
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: extra intra-op threads only contend (30x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EVAL_EVERY_S = math.sqrt(2.0)  # never a whole number of (1 s) rounds
SEED = 7
HIDDEN = 32


def scenario(algorithm: dict, *, time_s: float, **sections) -> dict:
    base = {
        "name": "limit",
        "seed": SEED,
        "stop": {"time_s": time_s},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [HIDDEN]},
        "training": {"local_steps": 5, "batch_size": 16, "lr": 0.1, "backend": "sequential"},
        "clients": {"count": 12, "compute": {"dist": "constant", "mean_s": 1.0}},
        "algorithm": algorithm,
        "eval": {"every_s": EVAL_EVERY_S},
    }
    base.update(sections)
    return base


class Run:
    """A simulation with its initial model and every model it published, in order."""

    def __init__(self, data: dict, *, trainer: str | None = None) -> None:
        self.sim = Simulation(load_scenario(data))
        if trainer is not None:  # install a trainer backend by hand (make_trainer's names)
            installed = make_trainer(self.sim.trainer.task, trainer)
            self.sim.trainer = self.sim.pool.trainer = installed
        server = self.sim.servers[0]
        self.initial = server.params.clone()
        self.published: list[torch.Tensor] = []
        publish = server.publish

        def logged(params):
            self.published.append(params.clone())
            publish(params)

        server.publish = logged  # instance attribute: observes, changes nothing
        self.result = self.sim.run()
        self.events = self.result.events
        self.evals = self.result.evals.drop(columns=["real_time_s"])
        assert len(self.published) == self.sim.servers[0].version


def accepted(events, status: str):
    rows = events[events["status"] == status].drop(columns=["status"])
    return rows.reset_index(drop=True)


def reference_mlp(flat: torch.Tensor) -> nn.Module:
    """The digits MLP written out with torch.nn, holding ``flat`` (torch's own parameter order)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    vector_to_parameters(flat.detach().clone(), model.parameters())
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    return (logits.argmax(1) == y).float().mean().item(), loss


# ---------------------------------------------------------------------------------------------------
# L1: FedBuff with K = C = m, equal times, after-aggregation dispatch, s = 1, eta_g = 1 ≡ FedAvg


@pytest.mark.parametrize("backend", ["sequential", "auto", "batched"])
def test_fedbuff_equals_fedavg_with_equal_speeds_and_after_aggregation(backend):
    """Bit for bit, with any trainer backend (both algorithms train the same jobs together).

    ``batched`` installs the vmap trainer by hand, so that path is covered whatever
    ``training.backend`` selects inside the simulation."""
    m, horizon = 4, 10.5  # ten rounds of 1 s
    trainer = "batched" if backend == "batched" else None
    training = {
        "local_steps": 5,
        "batch_size": 16,
        "lr": 0.1,
        "backend": "auto" if trainer else backend,
    }
    fedavg = Run(
        scenario(
            {"name": "fedavg", "cohort_size": m, "weighting": "uniform"},
            time_s=horizon,
            training=training,
        ),
        trainer=trainer,
    )
    fedbuff_algo = {
        "name": "fedbuff",
        "concurrency": m,
        "buffer_size": m,
        "dispatch_policy": "after_aggregation",
        "staleness": {"kind": "constant"},
        "server_lr": 1.0,
    }
    fedbuff = Run(scenario(fedbuff_algo, time_s=horizon, training=training), trainer=trainer)
    if trainer:
        assert isinstance(fedavg.sim.trainer, BatchedTrainer) and fedavg.sim.trainer.jobs_batched

    assert len(fedavg.published) == len(fedbuff.published) == 10
    for r, (a, b) in enumerate(zip(fedavg.published, fedbuff.published, strict=True)):
        assert torch.equal(a, b), f"model after round {r + 1} differs"
    # Same clients, same jobs, same times, in the same order (applied vs buffered rows).
    assert set(fedavg.events["status"]) == {"applied", "in_flight"}  # round 11 is out at the stop
    assert set(fedbuff.events["status"]) == {"buffered", "in_flight"}
    assert accepted(fedavg.events, "in_flight").equals(accepted(fedbuff.events, "in_flight"))
    applied, buffered = accepted(fedavg.events, "applied"), accepted(fedbuff.events, "buffered")
    assert len(applied) == 10 * m
    assert (buffered["staleness"] == 0).all()
    assert applied.equals(buffered)
    # The evaluations, bit for bit (all but the wall-clock column).
    assert len(fedavg.evals) >= 8
    assert fedavg.evals.equals(fedbuff.evals)
    assert fedavg.evals["accuracy"].iloc[-1] > fedavg.evals["accuracy"].iloc[0] + 0.2  # it learns

    # Negative control: with immediate dispatch the next cohort starts from the pre-aggregation
    # model (ALGORITHMS.md §3.3), so from the second round on the models differ.
    immediate = Run(
        scenario(
            {**fedbuff_algo, "dispatch_policy": "immediate"}, time_s=horizon, training=training
        ),
        trainer=trainer,
    )
    assert torch.equal(immediate.published[0], fedavg.published[0])
    assert not torch.allclose(immediate.published[1], fedavg.published[1], atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# L3: FedAsync alpha = 1, C = 1 ≡ sequential SGD (and FedAvg with m = 1, eta_g = 1)


def sequential_sgd(run: Run, order: list[tuple[int, int]]) -> nn.Module:
    """Local SGD client after client, re-implemented with torch.optim.SGD on the same mini-batches.

    ``order`` lists ``(job id, client)``; each job's mini-batch rows come from its own seed
    ``SeedStreams(seed).sequence("training.job", job)`` exactly as the scenario defines them.
    """
    cfg = run.sim.scenario.training
    data = run.sim.data
    streams = SeedStreams(run.sim.scenario.seed)
    model = reference_mlp(run.initial)
    for job, client in order:
        rows = data.client_indices[client]
        rng = np.random.Generator(np.random.PCG64(streams.sequence("training.job", job)))
        schedule = rows[batch_schedule(len(rows), cfg.local_steps, cfg.batch_size, rng)]
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        for batch in torch.as_tensor(schedule):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "fedasync", "concurrency": 1, "alpha": 1.0, "staleness": {"kind": "constant"}},
        {"name": "fedavg", "cohort_size": 1, "server_lr": 1.0},
    ],
    ids=["fedasync-alpha1-C1", "fedavg-m1"],
)
def test_single_client_at_a_time_is_sequential_sgd(algorithm):
    run = Run(
        scenario(
            algorithm,
            time_s=30.0,
            clients={"count": 10, "compute": {"dist": "exponential", "mean_s": 1.0}},
        )
    )
    assert set(run.events["status"]) == {"applied", "in_flight"}
    events = run.events[run.events["status"] == "applied"]
    assert (events["staleness"] == 0).all()
    assert events["sim_time"].is_monotonic_increasing
    assert events["client"].nunique() > 5  # several clients, so the order matters
    order = list(zip(events["job"].tolist(), events["client"].tolist(), strict=True))
    assert len(order) == len(run.published) >= 15

    model = sequential_sgd(run, order)
    final = run.sim.servers[0].params
    torch.testing.assert_close(parameters_to_vector(model.parameters()), final, atol=1e-5, rtol=0)
    accuracy, loss = evaluate(model, run.sim.data.x_test, run.sim.data.y_test)
    last = run.evals.iloc[-1]
    assert last["version"] == len(order)
    assert abs(last["loss"] - loss) <= 1e-5 and abs(last["accuracy"] - accuracy) <= 1e-5
    # The comparison is sensitive to the order of the clients.
    shuffled = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
    _, loss_shuffled = evaluate(
        sequential_sgd(run, shuffled), run.sim.data.x_test, run.sim.data.y_test
    )
    assert abs(loss_shuffled - loss) > 1e-3


# ---------------------------------------------------------------------------------------------------
# FedAvg, full participation, one full-batch step per client ≡ centralised full-batch GD


TRAIN_1400 = 397 / 1797  # digits: 1797 samples, 397 held out, 1400 = 10 x 140 for training


@pytest.mark.parametrize(
    ("partition", "count", "weighting", "test_fraction"),
    [
        ({"kind": "iid"}, 10, "uniform", TRAIN_1400),
        ({"kind": "dirichlet", "alpha": 0.5}, 8, "data_size", 0.2),
    ],
    ids=["iid-equal-sizes-uniform", "dirichlet-unequal-sizes-data_size"],
)
def test_fedavg_full_participation_is_full_batch_gd(partition, count, weighting, test_fraction):
    """One round = one GD step on the union with lr η_l: Σ_i q_i (−η_l ∇L_i) = −η_l ∇L when
    q_i = n_i/n (or q_i = 1/m with equal n_i), L_i the mean loss on client i's data."""
    lr, rounds = 1.0, 8
    run = Run(
        scenario(
            {"name": "fedavg", "cohort_size": count, "server_lr": 1.0, "weighting": weighting},
            time_s=rounds + 0.5,
            data={"dataset": "digits", "test_fraction": test_fraction, "partition": partition},
            training={"local_steps": 1, "batch_size": 4096, "lr": lr, "backend": "sequential"},
            clients={"count": count, "compute": {"dist": "constant", "mean_s": 1.0}},
        )
    )
    data = run.sim.data
    sizes = data.client_sizes
    if weighting == "uniform":
        assert (sizes == sizes[0]).all(), sizes  # the case needs equal sizes
    else:
        assert sizes.max() > 1.5 * sizes.min(), sizes  # ... and this one really unequal sizes
    union = np.sort(np.concatenate(data.client_indices))
    np.testing.assert_array_equal(union, np.arange(len(data.y_train)))
    assert len(run.published) == rounds
    applied = run.events[run.events["status"] == "applied"]
    assert (applied.groupby("base_version").size() == count).all()

    model = reference_mlp(run.initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data.x_train, data.y_train
    test_metrics = [evaluate(model, data.x_test, data.y_test)]
    for r in range(rounds):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        gd = parameters_to_vector(model.parameters()).detach()
        torch.testing.assert_close(run.published[r], gd, atol=1e-5, rtol=0)
        test_metrics.append(evaluate(model, data.x_test, data.y_test))
    one_sample = 1.0 / len(data.y_test)
    for row in run.evals.itertuples():
        accuracy, loss = test_metrics[row.version]
        assert row.loss == pytest.approx(loss, rel=1e-5, abs=1e-6), row
        assert abs(row.accuracy - accuracy) <= one_sample + 1e-12, row  # one argmax tie at most
    assert run.evals["version"].iloc[-1] == rounds
    assert test_metrics[-1][1] < test_metrics[0][1] - 0.2  # GD made real progress


def test_fedavg_deadline_before_every_report_never_changes_the_model():
    """ALGORITHMS.md §3.1: a deadline shorter than every job time with min_fraction > 0 leaves w_G."""
    run = Run(
        scenario(
            {"name": "fedavg", "cohort_size": 3, "deadline_s": 0.5, "min_fraction": 0.5},
            time_s=10.0,
            clients={"count": 12, "compute": {"dist": "constant", "mean_s": 1.0}},
        )
    )
    assert run.published == []
    assert set(run.events["status"]) == {"late", "in_flight"}
    assert torch.equal(run.sim.servers[0].params, run.initial)
    assert run.evals["accuracy"].nunique() == 1 and (run.evals["version"] == 0).all()


# ---------------------------------------------------------------------------------------------------
# L2: FedBuff K = 1, C = 1, s = 1, eta_g = alpha ≡ FedAsync(alpha, constant)


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_fedbuff_k1_equals_fedasync(alpha):
    clients = {"count": 10, "compute": {"dist": "exponential", "mean_s": 1.0}}
    fedasync = Run(
        scenario(
            {
                "name": "fedasync",
                "concurrency": 1,
                "alpha": alpha,
                "staleness": {"kind": "constant"},
            },
            time_s=25.0,
            clients=clients,
        )
    )
    fedbuff_algo = {
        "name": "fedbuff",
        "concurrency": 1,
        "buffer_size": 1,
        "server_lr": alpha,
        "staleness": {"kind": "constant"},
        "dispatch_policy": "after_aggregation",
    }
    fedbuff = Run(scenario(fedbuff_algo, time_s=25.0, clients=clients))
    # Same jobs at the same times: applied (FedAsync) vs buffered-and-stepped (FedBuff).
    assert accepted(fedasync.events, "applied").equals(accepted(fedbuff.events, "buffered"))
    assert len(fedasync.published) == len(fedbuff.published) >= 15
    # w + α(w_local − w) computed as a lerp vs as w + η_g·Δ: equal up to float re-association.
    for a, b in zip(fedasync.published, fedbuff.published, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    cols = ["sim_time", "server", "version", "updates"]
    assert fedasync.evals[cols].equals(fedbuff.evals[cols])
    np.testing.assert_allclose(fedasync.evals["loss"], fedbuff.evals["loss"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fedasync.evals["accuracy"], fedbuff.evals["accuracy"], atol=1e-12)

    # With immediate dispatch the next client gets the pre-aggregation model: staleness 1 each time,
    # so the L2 equivalence needs after_aggregation (ALGORITHMS.md §4 leaves the policy unstated).
    immediate = Run(
        scenario({**fedbuff_algo, "dispatch_policy": "immediate"}, time_s=25.0, clients=clients)
    )
    assert (accepted(immediate.events, "buffered")["staleness"].iloc[1:] == 1).all()
