"""The batched trainer: every pending job trained together, one vectorised step per local step.

``submit(job)`` only records the job. The first time any pending handle's result is asked for, the
trainer trains *all* pending jobs at once: start parameters stacked ``[n, d]``, each job's
mini-batches gathered from the device-resident training set by an index tensor ``[n, steps, b]``
built once from the jobs' own seeds (:meth:`LocalTask.batches`), and per local step one call of
``vmap(grad(task.loss))`` for every client still training. Because each job's batches come from
its own seed, a job's result does not depend on which other jobs it was batched with.

A vmapped step needs equal shapes, but clients differ in mini-batch size ``b = min(batch_size,
n_client)`` and in number of local steps. Jobs are grouped by a *bucket* of ``b`` (``pad``: the next
power of two by default, so padding at most doubles the work; a bucket of only a few jobs is padded
further, into the next larger one). In a stack, each mini-batch is padded to the stack's largest
``b`` and a job's loss is the mean over its own ``b`` samples only (weight 0 on the padding). This
needs a loss that is a mean of independent per-sample losses (no batch-coupled layers such as
BatchNorm); per-sample losses come from ``task.sample_losses`` when the task has one, else from
``task.loss`` on one-sample batches (``vmap`` again). Inside a stack, jobs are ordered by number of
local steps, longest first; at step ``t`` the clients still training are then a prefix of the stack,
so finished clients are neither computed nor updated. Stacks hold at most ``max_batch`` jobs, to
bound memory.

The optimiser is the sequential trainer's (:class:`~fedsim.learning.optim.LocalOptimizer`, SGD or
Adam), with a row of state per job; at step ``t`` it updates the first ``k`` rows, the jobs still
training.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.learning.memory import available_memory_bytes, release_free_memory
from fedsim.learning.stacked import stack_model, stacked_grads
from fedsim.learning.trainer import LocalTask, SequentialTrainer, TrainJob

BACKENDS = ("auto", "batched", "sequential")
PARALLEL_MIN_FLOATS = 600_000
"""Forward activations per step that a stack needs before stacks run side by side on several
threads: the digits CNN gains from 8 jobs per stack (670k floats), the MLP loses up to 50 jobs
(320k floats) and breaks even at 150 (970k)."""

TRIM_MIN_BYTES = 32 * 2**20
"""A flush whose results take at least this many bytes first returns the heap's free pages to the
OS (glibc; 1-20 ms, so small flushes skip it)."""
PadPolicy = Literal["exact", "pow2", "full"]


def _cut(jobs: list, max_batch: int, workers: int) -> list[list]:
    """Consecutive stacks of at most ``max_batch`` jobs, of equal sizes (±1), as many as a
    multiple of ``workers`` where there are at least that many jobs."""
    stacks = math.ceil(len(jobs) / max_batch)
    if workers > 1 and len(jobs) >= workers:
        stacks = math.ceil(stacks / workers) * workers
    size = math.ceil(len(jobs) / stacks)
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _bucket(b: int, batch_size: int, pad: PadPolicy) -> int:
    """The padded mini-batch size that a job with ``b`` samples per step shares a stack with."""
    if pad == "exact":
        return b
    if pad == "full":
        return batch_size
    return min(batch_size, 1 << (b - 1).bit_length())


class BatchedHandle:
    """A promise of a job's final local model ``w_end``; asking for it trains every pending job."""

    __slots__ = ("_cancelled", "_result", "_trainer", "job")

    def __init__(self, trainer: BatchedTrainer, job: TrainJob) -> None:
        self._trainer = trainer
        self.job = job
        self._result: torch.Tensor | None = None
        self._cancelled = False

    def result(self) -> torch.Tensor:
        """The client's model after local training (flat, detached)."""
        if self._result is None:
            if self._cancelled:
                raise RuntimeError("this job was cancelled; it has no result")
            self._trainer.flush()
        assert self._result is not None
        return self._result

    def cancel(self) -> bool:
        """Drop the job if it is not trained yet (True if it was pending). Its result is never needed."""
        self._cancelled = True
        return self._trainer._discard(self)

    @property
    def done(self) -> bool:
        return self._result is not None


