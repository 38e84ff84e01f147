"""The server optimiser (issue 13: ``server_optimizer``, Reddi et al. 2021 "Adaptive Federated
Optimization", Algorithm 2; FedAvgM).

Each rule is checked against a hand computation on small vectors written here in numpy (five rounds
for the adaptive ones), and against ``torch.optim`` where the two coincide: fedsim's update ``Δ`` is
the *negative* of a gradient, so ``torch.optim`` is given ``g = −Δ``. The simulator's limiting
cases: FedAvgM with momentum 0 is FedAvg byte for byte, a tiny FedAdam learning rate barely moves
the model, and FedAvgM learns digits.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import fedsim
from fedsim.algorithms.server_opt import ServerOptimizer, ServerOptimizerConfig
from fedsim.errors import ScenarioError
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DELTAS = np.array(
    [
        [0.5, -1.0, 0.0, 2.0],
        [0.25, -0.5, 1e-4, -1.0],
        [-0.75, 0.3, 0.2, 0.5],
        [0.1, 0.1, -0.3, 0.0],
        [1.5, -2.0, 0.05, 0.25],
    ]
)
W0 = np.array([1.0, -2.0, 0.5, 0.0])


def run_rule(config: ServerOptimizerConfig, deltas=DELTAS, server_lr: float = 1.0) -> np.ndarray:
    """The models ``w_1 … w_T`` fedsim's rule gives (float64)."""
    opt = ServerOptimizer.of(config, server_lr)
    state = opt.init()
    w = torch.tensor(W0)
    out = []
    for d in deltas:
        u, state = opt.update(torch.tensor(d), state)
        w = w + u
        out.append(w.numpy().copy())
    return np.array(out)


def reference(name: str, lr: float, *, momentum=0.9, betas=(0.9, 0.99), eps=1e-3) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2 (and FedAvgM), line by line in numpy."""
    w = W0.copy()
    m = np.zeros_like(w)
    v = np.full_like(w, eps**2)  # v_{-1} = τ²
    buf = None
    out = []
    b1, b2 = betas
    for d in DELTAS:
        if name == "sgd":
            w = w + lr * d
        elif name in ("momentum", "nesterov"):
            buf = d.copy() if buf is None else momentum * buf + d
            w = w + lr * (d + momentum * buf if name == "nesterov" else buf)
        else:
            m = b1 * m + (1 - b1) * d
            if name == "adagrad":
                v = v + d**2
            elif name == "adam":
                v = b2 * v + (1 - b2) * d**2
            else:  # yogi
                v = v - (1 - b2) * d**2 * np.sign(v - d**2)
            w = w + lr * m / (np.sqrt(v) + eps)
        out.append(w.copy())
    return np.array(out)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "yogi", "adagrad"])
def test_each_rule_equals_the_papers_equations_over_five_rounds(name):
    lr = 0.5 if name in ("sgd", "momentum", "nesterov") else 0.03
    cfg = ServerOptimizerConfig(name=name, lr=lr)
    np.testing.assert_allclose(run_rule(cfg), reference(name, lr), rtol=1e-12, atol=1e-15)


def test_first_adam_step_by_hand():
    """One coordinate, one round: m = 0.1·2 = 0.2, v = 0.99·τ² + 0.01·4 = 0.04000099,
    u = 0.1 · 0.2 / (√0.04000099 + 0.001)."""
    opt = ServerOptimizer.of(ServerOptimizerConfig(name="adam", lr=0.1))
    u, state = opt.update(torch.tensor([2.0], dtype=torch.float64), opt.init())
    assert state.step == 1
    assert float(state.m[0]) == pytest.approx(0.2)
    assert float(state.v[0]) == pytest.approx(0.99e-6 + 0.04)
    assert float(u[0]) == pytest.approx(0.1 * 0.2 / (math.sqrt(0.04000099) + 1e-3))


def test_yogi_grows_v_only_by_the_excess_sign():
    """Yogi: v moves towards Δ² by (1 − β2)Δ² in the direction of sign(Δ² − v) (additively)."""
    opt = ServerOptimizer.of(ServerOptimizerConfig(name="yogi", lr=0.1))
    _, s1 = opt.update(torch.tensor([2.0], dtype=torch.float64), opt.init())
    assert float(s1.v[0]) == pytest.approx(1e-6 + 0.01 * 4)  # v < Δ²: grows
    _, s2 = opt.update(torch.tensor([0.0], dtype=torch.float64), s1)
    assert float(s2.v[0]) == float(s1.v[0])  # Δ = 0: unchanged (Adam would decay it)


def _torch_steps(optim_cls, **kwargs) -> np.ndarray:
    p = torch.nn.Parameter(torch.tensor(W0))
    opt = optim_cls([p], **kwargs)
    out = []
    for d in DELTAS:
        opt.zero_grad()
        p.grad = -torch.tensor(d)  # fedsim's Δ points downhill: the gradient is −Δ
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_equals_torch_sgd(nesterov):
    name = "nesterov" if nesterov else "momentum"
    ours = run_rule(ServerOptimizerConfig(name=name, lr=0.5, momentum=0.7))
    theirs = _torch_steps(torch.optim.SGD, lr=0.5, momentum=0.7, nesterov=nesterov)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_adam_with_zero_betas_equals_torch_adam():
    """Reddi's FedAdam has no bias correction; with betas (0, 0) torch's corrections are 1."""
    ours = run_rule(ServerOptimizerConfig(name="adam", lr=0.05, betas=(0.0, 0.0), eps=1e-3))
    theirs = _torch_steps(torch.optim.Adam, lr=0.05, betas=(0.0, 0.0), eps=1e-3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_adagrad_with_zero_beta1_equals_torch_adagrad():
    """FedAdagrad with β1 = 0 is Adagrad; fedsim's accumulator starts at τ²."""
    ours = run_rule(ServerOptimizerConfig(name="adagrad", lr=0.05, betas=(0.0, 0.99), eps=1e-3))
    theirs = _torch_steps(torch.optim.Adagrad, lr=0.05, eps=1e-3, initial_accumulator_value=1e-6)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_update_leaves_the_given_state_alone():
    opt = ServerOptimizer.of(ServerOptimizerConfig(name="adam", lr=0.1))
    s0 = opt.init()
    _, s1 = opt.update(torch.ones(3), s0)
    _, s2 = opt.update(torch.ones(3), s1)
    assert s0.m is None and s1.step == 1 and s2.step == 2
    assert not torch.equal(s1.m, s2.m)


