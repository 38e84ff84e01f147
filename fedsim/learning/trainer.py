"""Local training behind a ``submit(job) -> handle`` seam.

The simulation submits a job when it dispatches a client and asks the handle for the result only when
the update arrives in simulated time. What happens in between is the trainer's business: the
``sequential`` backend trains one job at a time, on demand (the readable reference); a batched backend
may train every pending job together. Each job draws its mini-batches from its own seed, so the result
of a job never depends on when, with whom or on which device it was trained.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import nn
from torch.func import functional_call

from fedsim.config_base import Section, betas_in_range
from fedsim.learning.data import FederatedData
from fedsim.learning.models import loss_for
from fedsim.learning.optim import LocalOptimizer
from fedsim.learning.params import ParamSpec


class TrainingConfig(Section):
    """Local training at each client. Use ``training: none`` for timing-only runs."""

    local_steps: PositiveInt = 10
    """SGD steps per job (ignored when local_epochs is set)."""
    local_epochs: PositiveFloat | None = None
    """Passes over the client's data per job; steps = ceil(epochs * samples / batch)."""
    batch_size: PositiveInt = 32
    """Mini-batch size (without replacement, a client with fewer samples uses all of them each
    step)."""
    sampling: Literal["without_replacement", "with_replacement"] = "without_replacement"
    """How a job draws its mini-batches from its client's samples. without_replacement: passes over
    shuffled data, each sample once per pass. with_replacement: every step draws batch_size samples
    uniformly at random, so every mini-batch has batch_size samples even on a small client."""
    lr: PositiveFloat = 0.05
    """Local learning rate."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """Local optimizer: sgd (with momentum and weight_decay) or adam (betas, eps, weight_decay).
    Its state is per job and starts fresh at every job, as torch.optim's would for a new model."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """SGD momentum (state is per job, starting at zero). Not used by adam."""
    weight_decay: float = Field(0.0, ge=0)
    """L2 penalty added to the gradient (sgd and adam)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's decay rates of the first and second moment estimates, each in [0, 1)."""
    eps: PositiveFloat = 1e-8
    """Adam's term added to the denominator."""
    proximal_mu: float = Field(0.0, ge=0)
    """μ of the FedProx proximal term (Li et al. 2020; FedAsync's regularised objective): each job
    minimises its loss + μ/2·‖w − w_start‖², w_start the model it received. 0: none."""
    backend: Literal["auto", "batched", "sequential"] = "auto"
    """How jobs are executed; results do not depend on it. sequential = one job at a time (the
    reference); batched = every pending job in stacks trained with one vectorised step each; auto =
    batched when more than one job is pending, the plain loop for a single job."""
    max_batch: PositiveInt | None = None
    """Most jobs in one vectorised stack of the batched backends (bounds memory; results do not
    depend on it). null: chosen from the model's size and activations and the free memory."""

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        return betas_in_range(betas)

    @model_validator(mode="after")
    def _momentum_is_sgds(self) -> TrainingConfig:
        if self.optimizer == "adam" and self.momentum:
            raise ValueError("momentum applies to optimizer sgd; adam's moments are set by betas")
        return self


@dataclass(slots=True)
class TrainJob:
    """One client's local training from a given model version."""

    job_id: int
    client: int
    start: torch.Tensor
    seed: np.random.SeedSequence
    flip_labels: bool = False
    """Train on flipped labels ``C − 1 − y`` (a Byzantine client's label-flip attack)."""
    correction: torch.Tensor | None = None
    """Added to every gradient of the job (SCAFFOLD's ``c − c_i``, ``[n_params]``); None: none."""


class Trainer(Protocol):
    def submit(self, job: TrainJob) -> TrainHandle: ...


class TrainHandle:
    """A promise of a job's final local model ``w_end``, computed when first asked for."""

    __slots__ = ("_result", "_trainer", "job")

    def __init__(self, trainer: SequentialTrainer, job: TrainJob) -> None:
        self._trainer = trainer
        self.job: TrainJob | None = job
        self._result: torch.Tensor | None = None

    def result(self) -> torch.Tensor:
        """The client's model after local training (flat)."""
        if self._result is None:
            self._result = self._trainer.train(self.job)
            self.job = None  # the start vector is no longer needed here (memory: one model per job)
        return self._result

    def cancel(self) -> bool:
        """Nothing to undo: a sequential job is only trained when its result is asked for."""
        return self._result is None


