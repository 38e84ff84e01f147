"""Your own model (issue 12 §1): any torch.nn.Module, from YAML (``kind: import``) or Python.

A BatchNorm ResNet trains on the per-client loop and matches a hand-written torch FedAvg (the
parameters and the running statistics averaged) to 1e-5; a functional MLP takes the vmap path and
matches the loop; dropout draws from each job's seed; traces are byte-identical on re-run; every
kind of bad model is one line naming ``model.target``, through ``fedsim validate`` and the API.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

import fedsim
from fedsim.checks import check_training_path
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.learning.models import build_model, init_params, using_model
from fedsim.learning.params import ParamSpec
from fedsim.rng import SeedStreams
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

NETS = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class SmallResNet(nn.Module):
    """A ResNet in miniature: stem, BatchNorm, one residual block, global pooling, linear."""

    def __init__(self, input_shape, n_outputs, width=4):
        super().__init__()
        self.shape = tuple(input_shape)
        self.stem = nn.Conv2d(self.shape[0], width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block = Block(width)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x.reshape(x.shape[0], *self.shape))))
        return self.head(self.block(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self, n_in, hidden, n_out):
        super().__init__()
        self.a = nn.Linear(n_in, hidden)
        self.b = nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.reshape(x.shape[0], -1))))


def mlp(input_shape, n_outputs, hidden=16):
    n_in = 1
    for d in input_shape:
        n_in *= d
    return MLP(n_in, hidden, n_outputs)


class Dropped(nn.Module):
    def __init__(self, n_outputs):
        super().__init__()
        self.a = nn.Linear(64, 16)
        self.drop = nn.Dropout(0.3)
        self.b = nn.Linear(16, n_outputs)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x.reshape(x.shape[0], -1)))))


class Noisy(nn.Module):
    """Randomness vmap cannot take, outside any Dropout layer."""

    def __init__(self, n_outputs):
        super().__init__()
        self.a = nn.Linear(64, n_outputs)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.a(x + 0.1 * torch.randn_like(x))


def raises(n_outputs):
    raise ValueError("boom in the factory")


def not_a_module():
    return 3


WIDTH = 7


def wrong_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def wrong_inputs():
    return nn.Linear(10, 10)
'''


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    file = tmp_path_factory.mktemp("byo_model") / "nets.py"
    file.write_text(NETS)
    return file


def _scenario(model: dict, **training) -> dict:
    return {
        "name": "byo-model",
        "seed": 11,
        "stop": {"time_s": 60},
        "data": {"dataset": "digits", "partition": {"kind": "iid"}},
        "model": model,
        "training": {"local_steps": 3, "batch_size": 16, "lr": 0.05, **training},
        "clients": {"count": 4, "compute": {"dist": "exponential", "mean_s": 2.0}},
        "algorithm": {"name": "fedavg", "cohort_size": 4},
        "eval": {"every_s": 20.0},
    }


def _simulate(scenario: dict) -> Simulation:
    sim = Simulation(load_scenario(scenario))
    sim.result = sim.run()
    return sim


# ---------------------------------------------------------------------------------------------------
# The BatchNorm ResNet: the loop path, against a hand-written FedAvg


def _schedule(n: int, steps: int, batch: int, seed: np.random.SeedSequence) -> np.ndarray:
    """Each step's local sample positions: slices of a stream of fresh permutations."""
    rng = np.random.Generator(np.random.PCG64(seed))
    b = min(batch, n)
    passes = math.ceil(steps * b / n)
    stream = np.concatenate([rng.permutation(n) for _ in range(passes)])
    return stream[: steps * b].reshape(steps, b)


