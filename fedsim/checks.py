"""Everything about a scenario that can be checked without training, so ``validate`` = ``run``.

Two layers: the cross-section rules of algorithm configs (``check_scenario``, run by scenario
validation, helpers here), and :func:`check_runnable`, which opens what a run would open (data file
headers, topology files, the model's size on the ``meta`` device) without loading it in full. Both
``fedsim validate`` and :class:`~fedsim.simulation.Simulation` call it, so a scenario that validates
does not fail in the same way when it runs.
"""

from __future__ import annotations

import os
from typing import Any

from fedsim.errors import ScenarioError

BYTES_PER_CLIENT = 256
"""Rough memory of one client's timing state and bookkeeping (arrays and the client pool)."""


def needs_topology(name: str, scenario: Any, *, one_client_each: bool = False) -> None:
    """A multi-server algorithm needs ``topology:`` (and, for peers, one client per server)."""
    topology = scenario.topology
    if topology is None:
        raise ScenarioError(
            f"algorithm {name} needs a topology: section (servers, graph, mixing)",
            path="topology",
        )
    if one_client_each and any(len(members) != 1 for members in topology.assignment()):
        raise ScenarioError(
            f"{name} peers train on their own data: every server needs exactly one client "
            "(clients_per_server: 1)",
            path="topology.clients_per_server",
        )


def at_most_clients(value: int, scenario: Any, key: str, what: str) -> None:
    """``value`` of ``algorithm.<key>`` needs that many distinct clients."""
    count = scenario.clients.count
    if value > count:
        raise ScenarioError(f"{what}, but clients.count is {count}", path=f"algorithm.{key}")


def memory_bytes() -> int | None:
    """Physical memory of this machine, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def check_memory(scenario: Any, model_bytes: int, available: int | None = None) -> None:
    """Refuse a run whose clients or model cannot fit in memory, saying how much they need."""
    available = memory_bytes() if available is None else available
    if available is None:
        return
    n = scenario.clients.count
    clients = n * BYTES_PER_CLIENT
    if clients > available:
        raise ScenarioError(
            f"{n:,} clients need about {_size(clients)} of memory for their state, more than "
            f"this machine's {_size(available)}",
            path="clients.count",
        )
    if scenario.training is not None:
        servers = scenario.topology.servers if scenario.topology is not None else 1
        copies = servers + 4  # each server's model, the start, a delta, the aggregate, optimiser
        if model_bytes * copies > available:
            raise ScenarioError(
                f"the model has {model_bytes // 4:,} parameters: {_size(model_bytes)} each copy, "
                f"about {_size(model_bytes * copies)} in all, more than this machine's "
                f"{_size(available)}",
                path="model",
            )


def model_nbytes(scenario: Any, data: Any = None) -> int:
    """Bytes of the scenario's model parameters, built on the ``meta`` device (nothing allocated).
    ``data``: the arrays passed to ``fedsim.run(data=...)``, if any."""
    import torch

    from fedsim.learning.data import dataset_info
    from fedsim.learning.models import build_model

    info = dataset_info(scenario.data, data)  # outside the meta device: it may read arrays
    with torch.device("meta"):
        _module, spec = build_model(scenario.model, info)
    return int(spec.nbytes())


def check_training_path(scenario: Any, data: Any = None) -> Any:
    """Build the scenario's model as the run would (your own: imported, called and probed with a
    forward pass on one sample; a one-line ScenarioError at ``model.target`` where it is wrong)
    and return how it will train: a :class:`~fedsim.learning.trainer.TrainingPath` (``path``,
    ``reason``; ``fedsim validate`` prints it), or None for a timing-only run."""
    from fedsim.learning.batched import check_model

    return check_model(scenario, data)[1]


def check_runnable(scenario: Any, data: Any = None) -> None:
    """Raise the ScenarioError the run would raise before its first event, without training.

    Checks the memory the clients and the model need, opens the dataset's files and reads their
    headers (sizes, shapes, label ranges; not the images), compares the training samples with the
    clients, draws the partition from the labels as the run will (a Dirichlet draw that leaves a
    client short fails here, not after the files are loaded), and builds the topology (graph and
    mixing files, connectivity). ``data`` is the :class:`fedsim.Dataset` passed to
    ``fedsim.run(data=...)``, if any (checked in its place).

    Each problem names ``FILE:LINE:`` of its key when the scenario was read from a file (or the
    ``--set`` that gave it), as validation errors do (:meth:`Scenario.locate_error`).
    """
    try:
        _check_runnable(scenario, data)
    except ScenarioError as exc:
        locate = getattr(scenario, "locate_error", None)
        raise (locate(exc) if locate is not None else exc) from None


def _check_runnable(scenario: Any, data: Any) -> None:
    from fedsim import checkpoint
    from fedsim.learning.data import check_data
    from fedsim.rng import SeedStreams

    checkpoint.check(scenario)

    check_training_path(scenario, data)
    check_memory(scenario, model_nbytes(scenario, data) if scenario.training is not None else 0)
    streams = SeedStreams(scenario.seed if scenario.seed is not None else 0)
    if scenario.training is not None:
        check_data(scenario.data, scenario.clients.count, data, streams=streams)
        _check_data_attack(scenario, data)
    _check_task_data(scenario, streams)
    from fedsim.world import build_servers

    build_servers(scenario, streams)  # as the run builds them (graph, mixing files, connectivity)


def _check_task_data(scenario: Any, streams: Any) -> None:
    """Each task of a multi-task algorithm (``algorithm.tasks``) needs a training section and a
    target its dataset can measure, and loads its own data with its own streams
    (:func:`fedsim.world.task_streams`): check it as its task will load it, the error at
    ``algorithm.tasks.<i>.data...`` when the task has its own data section."""
    from fedsim.algorithms.multitask import check_task_setup
    from fedsim.learning.data import check_data
    from fedsim.world import task_streams

    tasks = getattr(scenario.algorithm, "tasks", None) or []
    if tasks:
        check_task_setup(tasks, scenario)
    for i, task in enumerate(tasks):
        config = task.data if task.data is not None else scenario.data
        if i == 0 and config == scenario.data and scenario.training is not None:
            continue  # the run's own data, streams and partition: checked above
        try:
            check_data(config, scenario.clients.count, streams=task_streams(streams, i))
        except ScenarioError as exc:
            where = exc.path or "data"
            if task.data is not None and where.startswith("data"):
                where = f"algorithm.tasks.{i}.{where}"
            raise ScenarioError(exc.message, path=where, value=exc.value) from None


def _check_data_attack(scenario: Any, data: Any) -> None:
    """An attack on the training data (``label_flip``) needs class labels to flip."""
    from fedsim.learning.data import dataset_info

    byzantine = scenario.byzantine
    if byzantine is None or byzantine.attack.stage != "data":
        return
    if dataset_info(scenario.data, data).task != "classification":
        raise ScenarioError(
            f"{byzantine.attack.name} needs a classification dataset", path="byzantine.attack"
        )
