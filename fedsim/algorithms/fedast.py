"""FedAST (Askin et al., UAI 2024): several tasks trained at once, asynchronously, with Realloc.

Each task ``m`` keeps ``a_m`` requests (jobs) in flight out of a target ``R_m``; the targets share
the busy-client budget ``R_tot = concurrency``. Arrivals go to the task's buffer ``B_m``; when
``|B_m| ≥ b_m`` the server steps ``w_m ← w_m + η_g · mean(B_m)`` (no staleness weighting: staleness
is kept in check by ``b_m = max(1, ⌈a_m/ρ⌉)``). After an arrival the task asks for
``min(R_m − a_m, R_tot − Σa, 2)`` new requests. Realloc (``realloc: true``) estimates each task's
update dispersion over its last ``window`` deltas and, every ``⌊3 R_tot/4⌋ · (#unfinished)``
arrivals, sets ``R_m`` in proportion to the mean dispersion (chunks of ρ, at least ρ each). A task
that reaches its target is finished: its jobs are cancelled and its ``R_m`` goes to the others.
The run stops when every task is finished (``stop_reason: target_accuracy``).

Requests only go to idle clients (no per-client FIFO queue as in the authors' code), so
``concurrency`` is both the request budget and the number of busy clients. Details and the choices
made where the paper is unclear: ``docs/algorithms/fedast.md``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from fedsim.algorithms.context import AlgorithmContext
from fedsim.algorithms.multitask import (
    MultiTaskAlgorithm,
    TaskConfig,
    TaskState,
    check_multitask_scenario,
    check_tasks,
)
from fedsim.algorithms.realloc import dispersion, reallocate, split_proportional
from fedsim.checks import at_most_clients
from fedsim.clients import Job
from fedsim.config_base import Section


class FedAstConfig(Section):
    """Federated asynchronous simultaneous training of several tasks (FedAST)."""

    takes_server_optimizer: ClassVar[bool] = True
    """Its server steps go through ``server_optimizer`` (see fedsim.algorithms.server_opt)."""

    json_shorthands: ClassVar[dict[str, Any]] = {
        "dispatch_policy": {"const": "on_arrival"}
    }  # see _alias
    name: Literal["fedast"] = "fedast"
    """Selects this variant."""
    tasks: list[TaskConfig] = Field(default_factory=list)
    """The tasks, each a mapping with keys name, data, model, training, target_accuracy (default
    0.8), target_loss, share (default 1), server_lr; a task's data/model/training left out mean the
    scenario's top-level sections. At least one task is required. See docs/algorithms/fedast.md."""
    concurrency: PositiveInt = 32
    """Busy-client budget R_tot: requests in flight over all tasks (at most clients.count)."""
    buffer_ratio: PositiveInt | None = 8
    """ρ = R/b: a task's buffer size is max(1, ceil(a_m/ρ)) for a_m requests in flight; also the
    chunk in which Realloc moves requests. null: use buffer_size."""
    buffer_size: PositiveInt | None = None
    """Fixed buffer size b for every task (1 = FedAST-NoBuffer); needs buffer_ratio: null."""
    realloc: bool = True
    """Move requests between tasks from their update dispersion (Realloc); false = fixed allocation
    (a finished task's requests still go to the others)."""
    window: int = Field(7, ge=2)
    """Last deltas of a task used for its dispersion statistic (the code keeps 8 slots and uses 7)."""
    realloc_every: PositiveInt | None = None
    """Arrivals (all tasks) between reallocations, per unfinished task; null: floor(3·R_tot/4)."""
    server_lr: PositiveFloat = 1.0
    """Server learning rate η_g (a task's server_lr overrides it)."""
    max_new_per_arrival: PositiveInt = 2
    """With dispatch_policy immediate: at most this many new requests per arrival (lets a task grow
    gradually after a reallocation)."""
    dispatch_policy: Literal["immediate", "after_aggregation"] = "immediate"
    """When a task's freed slots get new requests: after every arrival (the paper's code; the
    arrival's own aggregation comes first), or only after the task's next server step (then every
    free slot at once). (Alias: on_arrival = immediate.)"""
    test_every: PositiveInt = 1
    """Check a task's target after every this many of its server steps (the code's round_to_test)."""

    def check_scenario(self, scenario: Any) -> None:
        """Run by scenario validation: sections FedAST/Sync-ST cannot use, an empty task list."""
        check_multitask_scenario(self, scenario)
        at_most_clients(
            self.concurrency,
            scenario,
            "concurrency",
            f"{self.concurrency} requests in flight need that many clients",
        )

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("dispatch_policy") == "on_arrival":
            data = {**data, "dispatch_policy": "immediate"}
        return data

    @model_validator(mode="after")
    def _check(self) -> FedAstConfig:
        if (self.buffer_ratio is None) == (self.buffer_size is None):
            raise ValueError("set exactly one of buffer_ratio and buffer_size")
        n_tasks = check_tasks(self)
        if self.concurrency < self.unit * n_tasks:
            raise ValueError(
                f"concurrency ({self.concurrency}) must give each of the {n_tasks} tasks "
                f"at least {self.unit} requests ({'buffer_ratio' if self.buffer_ratio else 'buffer_size'})"
            )
        return self

    @property
    def unit(self) -> int:
        """Smallest allocation of an unfinished task, and Realloc's chunk."""
        return self.buffer_ratio if self.buffer_ratio is not None else self.buffer_size


