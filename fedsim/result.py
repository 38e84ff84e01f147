"""What a run produced, read from its directory: the traces, the summary and the facts of its world.

This module reads files only: figures (:mod:`fedsim.plots`) and analyses import it without the
simulation engine. The run's world (:mod:`fedsim.world`) writes the files of facts below.

Files of a run directory beside the traces (columns in the schemas):

- ``clients.parquet`` (:data:`CLIENTS_SCHEMA`): one row per client (per client and task in
  multi-task runs): what the run drew about it and how long it was online.
- ``availability.parquet`` (:data:`AVAILABILITY_SCHEMA`): every switch of a client online or
  offline, in time order (only when ``clients.availability`` is not ``always``).
- ``topology.parquet`` (:data:`TOPOLOGY_SCHEMA`) and ``mixing.npy``: the links of the server graph
  and its mixing matrix ``W`` (only with a ``topology`` section).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedsim.errors import ScenarioError
from fedsim.recorder import EVAL_SCHEMA, EVENT_SCHEMA, read_table
from fedsim.rundir import WORLD_FILES

if TYPE_CHECKING:
    import torch

    from fedsim.scenario import Scenario
    from fedsim.topology import Topology

CLIENTS_FILE, AVAILABILITY_FILE, TOPOLOGY_FILE, MIXING_FILE = WORLD_FILES

CLIENTS_SCHEMA = pa.schema(
    [
        ("task", pa.int32()),
        ("client", pa.int32()),
        ("speed", pa.float64()),
        ("straggler", pa.bool_()),
        ("byzantine", pa.bool_()),
        ("server", pa.int32()),
        ("data_size", pa.int64()),
        ("label_counts", pa.list_(pa.int64())),
        ("online_at_start", pa.bool_()),
        ("online_s", pa.float64()),
    ]
)
"""Columns of ``clients.parquet``: ``task`` (0, or the task of a multi-task run: one row per client
and task), ``client``, ``speed`` (the client's fixed duration multiplier: heterogeneity, or its device's
speed with ``clients.devices``, × straggler slowdown × ``byzantine.speed``; > 1 = slower), ``straggler``, ``byzantine``, ``server`` (its
topology node; 0 with one server), ``data_size`` (training samples; 0 in timing-only runs),
``label_counts`` (samples of each class; null for regression data and timing-only runs),
``online_at_start`` and ``online_s`` (simulated seconds online from 0 to the end of the run)."""

AVAILABILITY_SCHEMA = pa.schema(
    [("sim_time", pa.float64()), ("client", pa.int32()), ("online", pa.bool_())]
)
"""Columns of ``availability.parquet``: one row per switch, ``online`` = the state entered."""

TOPOLOGY_SCHEMA = pa.schema([("source", pa.int32()), ("target", pa.int32())])
"""Columns of ``topology.parquet``: one row per link of the server graph (``source < target``);
the weights are ``mixing.npy``'s ``W[source, target]``. Graphs drawn at fixed places (a torus)
keep their node positions as JSON in the file's metadata key ``positions``."""


def missing_fact(run_dir: Path, name: str) -> ScenarioError:
    """The one-line error of a run directory without one of its files of facts."""
    return ScenarioError(
        f"{run_dir / name} is missing: the run directory was written before fedsim recorded its "
        "world, or its run was killed before the end; run the scenario again to get it"
    )