def batch_schedule(
    n_samples: int, steps: int, batch: int, rng: np.random.Generator, replace: bool = False
) -> np.ndarray:
    """Local positions ``[steps, b]`` of each step's mini-batch.

    Without replacement (default), ``b = min(batch, n_samples)``: consecutive slices of a stream
    of fresh permutations, so every sample is seen once per pass and every step has the same batch
    size. With replacement, ``b = batch``: each position drawn uniformly and independently.
    """
    if replace:
        return rng.integers(0, n_samples, size=(steps, batch))
    b = min(batch, n_samples)
    needed = steps * b
    passes = math.ceil(needed / n_samples)
    stream = np.concatenate([rng.permutation(n_samples) for _ in range(passes)])
    return stream[:needed].reshape(steps, b)


class LocalTask:
    """What every trainer backend shares: the model as a function, the data, the optimiser rule."""

    def __init__(
        self, module: nn.Module, spec: ParamSpec, data: FederatedData, config: TrainingConfig
    ) -> None:
        self.module = module
        self.spec = spec
        self.data = data
        self.config = config
        self.loss_fn = loss_for(data.info)
        """``loss(outputs, targets, reduction)``: cross-entropy, or MSE for a regression dataset."""
        self.optimizer = LocalOptimizer.from_config(config)
        self.seeded = spec.init is not None
        """Your own model (imported or passed): each job runs under torch's RNG seeded from the
        job's seed (:meth:`job_rng`), so dropout draws the same numbers on every path."""
        module.train()

    def job_seed(self, job: TrainJob) -> int:
        """The torch seed of a job's random operations (dropout): a child of the job's seed,
        independent of its mini-batch stream."""
        child = np.random.SeedSequence(job.seed.entropy, spawn_key=(*job.seed.spawn_key, 0x6D6F64))
        return int(child.generate_state(1, np.uint64)[0])

    @contextlib.contextmanager
    def job_rng(self, job: TrainJob) -> Iterator[None]:
        """Run a job with torch's global RNG (CPU and the job's device) seeded from
        :meth:`job_seed`, restored afterwards; nothing for the built-in models (no randomness)."""
        if not self.seeded:
            yield
            return
        device = job.start.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.job_seed(job))
            yield

    def split_loss(
        self,
        params: torch.Tensor,
        buffers: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """Mean loss of a mini-batch for a model with buffers: ``params`` (the vector's head) and
        the job's buffer views, which a forward pass in train mode updates in place."""
        named = {**self.spec.param_views(params), **buffers}
        logits = functional_call(self.module, named, (x,))
        return self.loss_fn(logits, y)

    def sample_losses(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses (the batched trainer masks padded samples with them)."""
        logits = functional_call(self.module, self.spec.views(flat), (x,))
        return self.loss_fn(logits, y, reduction="none")

    def loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of a mini-batch."""
        logits = functional_call(self.module, self.spec.views(flat), (x,))
        return self.loss_fn(logits, y)

    def steps_for(self, client: int) -> int:
        if self.config.local_epochs is None:
            return self.config.local_steps
        n = len(self.data.client_indices[client])
        return math.ceil(self.config.local_epochs * n / self.batch_width(client))

    def batch_width(self, client: int) -> int:
        """Samples in each of the client's mini-batches."""
        if self.config.sampling == "with_replacement":
            return self.config.batch_size
        return min(self.config.batch_size, len(self.data.client_indices[client]))

    def batches(self, job: TrainJob) -> np.ndarray:
        """Global row indices ``[steps, b]`` of the job's mini-batches, from the job's own seed."""
        rows = self.data.client_indices[job.client]
        rng = np.random.Generator(np.random.PCG64(job.seed))
        replace = self.config.sampling == "with_replacement"
        steps = self.steps_for(job.client)
        local = batch_schedule(len(rows), steps, self.config.batch_size, rng, replace)
        return rows[local]


@dataclass(frozen=True)
class TrainingPath:
    """How local training runs and why: ``summary.json`` → ``trainer``, ``fedsim validate``.

    ``path``: ``stacked`` (one grouped forward/backward over the stacked parameters of every
    pending job: the built-in models), ``vmap`` (``torch.func.vmap`` over the stacked jobs: a
    module that is a pure function of its parameters) or ``loop`` (one job at a time: buffers,
    randomness, samples coupled within a mini-batch, an operation vmap cannot take, or
    ``training.backend: sequential``). Every path gives each job the result of the loop.
    """

    backend: str
    path: Literal["stacked", "vmap", "loop"]
    reason: str

    def to_summary(self) -> dict[str, str]:
        return {"backend": self.backend, "path": self.path, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


class SequentialTrainer:
    """Reference backend: trains each job alone, the moment its result is first needed."""

    def __init__(self, task: LocalTask) -> None:
        self.task = task
        self.training_path = TrainingPath("sequential", "loop", "one job at a time")
        """How jobs train and why (set by :func:`~fedsim.learning.batched.make_trainer`)."""
        self.jobs_trained = 0
        self.train_seconds = 0.0  # real time spent training (for the overhead split)

    def _grad(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Plain autograd: for one client at a time it costs half of torch.func.grad's overhead.
        w = w.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.task.loss(w, x, y), w)
        return g

    def submit(self, job: TrainJob) -> TrainHandle:
        return TrainHandle(self, job)

    def train(self, job: TrainJob) -> torch.Tensor:
        started = time.perf_counter()
        task = self.task
        device = job.start.device
        batches = torch.as_tensor(task.batches(job), device=device)
        w = job.start.clone()
        state: dict[str, torch.Tensor] = {}
        task.optimizer.begin(state, job.start[: task.spec.n_params])  # the parameters' start
        if job.correction is not None:
            task.optimizer.correct(state, job.correction)
        with task.job_rng(job):
            if task.spec.buffers:
                self._train_with_buffers(job, w, batches, state)
            else:
                for t, rows in enumerate(batches):
                    y = task.data.y_train[rows]
                    if job.flip_labels:
                        y = (task.data.info.n_classes - 1) - y
                    g = self._grad(w, task.data.x_train[rows], y)
                    task.optimizer.step(w, g, state, t)
        self.jobs_trained += 1
        self.train_seconds += time.perf_counter() - started
        return w.detach()

    def _train_with_buffers(
        self, job: TrainJob, w: torch.Tensor, batches: torch.Tensor, state: dict
    ) -> None:
        """The loop for a model with buffers, in place on ``w = [params | buffers]``: gradient
        steps on the head; each forward pass (train mode) updates the buffers in the tail, as
        ``torch.optim`` on the module would."""
        task, spec = self.task, self.task.spec
        params, tail = w[: spec.n_params], w[spec.n_params :]
        buffers = spec.buffer_views(tail)
        for t, rows in enumerate(batches):
            y = task.data.y_train[rows]
            if job.flip_labels:
                y = (task.data.info.n_classes - 1) - y
            p = params.detach().requires_grad_()
            with torch.enable_grad():
                loss = task.split_loss(p, buffers, task.data.x_train[rows], y)
                (g,) = torch.autograd.grad(loss, p)
            task.optimizer.step(params, g, state, t)
        spec.write_integer_buffers(buffers, tail)


class Evaluator:
    """Accuracy and mean loss of a flat parameter vector on the held-out set."""

    def __init__(self, module: nn.Module, spec: ParamSpec, data: FederatedData) -> None:
        self.module, self.spec, self.data = module, spec, data
        self.loss_fn = loss_for(data.info)
        self.classification = data.info.task == "classification"
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, flat: torch.Tensor, chunk: int = 1024) -> tuple[float, float]:
        """Accuracy and mean loss; ``chunk`` test samples at a time bounds the activations' memory
        (a CNN on 8192 28×28 images would hold about 1 GB of feature maps at once)."""
        started = time.perf_counter()
        x, y = self.data.x_test, self.data.y_test
        correct = 0
        loss_sum = 0.0
        views = self.spec.views(flat)
        training = self.module.training
        self.module.eval()  # BatchNorm uses its running statistics, dropout is off
        try:
            for i in range(0, len(y), chunk):
                logits = functional_call(self.module, views, (x[i : i + chunk],))
                loss_sum += float(self.loss_fn(logits, y[i : i + chunk], reduction="sum"))
                if self.classification:
                    correct += int((logits.argmax(1) == y[i : i + chunk]).sum())
        finally:
            self.module.train(training)
        self.seconds += time.perf_counter() - started
        accuracy = correct / len(y) if self.classification else float("nan")
        return accuracy, loss_sum / len(y)
