"""How many torch (intra-op) threads a run uses: asked for, or chosen from the workload.

Most fedsim runs train tiny per-client models: a digits-MLP step is a few thousand floats of
activations, far below what PyTorch splits over threads with any gain. Extra intra-op threads
then only add synchronisation, and on a CPU shared with another busy process they wait on each
other at every parallel region: the Flower-comparison FedAvg workload (sequential backend) took
113-134 s with torch's default two threads next to one busy process on two cores, 17 s with one
(issue 16; ``benchmarks/bench_threads.py`` and docs/performance.md measure every shipped scenario).

The one place where fedsim has measured a second thread to pay is the batched trainer's
side-by-side stacks (:mod:`fedsim.learning.batched`): when a flush's stacks each carry at least
:data:`~fedsim.learning.batched.PARALLEL_MIN_FLOATS` of activations per step, it trains ``T``
stacks at once in ``T`` worker threads, one torch thread each (``T`` = the torch thread count);
the digits CNN at 100 pending jobs goes from 3.1× to 5.2× the plain loop. So :func:`choose_threads`
gives a run all available cores only when its flushes are expected to be that large, and one
thread otherwise:

1. ``requested`` (``--threads N``, ``fedsim.run(..., threads=N)``) wins; then the environment
   variable ``FEDSIM_THREADS``; both must be positive integers (``FEDSIM_THREADS=auto`` or empty:
   choose automatically).
2. ``auto``: one thread for a timing-only run (``training: none``), for training on a CUDA device
   (the CPU only launches kernels), where only one core is available, and for the ``sequential``
   backend (one small job at a time). For ``batched`` and ``auto`` backends the largest flush is
   estimated from the algorithm (``concurrency``, or FedAvg's ``cohort_size`` with over-selection,
   else every client), at most ``clients.count``, times the activations of one job's step
   (:func:`~fedsim.learning.batched.activation_floats`, counted on the meta-built model in about a
   millisecond, without loading data); multi-task scenarios take their largest task. More than
   one thread only if that flush can be cut into at least two stacks of ``PARALLEL_MIN_FLOATS``
   each (so the trainer runs them side by side) *and* at least two cores are idle right now
   (:func:`busy_cores`): ``T = min(idle cores, flush floats // PARALLEL_MIN_FLOATS)``.

Why the idle-core test: next to other busy processes even that stacked work loses with a second
thread (the parts of a run outside the stacks still use intra-op threads, whose teams wait for a
descheduled member). A wrong "1" costs at most the side-by-side gain (≤ 1.7× measured); a wrong
"all cores" on a busy CPU cost 1.5-7×. A competitor that starts after the choice is not seen.

:func:`using_threads` applies a choice around a run and restores the previous count afterwards.

>>> from fedsim.scenario import load_scenario
>>> choose_threads(load_scenario({"training": "none"}), None, env={}).threads
1
>>> choose_threads(load_scenario({}), 3, env={"FEDSIM_THREADS": "2"})
ThreadChoice(threads=3, source='--threads', reason='asked for with --threads 3')
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.errors import ScenarioError

if TYPE_CHECKING:
    import torch

    from fedsim.scenario import Scenario

ENV_VAR = "FEDSIM_THREADS"
"""Environment variable naming the torch thread count (a positive integer, or ``auto``)."""

SOURCES = ("--threads", ENV_VAR, "auto")


@dataclass(frozen=True)
class ThreadChoice:
    """A run's torch thread count, where it came from and why.

    ``source`` is ``--threads`` (asked for by the caller), ``FEDSIM_THREADS`` (the environment) or
    ``auto`` (:func:`choose_threads` decided from the workload); ``reason`` is one line for
    people reading ``summary.json``.
    """

    threads: int
    source: str
    reason: str

    def to_summary(self) -> dict[str, Any]:
        """The ``threads`` entry of ``summary.json``: ``{"n": ..., "source": ..., "reason": ...}``."""
        return {"n": self.threads, "source": self.source, "reason": self.reason}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores(samples: int = 5) -> float:
    """Cores kept busy by other threads right now: the runnable threads of the whole machine
    (``/proc/loadavg``), less the one reading it, median of a few samples 1 ms apart (about 5 ms).
    Without ``/proc``: the 1-minute load average (which may count this process too: it errs
    towards fewer threads), else 0."""
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(0.001)
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    return float(max(0.0, statistics.median(counts)))


def _positive(value: Any, name: str) -> int:
    """``value`` as a positive int, else a one-line :class:`ScenarioError` naming ``name``."""
    shown = repr(value)
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isdigit() else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScenarioError(f"{name} must be a positive integer (torch threads), got {shown}")
    return value


def choose_threads(
    scenario: Scenario,
    requested: int | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    available: int | None = None,
    device: str | torch.device | None = None,
    busy: float | Callable[[], float] = busy_cores,
) -> ThreadChoice:
    """The torch thread count for running ``scenario`` (see the module docstring for the policy).

    ``requested``: the caller's ``--threads`` (None: not given). ``env``: where ``FEDSIM_THREADS``
    is looked up. ``available``: usable cores (None: :func:`available_cores`). ``device``: the
    run's device (None or ``auto``: CUDA if available, as the simulation resolves it). ``busy``:
    cores kept busy by other processes, or a function measuring it (:func:`busy_cores`, called
    only when the workload is large enough for it to matter). Raises :class:`ScenarioError` (one
    line naming the flag or variable) for a value that is not a positive integer. Pure given its
    arguments; costs about a millisecond per model.
    """
    if requested is not None:
        n = _positive(requested, "--threads")
        return ThreadChoice(n, "--threads", f"asked for with --threads {n}")
    raw = env.get(ENV_VAR)
    if raw is not None and raw.strip() and raw.strip().lower() != "auto":
        n = _positive(raw, ENV_VAR)
        return ThreadChoice(n, ENV_VAR, f"asked for with {ENV_VAR}={n}")
    cores = available_cores() if available is None else _positive(available, "available")
    n, reason = _auto(scenario, cores, device, busy)
    return ThreadChoice(n, "auto", reason)


def _auto(
    scenario: Scenario, cores: int, device: Any, busy: float | Callable[[], float]
) -> tuple[int, str]:
    if scenario.training is None:
        return 1, "timing-only run (training: none): no tensor work to share"
    if _is_cuda(device):
        return 1, "training on CUDA: the CPU only launches kernels"
    if cores == 1:
        return 1, "one CPU core available"
    from fedsim.learning.batched import PARALLEL_MIN_FLOATS

    largest = 0
    for training, floats, jobs in _workloads(scenario):
        if training.backend != "sequential":  # sequential: one small job at a time
            largest = max(largest, floats * jobs)
    if largest == 0:
        return 1, "sequential backend: one small job at a time gains nothing from more threads"
    work = f"~{_millions(largest)}M activation floats per step of the largest flush"
    stacks = min(cores, largest // PARALLEL_MIN_FLOATS)
    if stacks < 2:
        return 1, (
            f"small per-step work ({work}, < {_millions(2 * PARALLEL_MIN_FLOATS)}M for two "
            "stacks side by side): extra threads only wait on each other"
        )
    others = busy() if callable(busy) else float(busy)
    idle = min(stacks, math.floor(cores - others + 0.5))
    if idle < 2:
        return 1, (
            f"large stacked work ({work}), but other processes keep {others:g} threads "
            f"runnable on {cores} cores: threads would wait on each other"
        )
    return idle, f"large stacked work ({work}): {idle} stacks train side by side, one thread each"


def _millions(floats: float) -> str:
    return f"{floats / 1e6:.2g}"


def _is_cuda(device: Any) -> bool:
    if device is None or str(device) == "auto":
        import torch

        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def _workloads(scenario: Scenario) -> Iterator[tuple[Any, int, int]]:
    """``(training, activation floats of one job's step, most jobs in one flush)`` per task."""
    algo = scenario.algorithm
    jobs = _flush_jobs(scenario)
    tasks = getattr(algo, "tasks", None) or [None]
    for task in tasks:
        training = getattr(task, "training", None) or scenario.training
        data = getattr(task, "data", None) or scenario.data
        model = getattr(task, "model", None) or scenario.model
        if training is None:
            continue
        yield training, _step_floats(data, model, training.batch_size), jobs


def _flush_jobs(scenario: Scenario) -> int:
    """An upper bound on the jobs pending at one flush: the jobs the algorithm keeps in flight."""
    algo = scenario.algorithm
    clients = scenario.clients.count
    concurrency = getattr(algo, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 0:
        return min(clients, concurrency)
    cohort = getattr(algo, "cohort_size", None)
    if isinstance(cohort, int) and cohort > 0:
        over = getattr(algo, "over_selection", 0.0) or 0.0
        return min(clients, math.ceil(cohort * (1.0 + over)))
    return clients


def _step_floats(data: Any, model: Any, batch: int) -> int:
    """Forward activations of one job's step (0 if the model cannot be counted)."""
    import torch

    from fedsim.learning.batched import activation_floats
    from fedsim.learning.data import dataset_info
    from fedsim.learning.models import build_model

    info = dataset_info(data)
    module, _spec = build_model(model, info)
    dtype = torch.long if info.vocab_size is not None else torch.float32
    return activation_floats(module, torch.zeros(info.input_shape, dtype=dtype), batch)


@contextmanager
def using_threads(choice: ThreadChoice | int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(choice)``, then restore the previous count.

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with using_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    import torch

    n = choice.threads if isinstance(choice, ThreadChoice) else _positive(choice, "threads")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)