def test_batchnorm_resnet_runs_fedavg_on_the_loop_and_matches_a_hand_written_loop(nets):
    scenario = _scenario(
        {"kind": "import", "target": f"{nets}:SmallResNet", "kwargs": {"width": 4}}
    )
    sim = _simulate(scenario)
    path = sim.trainer.training_path
    assert path.path == "loop" and "buffers" in path.reason and "bn.running_mean" in path.reason
    rounds = sim.servers[0].version
    assert rounds >= 3

    # The hand-written FedAvg: the user's module, torch.optim.SGD, load_state_dict.
    from fedsim.imports import resolve_target

    net_class = resolve_target(f"{nets}:SmallResNet", key="model.target")
    generator = SeedStreams(11).torch_generator("model.init")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        model = net_class((1, 8, 8), 10, width=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = sim.data
    x, y = data.x_train, data.y_train
    streams = SeedStreams(11)
    applied = sim.result.events.query("status == 'applied'").sort_values("job")
    for version in range(rounds):
        states, sizes = [], []
        this_round = applied[applied.base_version == version]
        assert len(this_round) == 4  # every client, every round
        for job, client in zip(this_round.job, this_round.client, strict=True):
            model.load_state_dict(state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            rows = data.client_indices[client]
            for local in _schedule(len(rows), 3, 16, streams.sequence("training.job", int(job))):
                opt.zero_grad()
                F.cross_entropy(model(x[rows[local]]), y[rows[local]]).backward()
                opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            sizes.append(len(rows))
        total = sum(sizes)
        state = {
            k: sum(s[k].double() * (n / total) for s, n in zip(states, sizes, strict=True))
            .round()
            .to(state[k].dtype)
            if not state[k].dtype.is_floating_point
            else sum(s[k] * (n / total) for s, n in zip(states, sizes, strict=True))
            for k in state
        }
    spec = sim.spec
    assert spec.buffers == tuple(
        f"{layer}.{name}"
        for layer in ("bn", "block.bn")
        for name in ("running_mean", "running_var", "num_batches_tracked")
    )
    final = spec.state_dict(sim.servers[0].params)
    for name, expected in state.items():
        got = final[name]
        assert got.dtype == expected.dtype, name
        assert torch.allclose(got.double(), expected.double(), atol=1e-5, rtol=0), name
    # The running statistics did move (they travelled and were averaged), and count the steps.
    assert not torch.allclose(final["bn.running_var"], torch.ones(4))
    assert int(final["bn.num_batches_tracked"]) == 3 * rounds


# ---------------------------------------------------------------------------------------------------
# The functional MLP: the vmap path, against the loop


def test_functional_mlp_takes_vmap_and_matches_the_loop(nets):
    model = {"kind": "import", "target": f"{nets}:mlp", "kwargs": {"hidden": 12}}
    vmapped = _simulate(_scenario(model, backend="batched"))
    assert vmapped.trainer.training_path.path == "vmap"
    assert "vmap" in vmapped.trainer.training_path.reason
    assert vmapped.trainer.jobs_batched > 0  # really trained in stacks
    looped = _simulate(_scenario(model, backend="sequential"))
    assert looped.trainer.training_path.path == "loop"
    assert "sequential" in looped.trainer.training_path.reason
    a, b = vmapped.servers[0].params, looped.servers[0].params
    assert vmapped.servers[0].version == looped.servers[0].version >= 3
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, init_params(vmapped.spec, torch.Generator()), atol=1e-3)
    auto = check_training_path(load_scenario(_scenario(model)))
    assert auto.path == "vmap" and auto.backend == "auto"


def test_builtin_models_keep_the_stacked_path():
    path = check_training_path(load_scenario(_scenario({"kind": "cnn", "channels": [4]})))
    assert path.path == "stacked"
    sim = Simulation(load_scenario(_scenario({"kind": "mlp", "hidden": [8]})))
    assert sim.trainer.training_path.path == "stacked"


@pytest.mark.parametrize("target", ["SmallResNet", "mlp"])
def test_traces_are_byte_identical_on_rerun(nets, tmp_path, target):
    scenario = _scenario({"kind": "import", "target": f"{nets}:{target}"}, lr=0.1, local_steps=10)
    first = fedsim.run(scenario, out=tmp_path / "a")
    second = fedsim.run(scenario, out=tmp_path / "b")
    a, b = (r.run_dir / "events.parquet" for r in (first, second))
    assert a.read_bytes() == b.read_bytes()
    # Evaluations equal too, but for the wall-clock column.
    evals = [r.evals.drop(columns="real_time_s") for r in (first, second)]
    assert evals[0].equals(evals[1])
    # It trains: the test loss falls and the accuracy rises above chance (0.1).
    assert evals[0].loss.iloc[-1] < evals[0].loss.iloc[0] - 0.02
    assert first.summary["final_accuracy"] > 0.12


# ---------------------------------------------------------------------------------------------------
# Randomness inside the model


def test_dropout_takes_the_loop_and_draws_from_each_jobs_seed(nets):
    model = {"kind": "import", "target": f"{nets}:Dropped"}
    path = check_training_path(load_scenario(_scenario(model)))
    assert path.path == "loop" and "drop" in path.reason and "seed" in path.reason
    torch.manual_seed(1)
    a = _simulate(_scenario(model, backend="batched"))
    torch.manual_seed(2)  # the global RNG does not matter
    b = _simulate(_scenario(model, backend="sequential"))
    assert torch.equal(a.servers[0].params, b.servers[0].params)
    # The job's dropout masks come from its seed: a hand loop under that seed agrees.
    task = a.trainer.task
    from fedsim.learning.trainer import TrainJob

    start = init_params(a.spec, torch.Generator().manual_seed(3))
    job = TrainJob(0, 1, start, SeedStreams(5).sequence("training.job", 0))
    trained = a.trainer.train(job)
    module = build_model(a.scenario.model, a.data.info)[0]
    module.load_state_dict(a.spec.state_dict(start))
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    rows = task.batches(job)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.job_seed(job))
        for r in rows:
            opt.zero_grad()
            F.cross_entropy(module(a.data.x_train[r]), a.data.y_train[r]).backward()
            opt.step()
    assert torch.allclose(trained, ParamSpec.flat_state(module), atol=1e-6)


