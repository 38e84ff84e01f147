"""The batched trainer: every pending job trained together, one vectorised step per local step.

``submit(job)`` only records the job. The first time any pending handle's result is asked for, the
trainer trains *all* pending jobs at once: start parameters stacked ``[n, d]``, each job's
mini-batches gathered from the device-resident training set by an index tensor ``[n, steps, b]``
built once from the jobs' own seeds (:meth:`LocalTask.batches`), and per local step one call of
``vmap(grad(task.loss))`` for every client still training. Because each job's batches come from
its own seed, a job's result does not depend on which other jobs it was batched with.

Jobs are grouped by mini-batch size ``b = min(batch_size, n_client)`` (a vmapped step needs equal
shapes) and, inside a group, ordered by number of local steps, longest first; at step ``t`` the
clients still training are then a prefix of the stack, so finished clients are neither computed nor
updated. Groups are cut into chunks of at most ``max_batch`` jobs to bound memory.

The optimiser is :class:`~fedsim.learning.trainer.SequentialTrainer`'s, per job: ``g += wd * w``;
momentum buffer ``= g`` at the first step, else ``mu * buf + g``; ``w -= lr * g``.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from torch.func import grad, vmap

from fedsim.learning.trainer import LocalTask, SequentialTrainer, TrainJob

BACKENDS = ("auto", "batched", "sequential")


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
                raise RuntimeError(f"job {self.job.job_id} was cancelled; it has no result")
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
    """Trains all pending jobs together with ``vmap(grad(loss))`` over stacked flat parameters.

    ``max_batch`` bounds how many jobs share one vectorised step (memory is about
    ``max_batch * (3 d + b * activations)`` floats). Whenever at most ``sequential_max`` clients are
    training, their gradients come from plain per-client autograd instead (for one or two clients
    that is faster than ``vmap``); a whole group of at most ``sequential_max`` jobs is trained by
    :class:`SequentialTrainer` itself. ``sequential_max=0`` always uses ``vmap``.
    """

    def __init__(self, task: LocalTask, max_batch: int = 1024, sequential_max: int = 0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.task = task
        self.max_batch = int(max_batch)
        self.sequential_max = int(sequential_max)
        self._sequential = SequentialTrainer(task)
        self._vgrad = vmap(grad(task.loss))
        self._pending: dict[BatchedHandle, None] = {}  # insertion-ordered set
        self.jobs_batched = 0
        """Jobs trained with vmapped steps."""
        self.flushes = 0
        """How many times the pending set was trained."""
        self.largest_flush = 0
        """Most jobs trained in one flush."""
        self.train_seconds = 0.0
        """Real time spent training (for the overhead split)."""

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
        try:
            groups: dict[tuple, list[tuple[BatchedHandle, np.ndarray]]] = defaultdict(list)
            for h in handles:
                rows = self.task.batches(h.job)
                start = h.job.start
                groups[(rows.shape[1], start.device, start.dtype)].append((h, rows))
            for members in groups.values():
                if len(members) <= self.sequential_max:
                    for h, _ in members:
                        h._result = self._sequential.train(h.job)
                    continue
                # Longest first: at every step the clients still training are a prefix.
                members.sort(key=lambda m: -m[1].shape[0])
                for i in range(0, len(members), self.max_batch):
                    self._train_chunk(members[i : i + self.max_batch])
        except BaseException:
            # Keep what was not trained pending, so a later result() can try again.
            for h in handles:
                if h._result is None and not h._cancelled:
                    self._pending[h] = None
            raise
        finally:
            self.train_seconds += time.perf_counter() - started

    def _grads(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(w) <= self.sequential_max:
            return torch.stack([self._sequential._grad(w[i], x[i], y[i]) for i in range(len(w))])
        return self._vgrad(w, x, y)

    def _train_chunk(self, members: list[tuple[BatchedHandle, np.ndarray]]) -> None:
        """Train jobs with equal batch size, sorted by steps (descending), in one stack."""
        cfg = self.task.config
        data = self.task.data
        first = members[0][0].job.start
        device = first.device
        steps = np.array([rows.shape[0] for _, rows in members])
        n, t_max, b = len(members), int(steps[0]), members[0][1].shape[1]
        index = np.zeros((n, t_max, b), dtype=np.int64)
        for i, (_, rows) in enumerate(members):
            index[i, : rows.shape[0]] = rows
        index_t = torch.as_tensor(index, device=device)
        # active[t] = number of jobs with more than t steps (a prefix, as steps are sorted).
        active = (steps[None, :] > np.arange(t_max)[:, None]).sum(1).tolist()
        w = torch.stack([h.job.start for h, _ in members]).detach().clone()
        buf: torch.Tensor | None = None
        x_all, y_all = data.x_train, data.y_train
        for t in range(t_max):
            k = active[t]
            rows = index_t[:k, t]
            wk = w[:k]
            g = self._grads(wk, x_all[rows], y_all[rows])
            if cfg.weight_decay:
                g = g + cfg.weight_decay * wk
            if cfg.momentum:
                buf = g if buf is None else cfg.momentum * buf[:k] + g
                g = buf
            w[:k] = wk - cfg.lr * g
        for (h, _), w_end in zip(members, w.unbind(0), strict=True):
            h._result = w_end
        self.jobs_batched += n


class AutoTrainer(BatchedTrainer):
    """Batched, except that one or two clients at a time take the plain per-client path.

    Measured on 2 CPU cores, ``vmap`` trains fewer updates/s than a loop for one pending job and more
    from a few on (see DESIGN.md and ``benchmarks/bench_trainer.py``).
    """

    def __init__(self, task: LocalTask, max_batch: int = 1024, sequential_max: int = 2) -> None:
        super().__init__(task, max_batch=max_batch, sequential_max=sequential_max)


def make_trainer(task: LocalTask, backend: str, *, max_batch: int = 1024):
    """The trainer for ``training.backend``: ``sequential``, ``batched`` or ``auto``."""
    if backend == "sequential":
        return SequentialTrainer(task)
    if backend == "batched":
        return BatchedTrainer(task, max_batch=max_batch)
    if backend == "auto":
        return AutoTrainer(task, max_batch=max_batch)
    raise ValueError(f"unknown training backend {backend!r}; expected one of {', '.join(BACKENDS)}")
