"""The local optimisers follow torch.optim's SGD and Adam step for step; sampling with replacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fedsim.learning.trainer import SequentialTrainer, TrainingConfig, batch_schedule
from tests.test_batched_trainer import build_setup, make_jobs, make_task


@pytest.fixture(scope="module")
def setup():
    return build_setup()


def torch_optim_result(task, job, make_optimizer) -> torch.Tensor:
    """The job trained by a torch.optim optimiser on the same mini-batches (an independent step)."""
    w = job.start.clone().requires_grad_()
    optimizer = make_optimizer([w])
    for rows in torch.as_tensor(task.batches(job)):
        optimizer.zero_grad()
        task.loss(w, task.data.x_train[rows], task.data.y_train[rows]).backward()
        optimizer.step()
    return w.detach()


CASES = {
    "sgd_momentum_wd": (
        {"local_steps": 12, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    ),
    "adam": (
        {"local_steps": 12, "batch_size": 16, "lr": 0.01, "optimizer": "adam"},
        lambda p: torch.optim.Adam(p, lr=0.01),
    ),
    "adam_betas_wd": (
        {"local_steps": 12, "batch_size": 16, "lr": 0.01, "optimizer": "adam",
         "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 1e-2},
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_local_steps_match_torch_optim(setup, name):
    training, make_optimizer = CASES[name]
    task = make_task(setup, **training)
    trainer = SequentialTrainer(task)
    for job in make_jobs(setup, n=4):
        want = torch_optim_result(task, job, make_optimizer)
        got = trainer.submit(job).result()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert (got - job.start).abs().max() > 1e-3  # it trained


def test_optimizer_settings_are_checked():
    with pytest.raises(ValidationError, match="momentum applies to optimizer sgd"):
        TrainingConfig(optimizer="adam", momentum=0.9)
    with pytest.raises(ValidationError, match=r"betas must be in \[0, 1\)"):
        TrainingConfig(optimizer="adam", betas=[0.9, 1.0])
    with pytest.raises(ValidationError, match="optimizer"):
        TrainingConfig(optimizer="rmsprop")
    with pytest.raises(ValidationError, match="sampling"):
        TrainingConfig(sampling="bootstrap")


def test_sampling_with_replacement_fills_every_mini_batch():
    rng = np.random.default_rng(0)
    small = batch_schedule(5, steps=400, batch=8, rng=rng, replace=True)
    assert small.shape == (400, 8)  # a 5-sample client still gets mini-batches of 8
    counts = np.bincount(small.ravel(), minlength=5)
    assert counts.min() > 0.8 * 640 and counts.max() < 1.2 * 640  # uniform: 3,200 draws / 5
    without = batch_schedule(5, steps=4, batch=8, rng=rng)
    assert without.shape == (4, 5) and all(sorted(row) == list(range(5)) for row in without)


def test_with_replacement_widths_and_epochs(setup):
    task = make_task(setup, sampling="with_replacement", batch_size=64, local_epochs=1.0)
    sizes = task.data.client_sizes
    small = int(np.argmin(sizes))
    assert sizes[small] < 64 and task.batch_width(small) == 64
    assert task.steps_for(small) == 1  # one epoch of a small client: one full mini-batch
    job = make_jobs(setup, n=1)[0]
    rows = task.batches(job)
    assert rows.shape[1] == 64 and set(rows.ravel()) <= set(task.data.client_indices[job.client])
