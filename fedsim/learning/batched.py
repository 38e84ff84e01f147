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

from fedsim.imports import describe_error
from fedsim.learning.memory import available_memory_bytes, release_free_memory
from fedsim.learning.stacked import stack_model, stacked_grads
from fedsim.learning.trainer import LocalTask, SequentialTrainer, TrainingPath, TrainJob

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
        self.training_path = TrainingPath(
            "batched",
            "stacked" if self._stacked is not None else "vmap",
            "constructed directly" + ("" if self._stacked is not None else " with stacked=False"),
        )
        """How jobs train and why (set by :func:`make_trainer`)."""
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
        if optimizer.proximal_mu:
            optimizer.begin(state, w.clone())  # w is stepped in place: the anchor is a copy
        if any(h.job.correction is not None for h in handles):
            optimizer.correct(state, _stacked_corrections(handles, w))
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


def _stacked_corrections(handles: list[BatchedHandle], like: torch.Tensor) -> torch.Tensor:
    """The jobs' gradient corrections as rows ``[n, d]`` in stack order (zeros for a job without
    one)."""
    zeros = None
    rows = []
    for h in handles:
        if h.job.correction is None:
            if zeros is None:
                zeros = torch.zeros_like(like[0])
            rows.append(zeros)
        else:
            rows.append(h.job.correction)
    return torch.stack(rows)


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


PROBE_RTOL = 1e-4
PROBE_ATOL = 1e-5
"""Tolerance of the probes that compare vmap's gradients and a batch's outputs with the loop's."""


def _names(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _loop_reason(task: LocalTask) -> str | None:
    """Why the model must train one job at a time, from its structure; None: it may not have to."""
    if task.spec.buffers:
        return (
            f"the model has buffers ({_names(list(task.spec.buffers))}): each job's forward "
            "passes update them, one job at a time"
        )
    for name, layer in task.module.named_modules():
        kind = type(layer).__name__
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            return (
                f"layer {name} ({kind}) couples the samples of a mini-batch, which padded stacks "
                "would change"
            )
        if isinstance(layer, nn.modules.dropout._DropoutNd) and layer.p > 0:
            return (
                f"layer {name} ({kind}) draws random numbers: the loop draws them from each "
                "job's own seed, the same on every backend"
            )
    return None


def _probe_sample(task: LocalTask) -> tuple[torch.Tensor, torch.Tensor]:
    """Two samples of the dataset's shape drawn from a fixed seed (not the data: the path must
    not depend on it, and ``fedsim validate`` does not load it), with two different labels."""
    info, device = task.data.info, task.data.x_train.device
    shape = (2, *info.input_shape)
    g = torch.Generator().manual_seed(0)
    if info.vocab_size is not None:
        x = torch.randint(0, info.vocab_size, shape, generator=g)
    else:
        x = torch.randn(shape, generator=g)
    if info.task == "classification":
        y = torch.tensor([0, info.n_classes - 1])
    else:
        y = torch.tensor([0.5, -0.5])
    return x.to(device), y.to(device)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=PROBE_RTOL, atol=PROBE_ATOL))


def probe_vmap(trainer: BatchedTrainer) -> str | None:
    """Run the vmap path once on two samples and two clients and compare it with the loop: the
    outputs of a batch of two samples with each sample's own, the vmapped gradients (plain and
    padded) with per-client autograd. The cause as one line when it fails; None when it is
    exact."""
    task = trainer.task
    x, y = _probe_sample(task)
    device = x.device
    flat = task.spec.init(torch.Generator().manual_seed(0)) if task.spec.init else None
    if flat is None:
        flat = torch.zeros(task.spec.numel)
    flat = flat.to(device)
    try:
        w = torch.stack([flat, flat.flip(0) * 0.5])
        xs, ys = torch.stack([x, x.flip(0)]), torch.stack([y, y.flip(0)])
        vmapped = trainer._vgrad(w, xs, ys)  # first: an operation vmap cannot take raises here
        with torch.no_grad():
            both = functional_call(task.module, task.spec.views(flat), (x,))
            each = torch.cat(
                [
                    functional_call(task.module, task.spec.views(flat), (x[i : i + 1],))
                    for i in (0, 1)
                ]
            )
        if not _close(both, each):
            return (
                "the output of a sample depends on the other samples of its mini-batch, which "
                "padded stacks would change"
            )
        loop = torch.stack([trainer._sequential._grad(w[i], xs[i], ys[i]) for i in (0, 1)])
        if not _close(vmapped, loop):
            return "vmap's gradients differ from the per-client loop's"
        weight = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=flat.dtype, device=device)
        short = trainer._sequential._grad(w[1], xs[1, :1], ys[1, :1])
        padded = trainer._vgrad_masked(w, xs, ys, weight)
        if not (_close(padded[0], loop[0]) and _close(padded[1], short)):
            return "vmap's gradients on a padded mini-batch differ from the per-client loop's"
    except Exception as exc:  # any operation vmap (or its per-sample losses) cannot take
        return f"vmap cannot run it: {describe_error(exc)}"
    return None


