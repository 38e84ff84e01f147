"""The batched trainer gives every job the same result as the sequential reference."""

from __future__ import annotations

import pytest
import torch

from fedsim.learning.batched import (
    AutoTrainer,
    BatchedTrainer,
    activation_floats,
    default_max_batch,
    make_trainer,
)
from fedsim.learning.data import DataConfig, load_federated
from fedsim.learning.memory import available_memory_bytes
from fedsim.learning.models import ModelConfig, build_model, init_params
from fedsim.learning.trainer import LocalTask, SequentialTrainer, TrainingConfig, TrainJob
from fedsim.rng import SeedStreams

N_CLIENTS = 30
N_JOBS = 20


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine's other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    return build_setup()


def build_setup():
    """Digits over 30 clients of very different sizes, a small MLP and its initial vector."""
    streams = SeedStreams(11)
    # Strong label skew: client sizes range from a handful of samples to a few hundred.
    data_cfg = DataConfig(partition={"kind": "dirichlet", "alpha": 0.3, "min_samples": 3})
    data = load_federated(data_cfg, N_CLIENTS, streams, torch.device("cpu"))
    module, spec = build_model(ModelConfig(hidden=[16]), data.info.in_features, data.info.n_classes)
    w0 = init_params(spec, streams.torch_generator("model.init"))
    return streams, data, module, spec, w0


def make_task(setup, **training) -> LocalTask:
    _, data, module, spec, _ = setup
    return LocalTask(module, spec, data, TrainingConfig(**training))


def make_jobs(setup, n: int = N_JOBS, first_id: int = 0) -> list[TrainJob]:
    """Jobs on clients of different sizes, each from its own start point and seed."""
    streams, data, _, _, w0 = setup
    order = data.client_sizes.argsort()  # smallest and largest clients both included
    clients = [int(order[(i * 7) % N_CLIENTS]) for i in range(first_id, first_id + n)]
    gen = torch.Generator().manual_seed(first_id)
    return [
        TrainJob(
            i,
            c,
            w0 + 0.01 * torch.randn(w0.shape, generator=gen),
            streams.sequence("training.job", i),
        )
        for i, c in zip(range(first_id, first_id + n), clients, strict=True)
    ]


def sequential_results(task: LocalTask, jobs: list[TrainJob]) -> list[torch.Tensor]:
    trainer = SequentialTrainer(task)
    return [trainer.submit(job).result() for job in jobs]


def assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


CONFIGS = {
    "steps": {"local_steps": 6, "batch_size": 32, "lr": 0.1},
    "epochs": {"local_epochs": 1.0, "batch_size": 32, "lr": 0.1},
    "momentum_wd": {"local_epochs": 1.5, "batch_size": 16, "lr": 0.05, "momentum": 0.9,
                    "weight_decay": 1e-3},
    "adam": {"local_epochs": 1.0, "batch_size": 16, "lr": 0.01, "optimizer": "adam",
             "weight_decay": 1e-3},
    "with_replacement": {"local_steps": 5, "batch_size": 24, "lr": 0.1,
                         "sampling": "with_replacement"},
}  # fmt: skip


@pytest.mark.parametrize("pad", ["exact", "pow2", "full"])
@pytest.mark.parametrize("name", CONFIGS)
def test_batched_matches_sequential(setup, name, pad):
    task = make_task(setup, **CONFIGS[name])
    jobs = make_jobs(setup)
    # The jobs really differ in batch size (small clients) and, with local_epochs, in step count.
    shapes = {task.batches(job).shape for job in jobs}
    n_sizes = len({b for _, b in shapes})
    replace = CONFIGS[name].get("sampling") == "with_replacement"
    assert n_sizes == 1 if replace else n_sizes > 2  # with replacement: no padding needed
    if "local_epochs" in CONFIGS[name]:
        assert len({s for s, _ in shapes}) > 3

    want = sequential_results(task, jobs)
    trainer = BatchedTrainer(task, pad=pad)
    handles = [trainer.submit(job) for job in jobs]
    assert trainer.jobs_trained == 0 and trainer.pending == N_JOBS  # lazy
    got = [h.result() for h in reversed(handles)][::-1]
    assert trainer.flushes == 1 and trainer.jobs_trained == trainer.jobs_batched == N_JOBS
    # exact: one stack per batch size; full: all in one padded stack; pow2: in between.
    assert trainer.stacks == {"exact": n_sizes, "full": 1}.get(pad, trainer.stacks)
    assert 1 <= trainer.stacks < n_sizes or pad == "exact" or trainer.stacks == n_sizes == 1
    assert trainer.train_seconds > 0
    assert not any(g.requires_grad for g in got)
    assert_close(got, want)
    # A job's own start vector is never modified.
    assert all(not torch.equal(g, job.start) for g, job in zip(got, jobs, strict=True))


