"""Figures of multi-server and decentralized runs: consensus over simulated time, distance of the
server models to a known optimum, traffic against accuracy, and the server graph itself.

Like :mod:`fedsim.plots`, every function returns a ``matplotlib.figure.Figure`` built without pyplot.
Runs are :class:`~fedsim.result.Result` objects or run directories; several runs passed together
are overlaid, one colour each.

Server models are not part of a run's trace, so :func:`distance_to_optimum` reads them from a
:class:`ParamRecorder`, a progress hook that keeps every server's model at every evaluation::

    rec = ParamRecorder()
    fedsim.run("scenarios/dfl_toy.yaml", save=False, progress=rec)
    distance_to_optimum([rec], w_star=[5, 2]).savefig("dfl.png")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fedsim.result import Result
from fedsim.topology import Topology, draw_graph

ResultLike = Result | str | Path
TIME_LABEL = "simulated time (s)"
ERROR_FLOOR = 1e-9
"""Consensus errors below this (exact agreement, or float32 rounding) are drawn at this value."""


def _results(results: ResultLike | Iterable[ResultLike]) -> list[Result]:
    if isinstance(results, Result | str | Path):
        results = [results]
    return [r if isinstance(r, Result) else Result.load(r) for r in results]


def _labels(n: int, labels: Sequence[str] | None, results: Sequence[Any] = ()) -> list[str]:
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} runs")
        return list(labels)
    names = [getattr(getattr(r, "scenario", None), "name", None) for r in results]
    if len(results) == n and all(names) and len(set(names)) == n:
        return [str(x) for x in names]
    return [f"run {i + 1}" for i in range(n)]


def _colours(n: int) -> list[Any]:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


# ---------------------------------------------------------------------------------------------------
# Consensus


def consensus_error_vs_time(
    results: ResultLike | Iterable[ResultLike],
    labels: Sequence[str] | None = None,
    *,
    each_server: bool = True,
) -> Figure:
    """‖w_s − mean_s w‖ of every server over simulated time (evals' ``consensus_error``).

    The bold line is the largest error over servers at each evaluation; thin lines are the servers
    (``each_server=False`` hides them). Log scale; errors below ``ERROR_FLOOR`` (exact agreement)
    are drawn on a dotted line at that value. Evaluate often (``eval.every_s`` below the link
    latency) to see each consensus step.
    Extra evaluation targets (``server < 0``, e.g. D-SGD's merged model) are left out.
    """
    runs = _results(results)
    names = _labels(len(runs), labels, runs)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    clipped = False
    for run, name, colour in zip(runs, names, _colours(len(runs)), strict=True):
        evals = run.evals[(run.evals["server"] >= 0) & run.evals["consensus_error"].notna()]
        if evals.empty:
            continue
        clipped |= bool((evals["consensus_error"] < ERROR_FLOOR).any())
        if each_server:
            for _, rows in evals.groupby("server"):
                ax.plot(
                    rows["sim_time"],
                    rows["consensus_error"].clip(lower=ERROR_FLOOR),
                    color=colour,
                    lw=0.6,
                    alpha=0.35,
                )
        worst = evals.groupby("sim_time")["consensus_error"].max().clip(lower=ERROR_FLOOR)
        ax.plot(worst.index, worst.to_numpy(), color=colour, lw=2, label=f"{name} (max)")
    ax.set_yscale("log")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel("consensus error ‖w_s − mean w‖")
    ax.set_title("Distance of each server model from the servers' mean")
    ax.grid(True, which="major", alpha=0.3)
    if clipped:
        ax.axhline(
            ERROR_FLOOR, color="0.4", ls=":", lw=1, label=f"below {ERROR_FLOOR:g} (agreement)"
        )
    handles, _ = ax.get_legend_handles_labels()
    if each_server:
        handles.append(Line2D([], [], color="0.5", lw=0.6, alpha=0.6, label="one server"))
    if handles:
        ax.legend(handles=handles, fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------------
# Distance to a known optimum


class ParamRecorder:
    """A progress hook that keeps every server's model (as numpy) at each evaluation time.

    ``times`` and ``params`` (one ``[servers, numel]`` array per time) after the run.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.times: list[float] = []
        self.params: list[np.ndarray] = []

    def __call__(self, sim: Any) -> None:
        if sim.last_eval.get("sim_time") != sim.env.now:
            return  # a progress call between evaluations
        models = [s.params for s in sim.servers]
        if any(p is None for p in models):
            return
        stacked = np.stack([p.detach().double().cpu().numpy() for p in models])
        if self.times and self.times[-1] == sim.env.now:
            self.params[-1] = stacked
        else:
            self.times.append(float(sim.env.now))
            self.params.append(stacked)


def distance_to_optimum(
    recorders: ParamRecorder | Sequence[ParamRecorder],
    w_star: Sequence[float] | np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    tolerance: float | None = None,
    target_label: str = "w*",
) -> Figure:
    """‖w_m − w*‖ of every server m over simulated time, one colour per run (log scale).

    Thin lines are servers; the bold line their largest distance. ``tolerance`` draws a dashed
    horizontal line (e.g. the 1e-2 of the DFL toy); ``target_label`` names ``w_star`` on the axis
    (e.g. ``"w_LS"`` when it is the least-squares solution of the training data).
    """
    recs = [recorders] if isinstance(recorders, ParamRecorder) else list(recorders)
    if labels is None:
        labels = [r.name or f"run {i + 1}" for i, r in enumerate(recs)]
    names = _labels(len(recs), labels)
    target = np.asarray(w_star, dtype=float)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for rec, name, colour in zip(recs, names, _colours(len(recs)), strict=True):
        if not rec.times:
            continue
        t = np.asarray(rec.times)
        dist = np.linalg.norm(np.stack(rec.params) - target, axis=2)  # [times, servers]
        ax.plot(t, dist, color=colour, lw=0.6, alpha=0.4)
        ax.plot(t, dist.max(axis=1), color=colour, lw=2, label=name)
    if tolerance is not None:
        ax.axhline(tolerance, color="0.3", ls="--", lw=1, label=f"tolerance {tolerance:g}")
    ax.set_yscale("log")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(f"‖w_m − {target_label}‖")
    ax.set_title(f"Distance of each server model m to {target_label}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------------
# Traffic


def cumulative_bytes(
    result: ResultLike, kinds: Sequence[str] = ("up", "down", "server")
) -> pd.Series:
    """Bytes sent up to each event time (index: simulated time), of the kinds named.

    ``up``: client uploads, ``down``: client downloads (counted when the job ends), ``server``:
    server-to-server messages. A job's bytes count at its row's time.
    """
    events = _results(result)[0].events.sort_values("sim_time", kind="stable")
    messages = events["status"] == "message"
    total = np.zeros(len(events))
    if "up" in kinds:
        total += np.where(messages, 0, events["bytes_up"])
    if "down" in kinds:
        total += np.where(messages, 0, events["bytes_down"])
    if "server" in kinds:
        total += np.where(messages, events["bytes_up"], 0)
    series = pd.Series(np.cumsum(total), index=events["sim_time"].to_numpy())
    return series[~series.index.duplicated(keep="last")]


def bytes_vs_accuracy(
    results: ResultLike | Iterable[ResultLike],
    labels: Sequence[str] | None = None,
    *,
    kinds: Sequence[str] = ("up", "down", "server"),
    server: int | None = None,
) -> Figure:
    """Accuracy against the bytes sent so far, one line per run.

    At each evaluation: x = cumulative bytes of ``kinds`` (see :func:`cumulative_bytes`) up to that
    time, y = mean accuracy over the servers (``server`` picks one evals target instead, e.g. -1 for
    D-SGD's merged model). Comparing algorithms at equal traffic is what this is for.
    """
    runs = _results(results)
    names = _labels(len(runs), labels, runs)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for run, name, colour in zip(runs, names, _colours(len(runs)), strict=True):
        evals = run.evals
        evals = evals[evals["server"] >= 0] if server is None else evals[evals["server"] == server]
        acc = evals.groupby("sim_time")["accuracy"].mean()
        if acc.empty:
            continue
        sent = cumulative_bytes(run, kinds)
        if sent.empty:
            x = np.zeros(len(acc))
        else:
            pos = np.searchsorted(sent.index.to_numpy(), acc.index.to_numpy(), side="right") - 1
            x = np.where(pos >= 0, sent.to_numpy()[np.clip(pos, 0, None)], 0.0)
        ax.plot(x / 1e6, acc.to_numpy(), color=colour, lw=1.8, marker=".", ms=3, label=name)
    ax.set_xlabel("bytes sent so far (MB, " + " + ".join(_KIND_NAMES[k] for k in kinds) + ")")
    ax.set_ylabel("test accuracy" if server is None else f"test accuracy (evals server {server})")
    ax.set_title("Accuracy against traffic")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


_KIND_NAMES = {"up": "client uploads", "down": "client downloads", "server": "server links"}


# ---------------------------------------------------------------------------------------------------
# The graph


def run_topology(result: ResultLike) -> Topology:
    """The topology a run used: its graph and mixing matrix as the run directory keeps them
    (``topology.parquet``, ``mixing.npy``; :attr:`Result.topology`)."""
    run = _results(result)[0]
    topology = run.topology
    if topology is None:
        raise ValueError(f"run {run.scenario.name!r} has no topology section")
    return topology


def server_graph(result_or_topology: ResultLike | Topology, *, title: str | None = None) -> Figure:
    """The server graph drawn with networkx positions, titled with its size, mixing and gap."""
    topo = (
        result_or_topology
        if isinstance(result_or_topology, Topology)
        else run_topology(result_or_topology)
    )
    cfg = topo.config
    if title is None:
        title = (
            f"{cfg.graph.kind} graph, {topo.servers} servers, {topo.graph.number_of_edges()} links\n"
            f"{cfg.mixing.kind} mixing, spectral gap {topo.gap:.3f}"
        )
    return draw_graph(topo.graph, title=title)
