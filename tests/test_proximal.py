"""``training.proximal_mu``: FedProx's local objective ``f(w) + μ/2 ‖w − w_start‖²`` (Li et al. 2020).

The local optimiser adds ``μ (w − w_start)`` to the loss gradient: checked against autograd of the
proximal objective itself, on one vector and on a stack of jobs whose first ``k`` rows train; a large
``μ`` keeps the local model near its start; the stacked, vmap and loop paths agree with μ > 0; a
model with buffers (the loop) leaves the buffer tail out of the term; ``μ = 0`` changes nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.learning.batched import BatchedTrainer
from fedsim.learning.optim import LocalOptimizer
from fedsim.learning.trainer import LocalTask, SequentialTrainer, TrainingConfig
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

from .test_batched_trainer import build_setup, make_jobs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    return build_setup()


def _loss(w: torch.Tensor) -> torch.Tensor:
    """A small non-quadratic objective of a flat vector (a tiny 'model')."""
    return (torch.sin(w) * torch.arange(1.0, w.shape[-1] + 1, dtype=w.dtype)).sum() + (w**4).sum()


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_step_uses_the_gradient_of_the_proximal_objective(name):
    """One step with μ equals the same optimiser stepped on autograd's gradient of
    ``f(w) + μ/2 ‖w − w_start‖²`` with μ = 0."""
    mu = 0.7
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, generator=gen, dtype=torch.float64)
    w = start + 0.3 * torch.randn(5, generator=gen, dtype=torch.float64)
    wr = w.clone().requires_grad_()
    (g,) = torch.autograd.grad(_loss(wr), wr)
    (g_prox,) = torch.autograd.grad(_loss(wr) + mu / 2 * ((wr - start) ** 2).sum(), wr)

    ours = w.clone()
    opt = LocalOptimizer(name, lr=0.1, momentum=0.0, weight_decay=1e-2, proximal_mu=mu)
    state: dict = {}
    opt.begin(state, start)
    opt.step(ours, g, state, 0)

    want = w.clone()
    LocalOptimizer(name, lr=0.1, weight_decay=1e-2).step(want, g_prox, {}, 0)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(ours, w - 0.1 * (g + 1e-2 * w))  # the term did something


def test_stacked_rows_use_their_own_start():
    """A stack ``[n, d]`` whose first ``k`` rows still train: row by row what the one-vector path
    gives each job (its own start, its own momentum buffer)."""
    mu, k = 2.0, 2
    gen = torch.Generator().manual_seed(1)
    starts = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    grads = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    opt = LocalOptimizer("sgd", lr=0.1, momentum=0.5, proximal_mu=mu)
    w = starts.clone()
    state: dict = {}
    opt.begin(state, starts.clone())
    opt.step(w, grads[0], state, 0)  # every row
    opt.step(w[:k], grads[1, :k], state, 1, k)  # only the first k
    for i in range(3):
        one = starts[i].clone()
        st: dict = {}
        opt.begin(st, starts[i])
        for t in range(2 if i < k else 1):
            opt.step(one, grads[t, i], st, t)
        torch.testing.assert_close(w[i], one, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(w[0], starts[0] + 0.0)


def _train(task: LocalTask, jobs, trainer: str) -> list[torch.Tensor]:
    if trainer == "sequential":
        seq = SequentialTrainer(task)
        return [seq.submit(job).result() for job in jobs]
    batched = BatchedTrainer(task)
    handles = [batched.submit(job) for job in jobs]
    return [h.result() for h in handles]


def _task(setup, **training) -> LocalTask:
    _, data, module, spec, _ = setup
    return LocalTask(module, spec, data, TrainingConfig(**training))


def test_large_mu_keeps_the_local_model_near_its_start(setup):
    """‖w_end − w_start‖ shrinks as μ grows (at the fixed point w − w_start = −∇f/μ)."""
    base = {"local_steps": 20, "batch_size": 16, "lr": 0.05}
    jobs = make_jobs(setup, n=4)
    norms = []
    for mu in (0.0, 1.0, 10.0):
        ends = _train(_task(setup, **base, proximal_mu=mu), jobs, "sequential")
        norms.append(
            np.mean([float((e - j.start).norm()) for e, j in zip(ends, jobs, strict=True)])
        )
    assert norms[0] > norms[1] > norms[2]
    assert norms[2] < 0.25 * norms[0]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_equals_sequential_with_mu(setup, optimizer):
    """The stacked path (built-in MLP) with μ > 0: every job as the loop gives it, to 1e-5."""
    training = {"local_epochs": 1.0, "batch_size": 16, "lr": 0.05, "proximal_mu": 2.0}
    if optimizer == "adam":
        training.update(optimizer="adam", lr=0.01)
    else:
        training.update(momentum=0.9, weight_decay=1e-3)
    task = _task(setup, **training)
    jobs = make_jobs(setup, n=12)
    want = _train(task, jobs, "sequential")
    got = _train(task, jobs, "batched")
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    without = _train(_task(setup, **{**training, "proximal_mu": 0.0}), jobs, "sequential")
    assert max(float((a - b).abs().max()) for a, b in zip(without, want, strict=True)) > 1e-4


NETS = """
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.a = nn.Linear(n_in, 12)
        self.b = nn.Linear(12, n_out)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.reshape(x.shape[0], -1))))