@pytest.mark.parametrize("pad", ["exact", "full"])
def test_label_flip_jobs_match_sequential(setup, pad):
    """Byzantine label-flip jobs mixed with honest ones in one stack: same as the loop."""
    task = make_task(setup, **CONFIGS["momentum_wd"])
    jobs = make_jobs(setup)
    for job in jobs[::2]:
        job.flip_labels = True
    want = sequential_results(task, jobs)
    trainer = BatchedTrainer(task, pad=pad)
    got = [h.result() for h in [trainer.submit(job) for job in jobs]]
    assert_close(got, want)
    honest = make_jobs(setup)[0]
    assert not torch.allclose(SequentialTrainer(task).submit(honest).result(), want[0])


def test_result_does_not_depend_on_grouping(setup):
    task = make_task(setup, **CONFIGS["momentum_wd"])
    jobs = make_jobs(setup)

    together = BatchedTrainer(task)
    handles = [together.submit(job) for job in jobs]
    all_at_once = [h.result() for h in handles]

    split = BatchedTrainer(task, max_batch=4)
    first = [split.submit(job) for job in jobs[:5]]
    first[0].result()  # trains the first five only
    assert split.jobs_trained == 5 and split.pending == 0
    rest = [split.submit(job) for job in reversed(jobs[5:])][::-1]
    in_two = [h.result() for h in first + rest]
    assert split.flushes == 2 and split.jobs_trained == N_JOBS

    assert_close(in_two, all_at_once)


def test_stacks_side_by_side_on_several_threads_give_the_same_results(setup):
    task = make_task(setup, **CONFIGS["momentum_wd"])
    jobs = make_jobs(setup)
    want = sequential_results(task, jobs)
    torch.set_num_threads(2)  # the module fixture restores one thread for the other tests
    try:
        # This tiny MLP's stacks carry too little work to gain from threads: one at a time.
        small = BatchedTrainer(task, max_batch=4)
        got_small = [h.result() for h in [small.submit(job) for job in jobs]]
        assert small.most_workers == 1 and small.activations_per_job == 16 * (64 + 16 + 16 + 10)
        trainer = BatchedTrainer(task, max_batch=4)
        trainer.parallel_min_floats = 0  # every stack eligible
        got = [h.result() for h in [trainer.submit(job) for job in jobs]]
        assert torch.get_num_threads() == 2  # one thread per worker during the flush only
    finally:
        torch.set_num_threads(1)
    assert trainer.most_workers == 2 and trainer.stacks >= 4
    assert_close(got, want)
    assert_close(got_small, got)
    serial = BatchedTrainer(task, max_batch=4, parallel_stacks=False)
    assert_close([h.result() for h in [serial.submit(job) for job in jobs]], got)
    assert serial.most_workers == 1


def test_cancel_removes_pending_job(setup):
    task = make_task(setup, **CONFIGS["steps"])
    jobs = make_jobs(setup, n=4)
    trainer = BatchedTrainer(task)
    handles = [trainer.submit(job) for job in jobs]
    assert handles[1].cancel() is True
    assert trainer.pending == 3
    handles[0].result()
    assert trainer.jobs_trained == 3 and trainer.pending == 0
    with pytest.raises(RuntimeError, match="cancelled"):
        handles[1].result()
    assert handles[2].cancel() is False  # already trained: nothing to remove
    assert_close(
        [handles[i].result() for i in (0, 2, 3)], sequential_results(task, jobs[::2] + jobs[3:])
    )