class FedAst(MultiTaskAlgorithm):
    name = "fedast"
    config_class = FedAstConfig
    config: FedAstConfig

    def __init__(self, config: FedAstConfig, ctx: AlgorithmContext) -> None:
        super().__init__(config, ctx)
        n = len(self.tasks)
        minimum = 1 if config.buffer_size is None else config.buffer_size
        self.target = split_proportional(
            config.concurrency, [t.config.share for t in self.tasks], minimum=minimum
        )
        """R_m: requests each task should keep in flight."""
        self.active = [0] * n
        """a_m: requests of each task in flight."""
        self.buffers: list[list[tuple[Job, torch.Tensor]]] = [[] for _ in range(n)]
        self.buffer_size = [self._buffer_size(r) for r in self.target]
        self.windows: list[deque[torch.Tensor]] = [deque(maxlen=config.window) for _ in range(n)]
        self.samples: list[list[float]] = [[] for _ in range(n)]
        self.arrivals_since_realloc = 0
        self.allocations: list[tuple[float, tuple[int, ...]]] = [(0.0, tuple(self.target))]
        """(time, R_m per task) at the start, after every reallocation and every task completion."""
        self.mean_dispersion: list[tuple[float, tuple[float, ...]]] = []
        """(time, mean dispersion per task) used by each reallocation."""
        self.largest_buffer = [0] * n
        """Most deltas merged by one server step, per task (1 throughout: buffering never used)."""
        self.requests_moved = 0
        """Requests Realloc took from one task and gave another, summed over reallocations."""

    def _buffer_size(self, active: int) -> int:
        cfg = self.config
        if cfg.buffer_size is not None:
            return cfg.buffer_size
        return max(1, math.ceil(active / cfg.buffer_ratio))

    # -- the process -------------------------------------------------------------------------------
    def start(self) -> None:
        for task in self.tasks:
            self._replenish(task, None)

    def _replenish(self, task: TaskState, cap: int | None) -> None:
        """Ask for new requests of ``task`` up to ``R_m``, within the budget (and ``cap``)."""
        m = task.index
        if task.finished:
            return
        n = min(
            self.target[m] - self.active[m],
            self.config.concurrency - sum(self.active),
            len(self.pool.idle),
        )
        if cap is not None:
            n = min(n, cap)
        for _ in range(max(n, 0)):
            self.dispatch_task(task, self.pool.take_idle())
            self.active[m] += 1

    def on_arrival(self, job: Job) -> None:
        task = self.tasks[job.task]
        m = task.index
        self.active[m] -= 1
        stepped = False
        delta = self.delta(job)
        if delta is not None:
            self.record(job, "buffered")
            self._observe(task, delta)
            self.buffers[m].append((job, delta))
            if len(self.buffers[m]) >= self.buffer_size[m]:
                buffer, self.buffers[m] = self.buffers[m], []
                self.largest_buffer[m] = max(self.largest_buffer[m], len(buffer))
                self.server_step(task, [d for _, d in buffer])
                stepped = True
        self._refill(task, stepped)

    def on_dropped(self, job: Job) -> None:
        self.record(job, "dropped")
        task = self.tasks[job.task]
        self.active[task.index] -= 1
        self._refill(task, False)

    def _refill(self, task: TaskState, stepped: bool) -> None:
        cfg = self.config
        m = task.index
        if cfg.dispatch_policy == "immediate":
            self._replenish(task, cfg.max_new_per_arrival)
        elif stepped or self.active[m] == 0:  # nothing left in flight could fill the buffer
            self._replenish(task, None)
        self.buffer_size[m] = self._buffer_size(self.active[m])

    # -- Realloc -----------------------------------------------------------------------------------
    def _observe(self, task: TaskState, delta: torch.Tensor) -> None:
        """Dispersion bookkeeping of one accepted delta, and a reallocation when one is due."""
        cfg = self.config
        if not cfg.realloc:
            return
        window = self.windows[task.index]
        window.append(delta)
        if len(window) == cfg.window:
            value = dispersion(
                torch.stack(list(window)),
                task.weight_mask,
                local_lr=task.training.lr,
                server_lr=task.server_lr,
                local_steps=task.local_steps,
            )
            if math.isfinite(value):
                self.samples[task.index].append(value)
        self.arrivals_since_realloc += 1
        unfinished = [t for t in self.tasks if not t.finished]
        period = cfg.realloc_every or max(1, (3 * cfg.concurrency) // 4)
        if (
            self.arrivals_since_realloc >= period * len(unfinished)
            and min(t.server.version for t in unfinished) > cfg.window
            and all(self.samples[t.index] for t in unfinished)
        ):
            self._reallocate()

    def _reallocate(self) -> None:
        cfg = self.config
        active = [not t.finished for t in self.tasks]
        means = [
            sum(s) / len(s) if a and s else 0.0 for s, a in zip(self.samples, active, strict=True)
        ]
        self.samples = [[] for _ in self.tasks]
        self.arrivals_since_realloc = 0
        new = reallocate(means, cfg.concurrency, cfg.unit, active)
        if new is None:
            return
        self.requests_moved += sum(max(0, r - old) for r, old in zip(new, self.target, strict=True))
        self.target = new
        self.mean_dispersion.append((self.now, tuple(means)))
        self.allocations.append((self.now, tuple(new)))

    # -- completion --------------------------------------------------------------------------------
    def on_task_finished(self, task: TaskState) -> None:
        """Cancel the task's requests; hand its R_m to the others ∝ their R (and start them now)."""
        m = task.index
        self.cancel_task_jobs(task)
        self.active[m] = 0
        self.buffers[m] = []
        freed, self.target[m] = self.target[m], 0
        others = [self.target[t.index] if not t.finished else 0 for t in self.tasks]
        if sum(others) == 0:
            return
        extra = split_proportional(freed, others)
        self.target = [r + e for r, e in zip(self.target, extra, strict=True)]
        self.allocations.append((self.now, tuple(self.target)))
        for other in self.tasks:
            if not other.finished:
                self._replenish(other, None)
                self.buffer_size[other.index] = self._buffer_size(self.active[other.index])

    def summary_extra(self) -> dict[str, Any]:
        out = super().summary_extra()
        out["allocations"] = [{"time_s": t, "requests": list(r)} for t, r in self.allocations]
        out["largest_buffer"] = list(self.largest_buffer)
        out["requests_moved"] = self.requests_moved
        return out