class Result:
    """What a run produced: the resolved scenario, the traces as DataFrames, and the summary.

    A saved run's traces are read from its directory the first time they are used, so a long run
    never holds its whole trace in memory unless asked for it. So are the facts of its world:
    :attr:`clients`, :attr:`availability` and :attr:`topology`.
    """

    def __init__(
        self,
        scenario: Scenario,
        events: pd.DataFrame | None,
        evals: pd.DataFrame | None,
        summary: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        *,
        clients: pd.DataFrame | None = None,
        availability: pd.DataFrame | None = None,
        topology: Topology | None = None,
    ) -> None:
        if (events is None or evals is None) and run_dir is None:
            raise ValueError("a Result without traces needs the run directory to read them from")
        self.scenario = scenario
        self._events = events
        self._evals = evals
        self.summary = summary if summary is not None else {}
        self.run_dir = run_dir
        self._clients = clients
        self._availability = availability
        self._topology = topology

    @property
    def events(self) -> pd.DataFrame:
        """One row per job outcome and per server-to-server message (``events.parquet``)."""
        if self._events is None:
            self._events = read_table(self.run_dir / "events.parquet", EVENT_SCHEMA)
        return self._events

    @property
    def evals(self) -> pd.DataFrame:
        """One row per evaluation of a server's or task's model (``evals.parquet``)."""
        if self._evals is None:
            self._evals = read_table(self.run_dir / "evals.parquet", EVAL_SCHEMA)
        return self._evals

    @property
    def clients(self) -> pd.DataFrame:
        """What the run drew about each client (``clients.parquet``, :data:`CLIENTS_SCHEMA`).

        A run directory written before fedsim recorded it raises :class:`ScenarioError`."""
        if self._clients is None:
            self._clients = pd.read_parquet(self._file(CLIENTS_FILE))
        return self._clients

    @property
    def availability(self) -> pd.DataFrame:
        """Every switch of a client online or offline (``availability.parquet``); empty when
        every client was always online."""
        if self._availability is None:
            if self.scenario.clients.availability.kind == "always":
                self._availability = AVAILABILITY_SCHEMA.empty_table().to_pandas()
            else:
                self._availability = pd.read_parquet(self._file(AVAILABILITY_FILE))
        return self._availability

    @property
    def topology(self) -> Topology | None:
        """The server graph and mixing matrix the run used (None without a ``topology``
        section), from ``topology.parquet`` and ``mixing.npy``."""
        if self._topology is None and self.scenario.topology is not None:
            self._topology = _read_topology(
                self.scenario, self._file(TOPOLOGY_FILE), self._file(MIXING_FILE)
            )
        return self._topology

    def _file(self, name: str) -> Path:
        if self.run_dir is None:
            raise ScenarioError(f"a run with save=False kept no {name}")
        path = self.run_dir / name
        if not path.is_file():
            raise missing_fact(self.run_dir, name)
        return path

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir is not None else ""
        return f"Result({self.scenario.name!r}, stop_reason={self.summary.get('stop_reason')!r}{where})"

    def model(self, server: int = 0, *, task: int = 0) -> torch.nn.Module:
        """The scenario's model with the final weights of ``server`` (from ``RUN_DIR/models/``).

        A fresh CPU module of the scenario's ``model`` section; for a module of your own, load the
        file yourself: ``module.load_state_dict(torch.load(run_dir / "models" / "server-0.pt"))``.
        """
        import torch

        from fedsim.learning.data import dataset_info
        from fedsim.learning.models import build_model
        from fedsim.models_store import model_file

        if self.run_dir is None:
            raise ScenarioError("a run with save=False keeps no model files")
        path = self.run_dir / "models" / model_file(server, task)
        if not path.is_file():
            raise ScenarioError(
                f"no model file {path} (output.save_models: none, a timing-only run, or no such "
                "server or task)"
            )
        if task != 0:
            raise ScenarioError(
                f"a task's model: load {path} into that task's module with load_state_dict"
            )
        module, _ = build_model(self.scenario.model, dataset_info(self.scenario.data))
        module = module.to_empty(device="cpu")
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return module

    @classmethod
    def load(cls, run_dir: str | Path) -> Result:
        """Read a run directory back (also one a killed run left behind: its readable parts)."""
        from fedsim.scenario import load_scenario

        run_dir = Path(run_dir)
        if not (run_dir / "scenario.yaml").is_file():
            raise ScenarioError(f"not a fedsim run directory (no scenario.yaml): {run_dir}")
        scenario = load_scenario(run_dir / "scenario.yaml")
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return cls(scenario, None, None, summary, run_dir)


def _read_topology(scenario: Scenario, links: Path, mixing: Path) -> Topology:
    import networkx as nx

    from fedsim.topology import Topology, spectral_gap

    config = scenario.topology
    assert config is not None
    table = pq.read_table(links)
    graph = nx.empty_graph(config.servers)
    graph.graph["kind"] = config.graph.kind
    graph.add_edges_from(zip(table["source"].to_pylist(), table["target"].to_pylist(), strict=True))
    meta = table.schema.metadata or {}
    for node, xy in json.loads(meta.get(b"positions", b"{}")).items():
        graph.nodes[int(node)]["pos"] = tuple(xy)
    W = np.load(mixing)
    W.setflags(write=False)
    return Topology(
        config=config, graph=graph, W=W, gap=spectral_gap(W), assignment=config.assignment()
    )