class BatchedTrainer:
    """Trains all pending jobs together, one vectorised step per local step, over stacked flat
    parameters.

    ``max_batch`` bounds how many jobs share one vectorised step (memory is about
    ``max_batch * (3 d + b * activations)`` floats; None: :func:`default_max_batch`). A whole group
    of at most ``sequential_max`` jobs is trained by :class:`SequentialTrainer` itself; on the vmap
    path, whenever at most ``sequential_max`` clients of a stack are still training, their
    gradients come from plain per-client autograd (for one or two clients that is faster than
    ``vmap``; stacked execution needs no such switch).

    ``pad`` says which jobs share a stack: ``exact`` only jobs with equal mini-batch size (no
    padding); ``pow2`` (default) sizes with the same next power of two, a bucket of fewer than
    ``min_stack`` jobs joining the next larger one; ``full`` every job (padded to ``batch_size``).

    ``stacked`` (default): models made of layers that :mod:`fedsim.learning.stacked` knows (every
    model fedsim builds) run as one grouped forward/backward on the stacked parameters, which is
    faster than ``vmap`` on a CPU; other modules, and ``stacked=False``, use ``vmap``. Both give
    each job the gradient of its own loss.
    """

    def __init__(
        self,
        task: LocalTask,
        max_batch: int | None = 1024,
        sequential_max: int = 0,
        pad: PadPolicy = "pow2",
        min_stack: int = 16,
        stacked: bool = True,
        parallel_stacks: bool = True,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if pad not in ("exact", "pow2", "full"):
            raise ValueError(f"pad must be exact, pow2 or full, got {pad!r}")
        self.task = task
        self.sequential_max = int(sequential_max)
        self.pad = pad
        self.min_stack = int(min_stack)
        self._sequential = SequentialTrainer(task)
        self._vgrad = vmap(grad(task.loss))
        self._vgrad_masked = vmap(grad(self._weighted_loss))
        self._stacked = stack_model(task.module, task.spec) if stacked else None
        self.parallel_stacks = parallel_stacks
        self.parallel_min_floats = PARALLEL_MIN_FLOATS
        """Activations per step a stack needs before stacks run side by side (0: always)."""
        self.activations_per_job = _activations_per_job(task) if self._stacked is not None else 0
        """Forward activations (floats) of one job's step, counted for stacked execution only (the
        activation budget and the side-by-side threshold were measured for it)."""
        if max_batch is None:
            device = task.data.x_train.device
            max_batch = default_max_batch(task.spec.numel, device, self.activations_per_job)
        self.max_batch = int(max_batch)
        self._pending: dict[BatchedHandle, None] = {}  # insertion-ordered set
        self.jobs_batched = 0
        """Jobs trained in stacks (not by the per-job loop)."""
        self.flushes = 0
        """How many times the pending set was trained."""
        self.largest_flush = 0
        """Most jobs trained in one flush."""
        self.stacks = 0
        """Stacks trained (one per batch-size bucket and chunk of a flush)."""
        self.train_seconds = 0.0
        """Real time spent training (for the overhead split)."""
        self.most_workers = 1
        """Most stacks trained side by side in one flush (CPU, several torch threads)."""

    @property
    def jobs_trained(self) -> int:
        return self.jobs_batched + self._sequential.jobs_trained

    @property
    def pending(self) -> int:
        """Jobs submitted and neither trained nor cancelled."""
        return len(self._pending)

    def submit(self, job: TrainJob) -> BatchedHandle:
        handle = BatchedHandle(self, job)
        self._pending[handle] = None
        return handle

    def _sample_losses(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``[b]``: ``task.sample_losses`` or ``task.loss`` on one-sample batches."""
        own = getattr(self.task, "sample_losses", None)
        if own is not None:
            return own(flat, x, y)
        loss = self.task.loss
        return vmap(lambda xi, yi: loss(flat, xi.unsqueeze(0), yi.unsqueeze(0)))(x, y)

    def _weighted_loss(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over a padded mini-batch: ``weight`` is 1/b on the b real samples, 0 after."""
        return (self._sample_losses(flat, x, y) * weight).sum()

    def _discard(self, handle: BatchedHandle) -> bool:
        return self._pending.pop(handle, False) is None

    def flush(self) -> None:
        """Train every pending job now."""
        handles = list(self._pending)
        self._pending.clear()
        if not handles:
            return
        self.flushes += 1
        self.largest_flush = max(self.largest_flush, len(handles))
        started = time.perf_counter()
        if len(handles) * self.task.spec.numel * 4 >= TRIM_MIN_BYTES:
            # The results of earlier flushes have mostly been consumed: hand their freed heap
            # pages back before this flush allocates its stacks (peak RSS, not only reuse).
            release_free_memory()
        try:
            stacked_groups = []
            for members in self._groups(handles):
                if len(members) <= self.sequential_max:
                    for h, _ in members:
                        h._result = self._sequential.train(h.job)
                        h.job = None  # release the start vector (see _train_chunk)
                    continue
                # Longest first: at every step the clients still training are a prefix.
                members.sort(key=lambda m: -m[1])
                stacked_groups.append([h for h, _ in members])
            self._train_chunks(*self._plan(stacked_groups))
        except BaseException:
            # Keep what was not trained pending, so a later result() can try again.
            for h in handles:
                if h._result is None and not h._cancelled:
                    self._pending[h] = None
            raise
        finally:
            self.train_seconds += time.perf_counter() - started

    def _workers(self, device: torch.device) -> int:
        """Stacks trained side by side: one per torch thread on a CPU with stacked execution, else
        one (vmap goes through ``functional_call``, which is not thread-safe on a shared module)."""
        if not self.parallel_stacks or self._stacked is None or device.type != "cpu":
            return 1
        return torch.get_num_threads()

    def _plan(self, groups: list[list[BatchedHandle]]) -> tuple[list[list[BatchedHandle]], int]:
        """The stacks of this flush and how many train side by side.

        Stacks hold at most ``max_batch`` jobs. With several workers, each group is cut into equal
        stacks whose number is a multiple of the workers (so none idles), but only if a stack
        still carries enough work: below :data:`PARALLEL_MIN_FLOATS` of activations per step, the
        Python side of each operation (which holds the GIL) dominates, and one stack at a time
        on all threads is faster (measured: digits MLP, 2 threads, docs/performance.md).
        """
        workers = self._workers(groups[0][0].job.start.device) if groups else 1
        if workers > 1:
            chunks = [c for g in groups for c in _cut(g, self.max_batch, workers)]
            mean_jobs = sum(map(len, chunks)) / len(chunks)
            enough = mean_jobs * self.activations_per_job >= self.parallel_min_floats
            if enough and len(chunks) > 1:
                return chunks, min(workers, len(chunks))
        return [c for g in groups for c in _cut(g, self.max_batch, 1)], 1

    def _train_chunks(self, chunks: list[list[BatchedHandle]], workers: int) -> None:
        """Train the stacks, ``workers`` of them side by side.

        Small stacks use a core poorly through intra-op threads, so with ``T`` threads, ``T``
        workers each train whole stacks on one thread (torch releases the GIL inside its
        kernels). A stack's result does not depend on where it ran.
        """
        threads = torch.get_num_threads()
        if workers <= 1:
            for chunk in chunks:
                self._train_chunk(chunk)
        else:
            self.most_workers = max(self.most_workers, workers)
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    for _ in pool.map(self._train_chunk, chunks):
                        pass
            finally:
                torch.set_num_threads(threads)
        self.jobs_batched += sum(len(chunk) for chunk in chunks)
        self.stacks += len(chunks)

    def _groups(self, handles: list[BatchedHandle]) -> list[list[tuple[BatchedHandle, int]]]:
        """Jobs that share a stack, each with its number of local steps.

        Buckets of the padding policy; with ``pow2``, a bucket of fewer than ``min_stack`` jobs is
        padded further, into the next larger bucket (one stack costs about as much as a few jobs).
        """
        task, batch = self.task, self.task.config.batch_size
        by_kind: dict[tuple, dict[int, list[tuple[BatchedHandle, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for h in handles:
            client, start = h.job.client, h.job.start
            width = _bucket(task.batch_width(client), batch, self.pad)
            by_kind[(start.device, start.dtype)][width].append((h, task.steps_for(client)))
        groups = []
        for buckets in by_kind.values():
            widths = sorted(buckets)
            carry: list[tuple[BatchedHandle, int]] = []
            for j, width in enumerate(widths):
                carry += buckets[width]
                if self.pad == "pow2" and len(carry) < self.min_stack and j + 1 < len(widths):
                    continue
                groups.append(carry)
                carry = []
        return groups

    def _grads(
        self,
        w: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        padding: tuple[list[int], torch.Tensor] | None,
    ) -> torch.Tensor:
        """Gradients ``[k, d]`` of each client's mean loss on its mini-batch.

        ``padding`` is None when no mini-batch is padded, else each client's real size ``b[i]`` (the
        first ``b[i]`` of its ``x[i]``) and the weights ``[n, width]`` of :meth:`_weighted_loss`.
        """
        k = len(w)
        if self._stacked is not None:
            # Even for one or two clients: as fast as a plain loop, and thread-safe (no
            # functional_call, which swaps the shared module's parameters while it runs).
            weight = None if padding is None else padding[1][:k]
            return stacked_grads(self._stacked, self.task.loss_fn, w, x, y, weight)
        if k <= self.sequential_max:
            grad_of = self._sequential._grad
            if padding is None:
                return torch.stack([grad_of(w[i], x[i], y[i]) for i in range(k)])
            b = padding[0]
            return torch.stack([grad_of(w[i], x[i, : b[i]], y[i, : b[i]]) for i in range(k)])
        if padding is None:
            return self._vgrad(w, x, y)
        return self._vgrad_masked(w, x, y, padding[1][:k])

    def _train_chunk(self, handles: list[BatchedHandle]) -> None:
        """Train jobs of one batch-size bucket, sorted by steps (descending), in one stack."""
        optimizer = self.task.optimizer
        data = self.task.data
        device = handles[0].job.start.device
        schedules = [self.task.batches(h.job) for h in handles]  # [steps_i, b_i] each
        steps = np.array([rows.shape[0] for rows in schedules])
        sizes = [rows.shape[1] for rows in schedules]
        n, t_max, width = len(handles), int(steps[0]), max(sizes)
        index = np.zeros((n, t_max, width), dtype=np.int64)
        for i, rows in enumerate(schedules):
            index[i, : rows.shape[0], : rows.shape[1]] = rows
            index[i, :, rows.shape[1] :] = index[i, :, :1]  # padding: any valid row, weight 0
        index_t = torch.as_tensor(index, device=device)  # the only host-to-device copies
        padding = None
        if min(sizes) < width:
            weight = np.zeros((n, width), dtype=np.float64)
            for i, bi in enumerate(sizes):
                weight[i, :bi] = 1.0 / bi
            dtype = handles[0].job.start.dtype
            padding = (sizes, torch.as_tensor(weight, dtype=dtype, device=device))
        # active[t] = number of jobs with more than t steps (a prefix, as steps are sorted).
        active = (steps[None, :] > np.arange(t_max)[:, None]).sum(1).tolist()
        w = torch.stack([h.job.start for h in handles]).detach()  # stack copies: starts untouched
        state: dict[str, torch.Tensor] = {}  # the jobs' optimiser state, a row per job
        x_all, y_all = data.x_train, data.y_train
        flip = None
        if any(h.job.flip_labels for h in handles):
            flip = torch.tensor([h.job.flip_labels for h in handles], device=device)
            top = data.info.n_classes - 1
        for t in range(t_max):
            k = active[t]
            rows = index_t[:k, t]
            wk = w[:k]
            y = y_all[rows]
            if flip is not None:
                y = torch.where(flip[:k, None], top - y, y)
            g = self._grads(wk, x_all[rows], y, padding)
            optimizer.step(wk, g, state, t, k)  # in place: w is this flush's own stack
        # Own copies: a view would keep the whole [n, d] stack alive until its last job arrives.
        # The handle also lets go of its TrainJob: the start vector is kept only where the
        # algorithm asked for it (``Job.start``, for updates Δ = w_end − w_start).
        for h, w_end in zip(handles, w.unbind(0), strict=True):
            h._result = w_end.clone()
            h.job = None
        del w, state


class AutoTrainer(BatchedTrainer):
    """Batched when more than one job is pending; a single job takes the plain per-client loop.

    Measured on this project's CPUs (``benchmarks/bench_trainer.py``): with stacked execution, one
    job trains as fast either way (0.96–1.02×) and two jobs 1.5–1.6× faster batched; with vmap, the
    loop was 3× faster for one job. A model on the vmap path also takes the loop whenever a stack
    is down to one client.
    """

    def __init__(
        self,
        task: LocalTask,
        max_batch: int | None = 1024,
        sequential_max: int = 1,
        pad: PadPolicy = "pow2",
        stacked: bool = True,
    ) -> None:
        super().__init__(
            task, max_batch=max_batch, sequential_max=sequential_max, pad=pad, stacked=stacked
        )


STACK_BUDGET_CPU = 256 * 2**20
"""Bytes the per-step stacks (parameters, gradients, momentum, update) may take on a CPU."""

ACTIVATION_BUDGET_CPU = 6 * 2**20
"""Bytes of forward activations one stack may produce on a CPU. Stacks about this size keep a
step's working set in cache: measured best for both the digits MLP (~200 jobs) and CNN (~20
jobs), 1.1-1.3x faster than one stack of all pending jobs (docs/performance.md)."""


def activation_floats(module: nn.Module, sample: torch.Tensor, batch: int) -> int:
    """Elements that the model's layers output for one mini-batch of ``batch`` samples shaped like
    ``sample``: counted on one sample with zero parameters on the CPU (every layer's output grows
    linearly with the batch), which costs about a millisecond. 0 if the model cannot run that way."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        x = torch.zeros((1, *sample.shape), dtype=sample.dtype)
        params = {name: torch.zeros(p.shape) for name, p in module.named_parameters()}
        with torch.no_grad():
            functional_call(module, params, (x,))
    except (RuntimeError, NotImplementedError):
        return 0  # fall back to the parameter budget alone
    finally:
        for hook in hooks:
            hook.remove()
    return total * batch


def _activations_per_job(task: LocalTask) -> int:
    x = task.data.x_train
    return activation_floats(task.module, x[0], task.config.batch_size) if len(x) else 0


def default_max_batch(
    numel: int, device: torch.device | str = "cpu", activations_per_job: int = 0
) -> int:
    """Jobs per vectorised stack.

    On a CPU, ~4 ``[n, d]`` float32 stacks must fit :data:`STACK_BUDGET_CPU`, or a quarter of the
    available memory if that is less, and the stack's forward activations (``activations_per_job``
    floats each) :data:`ACTIVATION_BUDGET_CPU`; on a GPU, which wants wide stacks, a quarter of the
    free memory bounds the parameter stacks. The result is clamped to [8, 1024] (batching gains
    level off well before 1024 jobs).
    """
    if torch.device(device).type == "cuda":
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(min(1024, max(8, free // 4 // (16 * max(numel, 1)))))
    budget = STACK_BUDGET_CPU
    available = available_memory_bytes()
    if available is not None:
        budget = min(budget, available // 4)
    jobs = budget // (16 * max(numel, 1))
    if activations_per_job:
        jobs = min(jobs, ACTIVATION_BUDGET_CPU // (4 * activations_per_job))
    return int(min(1024, max(8, jobs)))


def make_trainer(
    task: LocalTask, backend: str, *, max_batch: int | None = None, pad: PadPolicy = "pow2"
) -> SequentialTrainer | BatchedTrainer:
    """The trainer for ``training.backend``: ``sequential``, ``batched`` or ``auto``.

    ``max_batch`` None: chosen by the trainer from the model size, its activations and free
    memory (:func:`default_max_batch`).
    """
    if backend == "sequential":
        return SequentialTrainer(task)
    if backend == "batched":
        return BatchedTrainer(task, max_batch=max_batch, pad=pad)
    if backend == "auto":
        return AutoTrainer(task, max_batch=max_batch, pad=pad)
    raise ValueError(f"unknown training backend {backend!r}; expected one of {', '.join(BACKENDS)}")