def test_randomness_vmap_cannot_take_falls_back_to_the_loop(nets):
    path = check_training_path(
        load_scenario(_scenario({"kind": "import", "target": f"{nets}:Noisy"}))
    )
    assert path.path == "loop"
    assert path.reason.startswith("vmap cannot run it: ") and "random" in path.reason


# ---------------------------------------------------------------------------------------------------
# Python: fedsim.run(model=...) through using_model, and the flat vector's buffers


def test_module_passed_from_python(nets):
    from fedsim.imports import resolve_target

    net_class = resolve_target(f"{nets}:SmallResNet", key="model.target")
    scenario = _scenario({"kind": "memory", "kwargs": {"width": 3}})
    with using_model(net_class):
        sim = _simulate(scenario)
    assert sim.trainer.training_path.path == "loop"
    assert sim.spec.numel == sum(
        t.numel() for t in net_class((1, 8, 8), 10, 3).state_dict().values()
    )
    # An instance keeps its own weights as the initial model and is never changed.
    torch.manual_seed(0)
    instance = net_class((1, 8, 8), 10, 3).eval()
    before = ParamSpec.flat_state(instance)
    with using_model(instance):
        _module, spec = build_model(
            load_scenario(_scenario({"kind": "memory"})).model, sim.data.info
        )
        assert torch.equal(init_params(spec, torch.Generator()), before)
        _simulate(_scenario({"kind": "memory"}))
    assert not instance.training and torch.equal(ParamSpec.flat_state(instance), before)
    with pytest.raises(ScenarioError, match="none was passed"):
        build_model(load_scenario(_scenario({"kind": "memory"})).model, sim.data.info)


def test_integer_buffers_travel_as_float_and_come_back_rounded():
    with torch.device("cpu"):
        module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    module[1].register_buffer("mask", torch.tensor([True, False]))
    spec = ParamSpec.from_module(module)
    assert spec.n_params == 3 * 4 + 4 + 4 + 4
    assert spec.buffer_numel == 4 + 4 + 1 + 2
    assert dict(spec.integer_buffers) == {
        "1.num_batches_tracked": torch.int64,
        "1.mask": torch.bool,
    }
    flat = ParamSpec.flat_state(module)
    flat[spec.numel - 3] = 6.9999  # an averaged count
    state = spec.state_dict(flat)
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert int(state["1.num_batches_tracked"]) == 7
    assert state["1.mask"].tolist() == [True, False]
    module.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------
# Bad input: one line naming model.target, from validate (exit 2) and the API

BAD = {
    "no_such_module_xyz:Net": "no module named 'no_such_module_xyz'",
    "{nets}:Missing": "has no attribute 'Missing'",
    "{dir}/absent.py:Net": "no such file",
    "{nets}:raises": "building the model raised ValueError: boom in the factory",
    "{nets}:not_a_module": "returned int, not a torch.nn.Module",
    "{nets}:WIDTH": "is int 7, not a torch.nn.Module class or factory",
    "{nets}:wrong_outputs": "output on one sample has shape [1, 3], expected [1, 10]",
    "{nets}:wrong_inputs": "a forward pass on one sample of shape [1, 8, 8] raised RuntimeError",
}


@pytest.mark.parametrize("target", list(BAD))
def test_bad_model_is_one_line(nets, tmp_path, capsys, target):
    resolved = target.format(nets=nets, dir=tmp_path)
    scenario = _scenario({"kind": "import", "target": resolved})
    scenario["output"] = {"dir": str(tmp_path / "run")}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "model.target" in lines[0] and BAD[target] in lines[0], lines[0]
    with pytest.raises(ScenarioError) as info:
        fedsim.run(scenario, save=False)
    message = str(info.value)
    assert "\n" not in message and "model.target" in message and BAD[target] in message
    assert not (tmp_path / "run").exists()


def test_module_instance_with_kwargs_is_refused(nets):
    instance = nn.Linear(64, 10)
    with using_model(instance), pytest.raises(ScenarioError, match="cannot apply"):
        check_training_path(load_scenario(_scenario({"kind": "memory", "kwargs": {"width": 2}})))
    with pytest.raises(ScenarioError, match=r"takes a torch\.nn\.Module"), using_model(3):  # type: ignore[arg-type]
        pass


def test_help_text_in_the_docs_is_current():
    text = textwrap.dedent(Path("docs/models-and-data.md").read_text())
    assert "## Your own model" in text
    for needle in ("kind: import", "vmap", "num_batches_tracked", "model.target"):
        assert needle in text, needle