def test_auto_uses_loop_for_few_jobs_and_agrees(setup):
    task = make_task(setup, **CONFIGS["epochs"])
    jobs = make_jobs(setup, n=8)
    want = sequential_results(task, jobs)

    auto = make_trainer(task, "auto")
    assert isinstance(auto, AutoTrainer)
    one = auto.submit(jobs[0])
    assert_close([one.result()], want[:1])
    assert auto.jobs_trained == 1 and auto.jobs_batched == 0  # the plain loop

    handles = [auto.submit(job) for job in jobs[1:]]
    assert_close([h.result() for h in handles], want[1:])
    assert auto.jobs_trained == 8 and auto.jobs_batched > 0


def test_make_trainer_backends(setup):
    task = make_task(setup)
    assert isinstance(make_trainer(task, "sequential"), SequentialTrainer)
    assert type(make_trainer(task, "batched")) is BatchedTrainer
    assert make_trainer(task, "batched", max_batch=7).max_batch == 7
    with pytest.raises(ValueError, match="unknown training backend"):
        make_trainer(task, "ray")


def test_default_stack_size_follows_parameters_and_activations():
    # Parameter budget alone: 256 MB / (16 B per parameter and job).
    assert default_max_batch(10**6) == 16
    assert default_max_batch(10) == 1024
    # Activations: 6 MB of float32 per stack, so 100k floats per job give 15 jobs, never below 8.
    assert default_max_batch(10, activations_per_job=100_000) == 15
    assert default_max_batch(10, activations_per_job=10**8) == 8


def test_default_stack_size_shrinks_with_little_free_memory(monkeypatch):
    import fedsim.learning.batched as batched

    assert available_memory_bytes() > 0
    monkeypatch.setattr(batched, "available_memory_bytes", lambda: 64 * 2**20)
    # A quarter of 64 MB for four float32 stacks of 100k parameters: 10 jobs, not 167.
    assert default_max_batch(100_000) == 10
    monkeypatch.setattr(
        batched, "available_memory_bytes", lambda: None
    )  # unknown: the fixed budget
    assert default_max_batch(100_000) == 167


def test_activation_count_and_training_max_batch_key(setup):
    _, data, module, spec, _ = setup  # MLP hidden 16 on digits: 64 → 16 → relu → 10
    assert activation_floats(module, data.x_train[0], 32) == 32 * (64 + 16 + 16 + 10)
    task = make_task(setup, batch_size=32)
    assert make_trainer(task, "auto").max_batch == default_max_batch(
        spec.numel, "cpu", 32 * (64 + 16 + 16 + 10)
    )
    from fedsim.scenario import Scenario

    scenario = Scenario.model_validate({"training": {"max_batch": 5}})
    assert scenario.training.max_batch == 5
    with pytest.raises(ValueError, match="max_batch"):
        Scenario.model_validate({"training": {"max_batch": 0}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(setup):
    _, data, module, spec, _ = setup
    cuda = torch.device("cuda")
    gpu_data = type(data)(
        data.info,
        data.x_train.to(cuda),
        data.y_train.to(cuda),
        data.x_test.to(cuda),
        data.y_test.to(cuda),
        data.client_indices,
    )
    cfg = TrainingConfig(**CONFIGS["momentum_wd"])
    jobs = make_jobs(setup)
    gpu_jobs = [TrainJob(j.job_id, j.client, j.start.to(cuda), j.seed) for j in jobs]
    want = sequential_results(LocalTask(module, spec, data, cfg), jobs)
    trainer = BatchedTrainer(LocalTask(module, spec, gpu_data, cfg))
    got = [trainer.submit(job) for job in gpu_jobs]
    assert all(h.result().device.type == "cuda" for h in got)
    for h, w in zip(got, want, strict=True):
        torch.testing.assert_close(h.result().cpu(), w, rtol=0, atol=1e-4)
