"""The Ray backend of sweeps: the same cells, run as tasks on a local Ray cluster.

Ray is an optional dependency (``pip install "fedsim[ray]"``). A cluster that is already running
(``ray.init`` called by the user) is used as it is; otherwise one with ``jobs`` CPUs is started for
the sweep and shut down after it. Each task runs :func:`fedsim.sweep.run_cell`, exactly what the
local backend runs, so the results are the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from fedsim.errors import ScenarioError

if TYPE_CHECKING:
    from fedsim.sweep import Cell, Done, Task


def require_ray() -> ModuleType:
    """The ``ray`` module, or a ScenarioError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ScenarioError(
            "--backend ray needs ray: pip install 'fedsim[ray]' (or \"ray>=2.9\")"
        ) from None
    return ray


def run_on_ray(tasks: Sequence[tuple[Cell, Task]], jobs: int, done: Done) -> None:
    """Run ``tasks`` as Ray tasks of one CPU each, calling ``done`` as each one ends."""
    from fedsim.sweep import run_cell

    ray = require_ray()

    if not tasks:
        return
    started = not ray.is_initialized()
    if started:
        # Leave CUDA_VISIBLE_DEVICES alone in tasks that ask for no GPU (Ray's future default), so a
        # cell sees the same devices as under the local backend.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        ray.init(
            num_cpus=jobs,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_cell)
        pending = {remote.remote(*task): cell for cell, task in tasks}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                cell = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # the worker's error, reported by the sweep
                    done(cell, exc)
                else:
                    done(cell, None)
    finally:
        if started:
            ray.shutdown()