class Normed(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.a = nn.Linear(n_in, 12)
        self.bn = nn.BatchNorm1d(12)
        self.b = nn.Linear(12, n_out)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x.reshape(x.shape[0], -1)))))


def mlp(input_shape, n_outputs):
    return MLP(int(torch.tensor(input_shape).prod()), n_outputs)


def normed(input_shape, n_outputs):
    return Normed(int(torch.tensor(input_shape).prod()), n_outputs)
"""


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    file = tmp_path_factory.mktemp("prox_nets") / "nets.py"
    file.write_text(NETS)
    return file


def _scenario(model: dict | None = None, **training) -> dict:
    return {
        "name": "prox",
        "seed": 3,
        "stop": {"time_s": 12},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": model or {"kind": "mlp", "hidden": [16]},
        "training": {"local_steps": 4, "batch_size": 16, "lr": 0.05, **training},
        "clients": {"count": 8, "compute": {"dist": "exponential", "mean_s": 1.0}},
        "algorithm": {"name": "fedavg", "cohort_size": 4},
        "eval": {"every_s": 4.0},
    }


def _run(data: dict) -> Simulation:
    sim = Simulation(load_scenario(data))
    sim.result = sim.run()
    return sim


def test_vmap_path_equals_the_loop_with_mu(nets):
    model = {"kind": "import", "target": f"{nets}:mlp"}
    vmapped = _run(_scenario(model, backend="batched", proximal_mu=1.0))
    assert vmapped.trainer.training_path.path == "vmap" and vmapped.trainer.jobs_batched > 0
    looped = _run(_scenario(model, backend="sequential", proximal_mu=1.0))
    a, b = vmapped.servers[0].params, looped.servers[0].params
    assert vmapped.servers[0].version == looped.servers[0].version >= 3
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_model_with_buffers_keeps_the_tail_out_of_the_term(nets):
    """BatchNorm's running statistics ride in the vector's tail: the proximal term has the shape
    of the parameters (the head) and the buffers still follow the forward passes."""
    model = {"kind": "import", "target": f"{nets}:normed"}
    sim = _run(_scenario(model, proximal_mu=5.0))
    spec = sim.spec
    assert spec.buffers and sim.trainer.training_path.path == "loop"
    params = sim.servers[0].params
    plain = _run(_scenario(model))
    # Both runs moved their running statistics away from the initial (0 mean) ones.
    for run in (sim, plain):
        buffers = spec.buffer_views(run.servers[0].params[spec.n_params :])
        assert run.servers[0].version >= 2
        assert float(buffers["bn.running_mean"].abs().max()) > 0
    assert not torch.allclose(params[: spec.n_params], plain.servers[0].params[: spec.n_params])


def test_mu_zero_changes_nothing():
    """FedProx with μ = 0 is FedAvg: the same events and the same models, bit for bit."""
    a = _run(_scenario())
    b = _run(_scenario(proximal_mu=0.0))
    pd.testing.assert_frame_equal(a.result.events, b.result.events, check_exact=True)
    assert torch.equal(a.servers[0].params, b.servers[0].params)