def test_sgd_lr_null_is_the_algorithms_server_lr():
    opt = ServerOptimizer.of(ServerOptimizerConfig(), server_lr=0.25)
    u, _ = opt.update(torch.tensor([4.0]), opt.init())
    assert float(u[0]) == 1.0 and not opt.identity
    assert ServerOptimizer.of(ServerOptimizerConfig(), 1.0).identity


# -- in the simulator ------------------------------------------------------------------------------


def digits(algorithm: dict, *, time_s: float = 12.0, **sections) -> dict:
    base = {
        "name": "server-opt",
        "seed": 5,
        "stop": {"time_s": time_s},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": {"local_steps": 3, "batch_size": 16, "lr": 0.05},
        "clients": {
            "count": 12,
            "compute": {"dist": "lognormal", "mean_s": 1.0, "sigma": 0.5},
            "dropout": {"prob": 0.05},
        },
        "algorithm": algorithm,
        "eval": {"every_s": 3.0},
    }
    base.update(sections)
    return base


ALGORITHMS = {
    "fedavg": {"name": "fedavg", "cohort_size": 4, "server_lr": 0.8},
    "fedbuff": {"name": "fedbuff", "concurrency": 6, "buffer_size": 3},
    "fedbuff_c": {"name": "fedbuff_c", "buffer_size": 4},
    "fedfix": {"name": "fedfix", "period_s": 1.0},
    "async_fedavg": {"name": "async_fedavg", "correction": "identical", "server_lr": 0.3},
}


def published(data: dict) -> tuple[object, list[torch.Tensor]]:
    sim = Simulation(load_scenario(data))
    server = sim.servers[0]
    models = [server.params.clone()]
    publish = server.publish

    def logged(params):
        models.append(params.clone())
        publish(params)

    server.publish = logged
    return sim.run(), models


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_momentum_zero_is_the_plain_step_byte_for_byte(tmp_path, name):
    """FedAvgM with β = 0 ≡ FedAvg (and the same for every buffered scheme): the same events file,
    the same evaluations, bit-identical models."""
    plain = digits(ALGORITHMS[name])
    fedavgm = {**plain, "server_optimizer": {"name": "momentum", "momentum": 0.0}}
    a, models_a = published(plain)
    b, models_b = published(fedavgm)
    assert len(models_a) > 3 and len(models_a) == len(models_b)
    for x, y in zip(models_a, models_b, strict=True):
        assert torch.equal(x, y)
    pd.testing.assert_frame_equal(a.events, b.events, check_exact=True)
    pd.testing.assert_frame_equal(
        a.evals.drop(columns=["real_time_s"]),
        b.evals.drop(columns=["real_time_s"]),
        check_exact=True,
    )
    fedsim.run(plain, out=tmp_path / "a")
    fedsim.run(fedavgm, out=tmp_path / "b")
    assert (tmp_path / "a" / "events.parquet").read_bytes() == (
        tmp_path / "b" / "events.parquet"
    ).read_bytes()


def test_momentum_changes_the_models_and_follows_the_rule():
    """β = 0.9: each published model is the previous plus η·b_t, b_t = β b_{t−1} + Δ_t."""
    data = digits(ALGORITHMS["fedavg"], server_optimizer={"name": "momentum", "momentum": 0.9})
    _, with_momentum = published(data)
    _, plain = published(digits(ALGORITHMS["fedavg"]))
    assert not torch.equal(with_momentum[-1], plain[-1])
    # The first step has b_0 = Δ_0: the same first model as plain FedAvg.
    assert torch.equal(with_momentum[1], plain[1])


