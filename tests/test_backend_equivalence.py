"""A whole scenario gives the same evaluations with the batched and the sequential trainer.

For every model kind, a short FedAsync or FedBuff run with real training, once with
``training.backend: sequential`` (the readable reference: one job at a time, plain autograd) and
once with ``batched`` (every pending job in one vmapped step). Each job draws its mini-batches from
its own seed, so the two runs must evaluate the same global models at the same simulated times, up
to float re-association (1e-5). The runs use strong label skew (Dirichlet 0.1) and ``local_epochs``, so clients in one
stack differ in mini-batch size and in number of local steps.

tests/test_batched_trainer.py checks the final parameters of 20 jobs for the MLP; here the same
check runs for the other model kinds, then the whole-run check for all of them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import TypeAdapter

from fedsim.learning.batched import BatchedTrainer
from fedsim.learning.data import DataConfig, load_federated
from fedsim.learning.models import Model, build_model, init_params
from fedsim.learning.trainer import LocalTask, SequentialTrainer, TrainingConfig, TrainJob
from fedsim.rng import SeedStreams
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation

TOL = 1e-5
MODEL = TypeAdapter(Model)

# kind -> (model section, data section without partition, algorithm)
CASES = {
    "mlp": ({"kind": "mlp", "hidden": [16]}, {"dataset": "digits"}, "fedbuff"),
    "logreg": ({"kind": "logreg"}, {"dataset": "synthetic_classification"}, "fedasync"),
    "linear": ({"kind": "linear"}, {"dataset": "synthetic_regression"}, "fedbuff"),
    "cnn": (  # digits as 1×8×8 images
        {"kind": "cnn", "channels": [4], "kernel_size": 3, "hidden": [16]},
        {"dataset": "digits"},
        "fedasync",
    ),
    "cnn1d": (
        {"kind": "cnn1d", "channels": [8, 8], "norm": "group", "groups": 4},
        {"dataset": "mnist1d"},
        "fedbuff",
    ),
    "transformer": (  # digits as 8 tokens (rows) of 8 features
        {"kind": "transformer", "d_model": 16, "heads": 2, "layers": 1, "ff": 32},
        {"dataset": "digits"},
        "fedasync",
    ),
}
ALGORITHMS = {
    "fedasync": {"name": "fedasync", "concurrency": 8, "alpha": 0.6},
    "fedbuff": {"name": "fedbuff", "concurrency": 10, "buffer_size": 4},
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: extra intra-op threads only contend on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(request) -> str:
    """Where mnist1d is generated once (pytest's own cache, so later runs read it back)."""
    return str(request.config.cache.mkdir("fedsim-mnist1d"))


def data_section(kind: str, cache_dir: str) -> dict:
    data = dict(CASES[kind][1])
    data["partition"] = {"kind": "dirichlet", "alpha": 0.1, "min_samples": 2}
    if data["dataset"] == "mnist1d":
        data["cache_dir"] = cache_dir
    return data


def scenario(kind: str, cache_dir: str, backend: str, **training) -> dict:
    model, _, algorithm = CASES[kind]
    return {
        "name": f"equivalence-{kind}",
        "seed": 5,
        "stop": {"time_s": 30},
        "data": data_section(kind, cache_dir),
        "model": model,
        # Epochs, not steps: clients of different sizes train different numbers of steps.
        "training": {
            "local_epochs": 0.5,
            "batch_size": 16,
            "lr": 0.05,
            "backend": backend,
            **training,
        },
        "clients": {
            "count": 30,
            "compute": {"dist": "lognormal", "mean_s": 2.0, "sigma": 0.5},
            "dropout": {"prob": 0.05},
        },
        "algorithm": ALGORITHMS[algorithm],
        "eval": {"every_s": 5.0},
    }


def run(kind: str, cache_dir: str, backend: str, **training):
    sim = Simulation(load_scenario(scenario(kind, cache_dir, backend, **training)), device="cpu")
    return sim, sim.run()


OPTIONS = {
    "": {},
    "-adam-with-replacement": {"optimizer": "adam", "lr": 0.005, "sampling": "with_replacement"},
}
RUNS = [(kind, "") for kind in CASES] + [("cnn", "-adam-with-replacement")]


@pytest.mark.parametrize(("kind", "option"), RUNS, ids=[k + o for k, o in RUNS])
def test_whole_run_gives_the_same_evals_with_both_backends(kind, option, cache_dir):
    seq_sim, sequential = run(kind, cache_dir, "sequential", **OPTIONS[option])
    bat_sim, batched = run(kind, cache_dir, "batched", **OPTIONS[option])

    # The runs are what they claim: one trained job by job, the other in vmapped stacks.
    assert isinstance(seq_sim.trainer, SequentialTrainer)
    assert not isinstance(seq_sim.trainer, BatchedTrainer)
    trainer = bat_sim.trainer
    assert isinstance(trainer, BatchedTrainer)
    assert trainer.jobs_batched == trainer.jobs_trained and trainer.largest_flush > 1
    # Jobs still in flight when the run stops are trained too if a flush catches them: at least
    # as many jobs, never fewer.
    assert trainer.jobs_trained >= seq_sim.trainer.jobs_trained > 20

    # Simulated time does not depend on the backend: the same events, row for row.
    pd.testing.assert_frame_equal(batched.events, sequential.events, check_exact=True)

    # The same evaluations; the model really moved, by far more than the tolerance.
    assert len(sequential.evals) >= 6
    loss = sequential.evals["loss"]
    assert abs(loss.iloc[-1] - loss.iloc[0]) > 100 * TOL
    np.testing.assert_allclose(batched.evals["loss"], sequential.evals["loss"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(
        batched.evals["accuracy"], sequential.evals["accuracy"], rtol=0, atol=TOL
    )  # NaN == NaN for the regression model
    np.testing.assert_allclose(
        batched.evals["sim_time"], sequential.evals["sim_time"], rtol=0, atol=0
    )


@pytest.mark.parametrize("kind", [k for k in CASES if k != "mlp"])  # mlp: test_batched_trainer
def test_twenty_jobs_give_the_same_parameters(kind, cache_dir):
    """Final parameters of 20 jobs (different seeds, start points, data sizes and step counts)."""
    streams = SeedStreams(21)
    data = load_federated(
        DataConfig(**data_section(kind, cache_dir)), 30, streams, torch.device("cpu")
    )
    module, spec = build_model(MODEL.validate_python(CASES[kind][0]), data.info)
    config = TrainingConfig(
        local_epochs=0.5, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3
    )
    task = LocalTask(module, spec, data, config)
    w0 = init_params(spec, streams.torch_generator("model.init"))
    order = data.client_sizes.argsort()  # the smallest and the largest clients are both in
    gen = torch.Generator().manual_seed(0)
    jobs = [
        TrainJob(
            i,
            int(order[(i * 7) % 30]),
            w0 + 0.01 * torch.randn(w0.shape, generator=gen),
            streams.sequence("training.job", i),
        )
        for i in range(20)
    ]
    shapes = {task.batches(job).shape for job in jobs}
    assert len({s for s, _ in shapes}) > 2 and len({b for _, b in shapes}) > 1

    sequential = SequentialTrainer(task)
    want = [sequential.submit(job).result() for job in jobs]
    batched = BatchedTrainer(task)
    handles = [batched.submit(job) for job in jobs]
    got = [h.result() for h in handles]
    assert batched.flushes == 1 and batched.jobs_batched == 20
    for g, w, job in zip(got, want, jobs, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=TOL)
        assert not torch.allclose(g, job.start)  # the job trained


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", list(CASES))
def test_cpu_and_gpu_give_the_same_evals(kind, cache_dir):
    """The same scenario on the CPU and on a CUDA device: the same events, evals within 1e-4."""
    cpu = Simulation(load_scenario(scenario(kind, cache_dir, "auto")), device="cpu").run()
    gpu_sim = Simulation(load_scenario(scenario(kind, cache_dir, "auto")), device="cuda")
    assert gpu_sim.data.x_train.device.type == "cuda"
    gpu = gpu_sim.run()
    pd.testing.assert_frame_equal(gpu.events, cpu.events, check_exact=True)
    np.testing.assert_allclose(gpu.evals["loss"], cpu.evals["loss"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu.evals["accuracy"], cpu.evals["accuracy"], rtol=0, atol=1e-4)


def test_whole_run_with_stacks_side_by_side_gives_the_same_evals(cache_dir, monkeypatch):
    """Two torch threads and every stack eligible: stacks train in parallel workers, same evals."""
    import fedsim.learning.batched as batched

    monkeypatch.setattr(batched, "PARALLEL_MIN_FLOATS", 0)
    _, sequential = run("cnn", cache_dir, "sequential")
    torch.set_num_threads(2)  # the module fixture restores one thread afterwards
    try:
        sim, parallel = run("cnn", cache_dir, "batched", max_batch=2)
    finally:
        torch.set_num_threads(1)
    assert sim.trainer.most_workers == 2
    pd.testing.assert_frame_equal(parallel.events, sequential.events, check_exact=True)
    np.testing.assert_allclose(parallel.evals["loss"], sequential.evals["loss"], rtol=TOL, atol=TOL)