def choose_path(task: LocalTask, backend: str) -> TrainingPath:
    """The fastest path that is still exact for ``task``'s model (see :class:`TrainingPath`).

    The built-in models stack; a module without buffers, randomness or batch-coupled layers takes
    vmap if a probe on two samples gives the loop's gradients; anything else trains one job at a
    time. Used by :func:`make_trainer`, and by ``fedsim validate`` through
    :func:`fedsim.learning.models.check_model`.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown training backend {backend!r}; expected one of {', '.join(BACKENDS)}"
        )
    return _choose(task, backend)


def _choose(task: LocalTask, backend: str) -> TrainingPath:
    if backend == "sequential":
        reason = "training.backend is sequential: one job at a time (the reference)"
        return TrainingPath(backend, "loop", reason)
    why = _loop_reason(task)
    if why is not None:
        return TrainingPath(backend, "loop", why)
    if stack_model(task.module, task.spec) is not None:
        reason = (
            "every layer has a stacked form: one grouped forward and backward pass for all "
            "pending jobs"
        )
        return TrainingPath(backend, "stacked", reason)
    failed = probe_vmap(BatchedTrainer(task, stacked=False))
    if failed is not None:
        return TrainingPath(backend, "loop", failed)
    reason = (
        "a pure function of its parameters (no buffers, no randomness; a probe on two samples "
        "matched the loop): torch.func.vmap over the stacked jobs"
    )
    return TrainingPath(backend, "vmap", reason)


class _ProbeData:
    """What :func:`choose_path` reads of a dataset, for ``fedsim validate`` (nothing loaded)."""

    def __init__(self, info) -> None:
        self.info = info
        self.x_train = torch.zeros(0)


def check_model(scenario, data=None) -> tuple[int, TrainingPath | None]:
    """Build the scenario's model as a run would (a one-line ScenarioError where it is wrong) and
    return the bytes of one copy and, when it trains, the path :func:`choose_path` picks for it.
    ``data``: the arrays passed to ``fedsim.run(data=...)``, if any. A timing-only run of a
    built-in model builds nothing (0 bytes, as it needs no memory for it)."""
    from fedsim.learning.data import dataset_info
    from fedsim.learning.models import USER_MODELS, build_model

    if scenario.training is None and scenario.model.kind not in USER_MODELS:
        return 0, None
    info = dataset_info(scenario.data, data)
    module, spec = build_model(scenario.model, info)
    if scenario.training is None:
        return int(spec.nbytes()), None
    task = LocalTask(module, spec, _ProbeData(info), scenario.training)  # type: ignore[arg-type]
    return int(spec.nbytes()), choose_path(task, scenario.training.backend)


def make_trainer(
    task: LocalTask, backend: str, *, max_batch: int | None = None, pad: PadPolicy = "pow2"
) -> SequentialTrainer | BatchedTrainer:
    """The trainer for ``training.backend``: ``sequential``, ``batched`` or ``auto``, on the path
    :func:`choose_path` picks (``trainer.training_path`` says which and why).

    ``max_batch`` None: chosen by the trainer from the model size, its activations and free
    memory (:func:`default_max_batch`).
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown training backend {backend!r}; expected one of {', '.join(BACKENDS)}"
        )
    path = _choose(task, backend)
    trainer: SequentialTrainer | BatchedTrainer
    if path.path == "loop":
        trainer = SequentialTrainer(task)
    elif backend == "batched":
        trainer = BatchedTrainer(task, max_batch=max_batch, pad=pad, stacked=path.path == "stacked")
    else:
        trainer = AutoTrainer(task, max_batch=max_batch, pad=pad, stacked=path.path == "stacked")
    trainer.training_path = path
    return trainer