def test_fedadam_with_a_tiny_lr_barely_moves():
    """η = 1e-7: each step moves a coordinate by η|m_t|/(√v_t + τ) ≤ η (1−β1)/√((1−β1²/β2)(1−β2))
    ≈ 2.35 η (Cauchy–Schwarz on m_t = (1−β1) Σ β1^k Δ_{t−k} against v_t ≥ (1−β2) Σ β2^k Δ²_{t−k})."""
    fedavg = {"name": "fedavg", "cohort_size": 4}
    data = digits(fedavg, server_optimizer={"name": "adam", "lr": 1e-7})
    _, models = published(data)
    assert len(models) > 3
    steps = len(models) - 1
    drift = float((models[-1] - models[0]).abs().max())
    assert 0 < drift <= 2.35e-7 * steps
    _, plain = published(digits(fedavg))
    assert float((plain[-1] - plain[0]).abs().max()) > 1e3 * drift


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "fedasync", "concurrency": 4},
        {"name": "fedbuff", "concurrency": 6, "buffer_size": 3},
    ],
)
def test_sgd_lr_one_given_explicitly_is_the_default(algorithm):
    """FedAsync's mixing through the server optimiser: sgd at lr 1 is its lerp, exactly."""
    _, models_a = published(digits(algorithm))
    _, models_b = published(digits(algorithm, server_optimizer={"name": "sgd", "lr": 1.0}))
    assert all(torch.equal(x, y) for x, y in zip(models_a, models_b, strict=True))


def test_fedasync_mixing_through_momentum_zero_is_the_lerp_up_to_rounding():
    alg = {"name": "fedasync", "concurrency": 4, "alpha": 0.5}
    _, lerp = published(digits(alg))
    _, opt = published(digits(alg, server_optimizer={"name": "momentum", "momentum": 0.0}))
    assert len(lerp) == len(opt) > 5
    torch.testing.assert_close(opt[-1], lerp[-1], rtol=1e-4, atol=1e-5)


def test_fedavgm_learns_digits():
    data = digits(
        {"name": "fedavg", "cohort_size": 6},
        time_s=40.0,
        training={"local_steps": 10, "batch_size": 16, "lr": 0.05},
        server_optimizer={"name": "momentum", "momentum": 0.9, "lr": 0.5},
    )
    result = fedsim.run(data, save=False)
    assert result.evals["accuracy"].iloc[-1] > 0.8


def test_multitask_tasks_keep_their_own_state():
    """FedAST/Sync-ST: each task its own optimiser and state (two tasks, both moved)."""
    task = {"target_accuracy": 0.99}
    data = digits(
        {"name": "sync_st", "tasks": [task, task], "clients_per_round": 4},
        time_s=6.0,
        server_optimizer={"name": "adam", "lr": 0.01},
    )
    sim = Simulation(load_scenario(data))
    sim.run()
    states = [t.opt_state for t in sim.algorithm.tasks]
    assert all(s.step > 0 for s in states)
    assert states[0].m is not states[1].m and not torch.equal(states[0].m, states[1].m)


# -- bad keys: one line naming the key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "where", "words"),
    [
        ({"server_optimizer": {"name": "adam"}}, "server_optimizer", "adam needs lr"),
        (
            {"server_optimizer": {"name": "adam", "lr": 0.1, "momentum": 0.5}},
            "server_optimizer",
            "momentum is a key of momentum and nesterov",
        ),
        ({"server_optimizer": {"name": "sgd", "eps": 0.1}}, "server_optimizer", "eps is a key"),
        (
            {"server_optimizer": {"name": "yogi", "lr": 0.1, "betas": [0.9, 1.0]}},
            "server_optimizer.betas",
            "[0, 1)",
        ),
        ({"server_optimizer": {"name": "rmsprop"}}, "server_optimizer.name", "adagrad"),
        ({"server_optimizer": {"lr": -1}}, "server_optimizer.lr", "must be > 0"),
        ({"server_optimizer": {"name": "sgd", "nope": 1}}, "server_optimizer.nope", ""),
        (
            {
                "server_optimizer": {"name": "momentum", "lr": 0.5},
                "algorithm": {"name": "fedavg", "server_lr": 0.5},
            },
            "server_optimizer.lr",
            "both set the server learning rate",
        ),
        (
            {"server_optimizer": {"name": "momentum"}, "algorithm": {"name": "dsgd"}},
            "server_optimizer",
            "dsgd has no server step",
        ),
    ],
)
def test_bad_keys_give_one_line(override, where, words):
    with pytest.raises(ScenarioError) as info:
        load_scenario(digits(ALGORITHMS["fedavg"]) | override)
    text = str(info.value)
    assert len(text.strip().splitlines()) == 1, text
    assert where in text and words in text, text


def test_defaults_are_accepted_by_every_algorithm():
    """The default section (as a run's scenario.yaml writes it) is fine everywhere."""
    section = ServerOptimizerConfig().model_dump(mode="json")
    for alg in ({"name": "fedavg"}, {"name": "fedasync"}):
        load_scenario(digits(alg, server_optimizer=section))
    peers = {"servers": 12, "graph": "ring", "clients_per_server": 1}
    data = digits({"name": "dsgd"}, server_optimizer=section, topology=peers)
    del data["clients"]["count"]
    load_scenario(data)
