"""Figures of runs: accuracy over simulated time, staleness, stragglers, client timelines, partitions.

Every function takes :class:`~fedsim.result.Result` objects (or run directories, read with
``Result.load``) or DataFrames and returns a :class:`matplotlib.figure.Figure`. Facts about the
clients (speeds, stragglers, data, availability) are the run's own, read from its directory
(``clients.parquet``, ``availability.parquet``): nothing is drawn again from the seed, and the
simulation engine is never imported. Figures are built with
``Figure(...)`` directly, never through ``pyplot``: nothing is shown, no global figure registry grows,
and the module works under any backend (Agg included). Save one with ``fig.savefig("x.png")``.

>>> from fedsim import plots
>>> fig = plots.accuracy_vs_time([r0, r1, r2])        # doctest: +SKIP
>>> plots.save_standard_figures(result, "runs/quickstart/plots")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from fedsim.errors import ScenarioError
from fedsim.result import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from fedsim.scenario import Scenario

ResultLike = Result | str | Path
"""A Result, or the path of a run directory."""

ACCEPTED = ("applied", "buffered")
TIME_LABEL = "simulated time (s)"
STALENESS_LABEL = "staleness (server versions behind)"
STANDARD_FIGURES = (
    "accuracy",
    "loss",
    "tasks",
    "consensus",
    "staleness",
    "timeline",
    "contribution",
    "online",
    "participation",
)
"""Names (and PNG file stems) of the figures :func:`standard_figures` makes."""

# Names of common sweep keys on an x axis.
AXIS_NAMES = {
    "clients.stragglers.fraction": "straggler fraction (share of clients)",
    "straggler_fraction": "straggler fraction (share of clients)",
    "clients.stragglers.slowdown": "straggler slowdown (× compute time)",
    "clients.stragglers.job_prob": "chance of a slow job",
    "clients.dropout.prob": "dropout probability",
    "clients.count": "number of clients",
    "algorithm.concurrency": "concurrency (jobs in flight)",
    "algorithm.buffer_size": "buffer size (updates per server step)",
    "data.partition.alpha": "Dirichlet α (label skew; small = skewed)",
}

STATUS_MARKERS = {  # end-of-job markers on the timeline, for jobs whose update was not used
    "dropped": ("X", "#d62728", "dropped (client lost, no upload)"),
    "cancelled": ("s", "#555555", "cancelled (over-selection)"),
    "late": ("v", "#9467bd", "late (not used)"),
    "rejected": ("*", "#8c564b", "rejected (non-finite update)"),
    "abandoned": ("D", "#e377c2", "abandoned (round too small)"),
}
COMPUTE_COLOR = "#1f77b4"
COMM_COLOR = "#ff9f1c"
LOST_COLOR = "#f4a6a6"
CANCELLED_COLOR = "#bdbdbd"
OFFLINE_COLOR = "#f2f2f2"


# ---------------------------------------------------------------------------------------------------
# Inputs, labels and titles


def _as_results(results: ResultLike | Iterable[ResultLike]) -> list[Result]:
    if isinstance(results, (Result, str, Path)):
        results = [results]
    out = [r if isinstance(r, Result) else Result.load(r) for r in results]
    if not out:
        raise ValueError("no results to plot")
    return out


def _as_result(result: ResultLike) -> Result:
    return result if isinstance(result, Result) else Result.load(result)


def _run_name(scenario: Scenario) -> str:
    """``quickstart (fedasync)``, or just ``fedbuff`` when the scenario is named after its algorithm."""
    algo = scenario.algorithm.name
    return scenario.name if scenario.name == algo else f"{scenario.name} ({algo})"


def _title(what: str, results: Sequence[Result]) -> str:
    """``what — scenario (algorithm), ...``; on a second line when that would be long."""
    names = list(dict.fromkeys(_run_name(r.scenario) for r in results))
    text = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{what} — {text}" if len(what) + len(text) <= 70 else f"{what}\n{text}"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _seedless(scenario: Scenario) -> dict[str, Any]:
    """The scenario's keys that change results, except the seed (runs that differ only by seed group)."""
    data = _flatten(scenario.to_dict())
    return {k: v for k, v in data.items() if k != "seed" and not k.startswith("output.")}


def _group(
    results: Sequence[Result], labels: Sequence[str] | None
) -> list[tuple[str, list[Result]]]:
    """Runs grouped by label, in first-appearance order.

    Without ``labels`` runs whose scenarios differ only in the seed form one group, labelled by
    scenario name and algorithm; groups that would get the same label have the keys that tell them
    apart appended (``[clients.stragglers.fraction=0.3]``).
    """
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(results):
            raise ValueError(f"{len(labels)} labels for {len(results)} results")
        groups: dict[str, list[Result]] = {}
        for label, result in zip(labels, results, strict=True):
            groups.setdefault(str(label), []).append(result)
        return list(groups.items())

    keyed: dict[str, tuple[dict[str, Any], list[Result]]] = {}
    for result in results:
        flat = _seedless(result.scenario)
        key = json.dumps(flat, sort_keys=True, default=str)
        keyed.setdefault(key, (flat, []))[1].append(result)
    entries = [(_run_name(runs[0].scenario), flat, runs) for flat, runs in keyed.values()]
    out = []
    for text, flat, runs in entries:
        clash = [f for t, f, _ in entries if t == text]
        if len(clash) > 1:
            differ = sorted(
                k for k in flat if len({json.dumps(f.get(k), default=str) for f in clash}) > 1
            )
            shown = ", ".join(f"{k}={flat.get(k)}" for k in differ[:3])
            text = f"{text} [{shown}{', …' if len(differ) > 3 else ''}]"
        out.append((text, runs))
    return out


def _plain_number(value: float, _pos: Any = None) -> str:
    """Tick text without scientific notation or offsets: 1,200,000 rather than 1.2e6."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def _minor_log_label(value: float, _pos: Any = None) -> str:
    """Label the 2× and 5× minor ticks of a log axis (0.2, 0.5, 2, 5, 20, ...), none of the others."""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def _time_axis(ax: Axes, label: str = TIME_LABEL) -> None:
    ax.set_xlabel(label)
    ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))


def _accepted(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["status"].isin(ACCEPTED)]


# ---------------------------------------------------------------------------------------------------
# Accuracy / loss over simulated time


def _metric_curve(result: Result, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Finite ``metric`` values of a run against simulated time (servers averaged), or None."""
    evals = result.evals
    if evals.empty:
        return None
    curve = evals.groupby("sim_time", sort=True)[metric].mean().dropna()
    if curve.empty:
        return None
    return curve.index.to_numpy(dtype=float), curve.to_numpy(dtype=float)


def _common_grid(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], max_points: int = 2000
) -> np.ndarray:
    """Evaluation times every run covers (the union of their eval times inside the shared span)."""
    lo = max(t[0] for t, _ in curves)
    hi = min(t[-1] for t, _ in curves)
    if hi <= lo:
        return np.array([lo])
    grid = np.unique(np.concatenate([t[(t >= lo) & (t <= hi)] for t, _ in curves]))
    if len(grid) > max_points:
        grid = np.linspace(lo, hi, max_points)
    return grid


def has_metric(result: ResultLike, metric: str = "accuracy") -> bool:
    """Whether a run recorded any finite ``metric`` (timing-only runs, ``training: none``, do not)."""
    return _metric_curve(_as_result(result), metric) is not None


def accuracy_vs_time(
    results: ResultLike | Iterable[ResultLike],
    *,
    metric: Literal["accuracy", "loss"] = "accuracy",
    labels: Sequence[str] | None = None,
) -> Figure:
    """Test accuracy (or loss) of the global model against simulated time, several runs overlaid.

    Runs sharing a label (by default: runs whose scenarios differ only in the seed) are drawn as their
    mean with a ±1 standard-deviation band; each seed's evaluations are linearly interpolated onto the
    evaluation times that every seed covers (so the band stops where the shortest run stops). A run's
    ``stop.target_accuracy``, if set, is drawn as a dashed line. Runs without a finite ``metric`` (timing
    only) are left out; if none has one, ``ValueError``.
    """
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}")
    runs = _as_results(results)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    drawn = []
    for i, (label, members) in enumerate(_group(runs, labels)):
        curves = [c for c in (_metric_curve(r, metric) for r in members) if c is not None]
        if not curves:
            continue
        drawn.extend(members)
        color = f"C{i % 10}"
        if len(curves) == 1:
            t, y = curves[0]
            ax.plot(t, y, color=color, lw=1.8, marker="o", ms=2.5, label=label)
            continue
        grid = _common_grid(curves)
        ys = np.vstack([np.interp(grid, t, y) for t, y in curves])
        mean, std = ys.mean(axis=0), ys.std(axis=0, ddof=1)
        ax.plot(
            grid, mean, color=color, lw=1.8, label=f"{label}: mean ± 1 std of {len(curves)} seeds"
        )
        ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.22, lw=0)
    if not drawn:
        raise ValueError(
            f"no run has a finite {metric} (timing-only runs, training: none, record none)"
        )
    if metric == "accuracy":
        targets = sorted({r.scenario.stop.target_accuracy for r in drawn} - {None})
        for target in targets:
            ax.axhline(target, color="0.35", ls="--", lw=1, label=f"target accuracy {target:g}")
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0.0), min(hi, 1.0) if metric == "accuracy" else hi)
    _time_axis(ax)
    ax.set_ylabel(
        "test accuracy (fraction correct)" if metric == "accuracy" else "test loss (cross-entropy)"
    )
    ax.set_title(_title(f"Test {metric} vs simulated time", drawn))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if metric == "accuracy" else "upper right", fontsize="small")
    return fig


# ---------------------------------------------------------------------------------------------------
# Staleness


def _integer_bins(k_max: int, max_bins: int = 60) -> np.ndarray:
    """Histogram edges centred on integers, at most ``max_bins`` bins of equal integer width."""
    width = max(1, math.ceil((k_max + 1) / max_bins))
    return np.arange(-0.5, k_max + width + 0.5, width)


def staleness(
    results: ResultLike | Iterable[ResultLike], *, labels: Sequence[str] | None = None
) -> Figure:
    """Distribution of the staleness of accepted (applied or buffered) updates: histogram and CDF.

    One step histogram (share of the run's updates per bin) and one empirical CDF per run; runs that
    share a label (by default: that differ only in the seed) are pooled. Legend entries give the mean.
    """
    runs = _as_results(results)
    groups = []
    for label, members in _group(runs, labels):
        k = np.concatenate([_accepted(r.events)["staleness"].to_numpy() for r in members])
        if len(k):
            groups.append((label, members, k))
    if not groups:
        raise ValueError("no accepted (applied or buffered) updates in any run")
    k_max = int(max(k.max() for _, _, k in groups))
    # The histogram stops at the largest 99th percentile so a long tail does not squash it; the CDF
    # shows everything (on a log-like axis when the range is wide).
    k_cut = int(max(np.quantile(k, 0.99) for _, _, k in groups))
    k_cut = k_max if k_max <= max(20, 1.5 * k_cut) else max(k_cut, 1)
    bins = _integer_bins(k_cut)
    width = int(bins[1] - bins[0])

    fig = Figure(figsize=(11, 4.3), layout="constrained")
    ax_h, ax_c = fig.subplots(1, 2)
    for i, (label, members, k) in enumerate(groups):
        color = f"C{i % 10}"
        seeds = f", {len(members)} seeds" if len(members) > 1 else ""
        text = f"{label} (mean {k.mean():.1f}, {len(k):,} updates{seeds})"
        ax_h.hist(
            k, bins=bins, weights=np.full(len(k), 1 / len(k)), histtype="step", lw=1.6, color=color
        )
        values, counts = np.unique(k, return_counts=True)
        cdf = np.cumsum(counts) / len(k)
        ax_c.step(
            np.concatenate([[values[0]], values]),
            np.concatenate([[0.0], cdf]),
            where="post",
            color=color,
            lw=1.6,
            label=text,
        )
    ax_h.set_xlabel(STALENESS_LABEL)
    ax_h.set_ylabel("share of updates" + (f" (bins of {width} versions)" if width > 1 else ""))
    ax_h.set_title(
        "Histogram" if k_cut == k_max else f"Histogram (up to the 99th percentile; max {k_max:,})"
    )
    ax_c.set_xlabel(STALENESS_LABEL)
    ax_c.set_ylabel("share of updates with staleness ≤ k")
    ax_c.set_ylim(0, 1.02)
    ax_c.set_title("Cumulative distribution")
    ax_h.set_xlim(-0.5 if k_cut < 20 else -k_cut / 40, bins[-1])
    ax_h.xaxis.set_major_locator(MaxNLocator(integer=True))
    if k_max > 50:
        ax_c.set_xscale("symlog", linthresh=1, linscale=0.4)
        ax_c.set_xlim(-0.2, k_max * 1.3)
    else:
        ax_c.set_xlim(-0.5, k_max + 0.5)
        ax_c.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_h, ax_c):
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.grid(alpha=0.3)
    fig.legend(
        handles=ax_c.get_legend_handles_labels()[0], loc="outside lower center", fontsize="small"
    )
    fig.suptitle(_title("Staleness of accepted updates", runs))
    return fig


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ ``raw``."""
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))


def staleness_over_time(result: ResultLike, *, bins: int = 40, max_points: int = 4000) -> Figure:
    """Staleness of each accepted update against its arrival time, with the mean and the 10th–90th
    percentile band over time bins (about ``bins`` of them, of a round width); late updates (too stale
    for ``max_staleness``, or past a FedAvg deadline) as red crosses.

    At most ``max_points`` individual updates are drawn (evenly spaced in arrival order). When the
    largest staleness is far above the typical one the y axis is logarithmic above 1.
    """
    result = _as_result(result)
    events = result.events.sort_values("sim_time", kind="stable")
    acc = _accepted(events)
    if acc.empty:
        raise ValueError("no accepted (applied or buffered) updates in this run")
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    t = acc["sim_time"].to_numpy()
    k = acc["staleness"].to_numpy()

    def thin(n: int) -> np.ndarray:
        return np.unique(np.linspace(0, n - 1, min(max_points, n)).astype(int))

    pick = thin(len(t))
    shown = f"{len(pick):,} of {len(t):,} shown" if len(pick) < len(t) else f"{len(t):,}"
    ax.scatter(
        t[pick],
        k[pick],
        s=6,
        color="0.55",
        alpha=0.35,
        lw=0,
        rasterized=True,
        label=f"accepted updates ({shown})",
    )
    late = events[events["status"] == "late"]
    if not late.empty:
        lp = thin(len(late))
        ax.scatter(
            late["sim_time"].to_numpy()[lp],
            late["staleness"].to_numpy()[lp],
            s=12,
            color="#d62728",
            marker="x",
            lw=0.8,
            rasterized=True,
            label=f"late, not used ({len(late):,})",
        )
    width = _nice_step((t.max() - t.min()) / bins)
    first = math.floor(t.min() / width) * width
    which = np.floor((t - first) / width).astype(int)
    stats = pd.DataFrame({"bin": which, "k": k}).groupby("bin")["k"]
    mean = stats.mean()
    x = first + (mean.index.to_numpy() + 0.5) * width
    ax.fill_between(
        x,
        stats.quantile(0.1).to_numpy(),
        stats.quantile(0.9).to_numpy(),
        color="C0",
        alpha=0.25,
        lw=0,
        label="10th–90th percentile",
    )
    ax.plot(
        x,
        mean.to_numpy(),
        color="C0",
        lw=2,
        marker="o",
        ms=3,
        label=f"mean per {_plain_number(width)} s bin",
    )
    _time_axis(ax, "arrival time (simulated s)")
    ax.set_ylabel(STALENESS_LABEL)
    k_max = max(int(k.max()), int(late["staleness"].max()) if len(late) else 0)
    if k_max > 50 and k_max > 4 * np.quantile(k, 0.9):
        ax.set_yscale("symlog", linthresh=1, linscale=0.4)
        ax.set_ylim(-0.2, k_max * 1.5)
        ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    else:
        ax.set_ylim(-0.5 if k_max < 20 else -k_max / 40, None)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Staleness over time — {_run_name(result.scenario)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", framealpha=0.9)
    return fig


# ---------------------------------------------------------------------------------------------------
# Stragglers: time to target accuracy


def time_to_target_s(result: ResultLike, target: float) -> float:
    """Simulated time of the first evaluation whose test accuracy is ≥ ``target``; NaN if none.

    Same definition as the run summary's ``time_to_target_s`` (which is only set when the scenario's
    ``stop.target_accuracy`` is), measured on the recorded evaluations, so it resolves to ``eval.every_s``.
    """
    evals = _as_result(result).evals.sort_values("sim_time", kind="stable")
    hit = evals.loc[evals["accuracy"] >= target, "sim_time"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def time_to_target_table(
    results: ResultLike | Iterable[ResultLike],
    target: float,
    *,
    x: str = "clients.stragglers.fraction",
) -> pd.DataFrame:
    """One row per run: the scenario value at dotted key ``x``, algorithm, seed, name and
    ``time_to_target_s`` (NaN where the run never reached ``target``), ready for :func:`time_to_target`."""
    rows = []
    for result in _as_results(results):
        flat = _flatten(result.scenario.to_dict())
        if x not in flat:
            raise KeyError(f"scenario key {x!r} not found (e.g. clients.stragglers.fraction)")
        rows.append(
            {
                x: flat[x],
                "algorithm": result.scenario.algorithm.name,
                "seed": result.scenario.seed,
                "name": result.scenario.name,
                "time_to_target_s": time_to_target_s(result, target),
            }
        )
    return pd.DataFrame(rows)


def time_to_target(
    table: pd.DataFrame,
    *,
    x: str = "clients.stragglers.fraction",
    algorithm: str = "algorithm",
    y: str = "time_to_target_s",
    target: float | None = None,
    xlabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """Time to reach a target accuracy against a straggler parameter, one line per algorithm.

    ``table`` has one row per run (columns ``x``, ``algorithm``, ``y``; NaN ``y`` = target not reached),
    e.g. from :func:`time_to_target_table` or a sweep's results. Several rows at the same x (seeds) are
    drawn as their mean with ±1 std error bars. A point where only some seeds reached the target is
    drawn hollow (mean of those that did); where none did, an ``x`` is drawn at the top of the plot.
    """
    if algorithm not in table.columns and "algorithm.name" in table.columns:
        algorithm = "algorithm.name"
    missing = [c for c in (x, algorithm, y) if c not in table.columns]
    if missing:
        raise KeyError(f"table lacks column(s) {missing}; it has {list(table.columns)}")
    if table.empty:
        raise ValueError("empty table")
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    never: list[tuple[float, str]] = []
    partial = False
    y_top = float(np.nanmax(table[y].to_numpy(dtype=float))) if table[y].notna().any() else 1.0
    for i, (name, rows) in enumerate(table.groupby(algorithm, sort=False)):
        color = f"C{i % 10}"
        stats = rows.groupby(x, sort=True)[y].agg(["mean", "std", "count", "size"])
        reached = stats[stats["count"] > 0]
        ax.errorbar(
            reached.index.to_numpy(dtype=float),
            reached["mean"].to_numpy(),
            yerr=reached["std"].fillna(0).to_numpy(),
            color=color,
            marker="o",
            ms=6,
            capsize=3,
            lw=1.8,
            label=str(name),
        )
        some = reached[reached["count"] < reached["size"]]
        if len(some):
            partial = True
            ax.plot(
                some.index.to_numpy(dtype=float),
                some["mean"].to_numpy(),
                ls="none",
                marker="o",
                ms=9,
                mfc="white",
                mec=color,
                mew=1.8,
                zorder=3,
            )
        never += [(float(v), color) for v in stats.index[stats["count"] == 0]]
    extra = []
    if never:
        ax.set_ylim(top=y_top * 1.12)
        for value, color in never:
            ax.plot([value], [y_top * 1.08], ls="none", marker="x", ms=9, mew=2, color=color)
        extra.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="x",
                ms=9,
                mew=2,
                color="0.3",
                label="target never reached",
            )
        )
    if partial:
        extra.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                ms=9,
                mfc="white",
                mec="0.3",
                mew=1.8,
                label="reached in some seeds only",
            )
        )
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel or AXIS_NAMES.get(x, x))
    ax.set_ylabel("time to target accuracy (simulated s)")
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    if title is None:
        what = f"accuracy {target:g}" if target is not None else "target accuracy"
        title = f"Time to reach test {what}"
        if "name" in table.columns and table["name"].nunique() == 1:
            title += f" — {table['name'].iloc[0]}"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, title="algorithm", fontsize="small", loc="best")
    return fig


# ---------------------------------------------------------------------------------------------------
# Clients: timeline, contribution, speeds, partitions


def client_facts(result: ResultLike, task: int = 0) -> pd.DataFrame:
    """What the run drew about each client (``clients.parquet``: speed, straggler, Byzantine,
    server, data size, label counts, time online), one row per client of ``task``, by client id.

    A run directory written before fedsim recorded its clients raises :class:`ScenarioError`."""
    clients = _as_result(result).clients
    return clients[clients["task"] == task].sort_values("client").reset_index(drop=True)


def client_speeds(result: ResultLike) -> np.ndarray:
    """Each client's fixed duration multiplier as the run drew it (heterogeneity, or its device's
    speed, × straggler slowdown × ``byzantine.speed``; > 1 = slower), from ``clients.parquet``."""
    return client_facts(result)["speed"].to_numpy(dtype=float)


def _run_end(result: Result) -> float:
    """The simulated time the run stopped at."""
    end = result.summary.get("sim_time_s")
    if end is not None:
        return float(end)
    times = [float(t["sim_time"].max()) for t in (result.events, result.evals) if len(t)]
    return max(times, default=0.0)


def online_counts(result: ResultLike) -> tuple[np.ndarray, np.ndarray]:
    """Clients online over time as a step function: ``(times, counts)``, ``counts[i]`` holding from
    ``times[i]`` to the next time (from ``clients.parquet`` and ``availability.parquet``)."""
    result = _as_result(result)
    start = int(client_facts(result)["online_at_start"].sum())
    switches = result.availability.sort_values("sim_time", kind="stable")
    times = np.concatenate([[0.0], switches["sim_time"].to_numpy(float)])
    steps = np.where(switches["online"].to_numpy(bool), 1, -1)
    counts = start + np.concatenate([[0], np.cumsum(steps)])
    keep = np.append(times[1:] != times[:-1], True)  # the count after every switch at a time
    return times[keep], counts[keep]


def offline_spans(
    result: ResultLike, clients: Sequence[int]
) -> dict[int, list[tuple[float, float]]]:
    """Each listed client's offline intervals ``[(start, end), ...]`` over the run."""
    result = _as_result(result)
    facts = client_facts(result)
    end = _run_end(result)
    switches = result.availability
    switches = switches[switches["client"].isin(list(clients))].sort_values(
        "sim_time", kind="stable"
    )
    by_client = {int(c): rows for c, rows in switches.groupby("client")}
    spans: dict[int, list[tuple[float, float]]] = {}
    for client in clients:
        rows = by_client.get(int(client))
        times = rows["sim_time"].to_numpy(float) if rows is not None else np.array([])
        states = rows["online"].to_numpy(bool) if rows is not None else np.array([], bool)
        online = bool(facts["online_at_start"].iloc[client])
        since, out = 0.0, []
        for t, state in zip(times, states, strict=True):
            if not online and state:
                out.append((since, float(t)))
            online, since = bool(state), float(t)
        if not online:
            out.append((since, end))
        spans[int(client)] = [(a, b) for a, b in out if b > a]
    return spans


def _segments(
    ax: Axes,
    rows: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    color: str,
    label: str,
    *,
    edge: bool = False,
    height: float = 0.62,
) -> PolyCollection:
    """Rectangles [left, right] × [row ± height/2] as one collection with one legend entry."""
    lo, hi = rows - height / 2, rows + height / 2
    verts = np.stack(
        [np.column_stack(p) for p in ((left, lo), (right, lo), (right, hi), (left, hi))], axis=1
    )
    coll = PolyCollection(
        verts,
        facecolors=color,
        edgecolors="white" if edge else "none",
        linewidths=0.5 if edge else 0,
        label=label,
    )
    ax.add_collection(coll, autolim=False)
    return coll


def client_timeline(
    result: ResultLike,
    *,
    first_n: int = 20,
    time_range: tuple[float, float] | None = None,
    show_speeds: bool = True,
) -> Figure:
    """Gantt chart of clients ``0 .. first_n-1``: each job from dispatch to its outcome, split into
    download, compute and upload (communication and compute shaded differently; white = idle).

    Dropped jobs (no upload) are shaded red and end in a red ``X``; cancelled jobs are grey up to the
    moment they were cancelled; late, rejected and abandoned jobs end in their own marker. The download
    time is the scenario's network transfer time of ``bytes_down``; the upload is the rest of ``comm_s``.
    ``time_range`` zooms in (simulated seconds). With ``show_speeds`` each row is labelled with the
    client's duration multiplier. With ``clients.availability`` the spans a client was offline are
    hatched. Speeds and offline spans come from the run directory (``clients.parquet``,
    ``availability.parquet``); a directory written before fedsim recorded them gets the timeline
    without them, and a warning.
    """
    result = _as_result(result)
    scenario = result.scenario
    n = min(first_n, scenario.clients.count)
    ev = result.events[result.events["client"] < n]
    if time_range is not None:
        ev = ev[(ev["sim_time"] >= time_range[0]) & (ev["dispatched_at"] <= time_range[1])]
    network = scenario.clients.network

    start = ev["dispatched_at"].to_numpy(float)
    end = ev["sim_time"].to_numpy(float)
    comm = ev["comm_s"].to_numpy(float)
    down = np.minimum(np.array([network.transfer_s(int(b)) for b in ev["bytes_down"]]), comm)
    compute_end = np.minimum(start + down + ev["compute_s"].to_numpy(float), end)
    down_end = np.minimum(start + down, end)
    status = ev["status"].to_numpy()
    row = ev["client"].to_numpy()
    lost = status == "dropped"
    cancelled = status == "cancelled"
    normal = ~(lost | cancelled)

    fig = Figure(figsize=(11, 1.6 + 0.32 * n), layout="constrained")
    ax = fig.add_subplot()
    if scenario.clients.availability.kind != "always":
        try:
            spans = offline_spans(result, range(n))
        except ScenarioError as exc:
            warnings.warn(f"offline spans not shown: {exc}", stacklevel=2)
            spans = {}
        pairs = [(c, a, b) for c, items in spans.items() for a, b in items]
        if pairs:
            rows_, lefts, rights = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
            offline = _segments(ax, rows_, lefts, rights, OFFLINE_COLOR, "offline", height=0.9)
            offline.set_hatch("///")
            offline.set_edgecolor("0.75")
            offline.set_zorder(0)
    # One PolyCollection per kind of segment: thousands of jobs stay cheap to draw.
    comm_rows = normal | lost
    _segments(
        ax,
        np.concatenate([row[comm_rows], row[normal]]),
        np.concatenate([start[comm_rows], compute_end[normal]]),
        np.concatenate([down_end[comm_rows], end[normal]]),
        COMM_COLOR,
        "communication (download, upload)",
    )
    _segments(
        ax, row[normal], down_end[normal], compute_end[normal], COMPUTE_COLOR, "local compute"
    )
    if lost.any():
        _segments(
            ax,
            row[lost],
            down_end[lost],
            compute_end[lost],
            LOST_COLOR,
            "compute of a dropped job",
            edge=True,
        )
    if cancelled.any():
        _segments(
            ax,
            row[cancelled],
            start[cancelled],
            end[cancelled],
            CANCELLED_COLOR,
            "cancelled job (until cancelled)",
            edge=True,
        )
    for name, (marker, color, text) in STATUS_MARKERS.items():
        sel = status == name
        if sel.any():
            ax.plot(
                end[sel],
                row[sel],
                ls="none",
                marker=marker,
                color=color,
                ms=6,
                mec="white" if marker in "XDs*" else color,
                mew=0.6,
                label=text,
                zorder=3,
            )
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_yticks(range(n))
    speeds = None
    if show_speeds:
        try:
            speeds = client_speeds(result)[:n]
        except ScenarioError as exc:
            warnings.warn(f"speeds not shown: {exc}", stacklevel=2)
    if speeds is not None:
        ax.set_yticklabels([f"{c} (×{s:.2g})" for c, s in enumerate(speeds)], fontsize="small")
        ax.set_ylabel("client (duration multiplier)")
    else:
        ax.set_ylabel("client")
    stop = float(result.events["sim_time"].max()) if len(result.events) else 0.0
    stop = max(stop, float(result.evals["sim_time"].max()) if len(result.evals) else 0.0)
    ax.set_xlim(*(time_range if time_range is not None else (0.0, stop or 1.0)))
    _time_axis(ax)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"Client timeline — {_run_name(scenario)}, clients 0–{n - 1} of {scenario.clients.count}"
    )
    handles, _ = ax.get_legend_handles_labels()
    # Segments first (bars), then end-of-job markers, then idle.
    handles.sort(key=lambda h: isinstance(h, Line2D))
    handles.append(Patch(facecolor="white", edgecolor="0.6", label="idle"))
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize="small"
    )
    return fig


def _per_client_counts(result: Result) -> pd.DataFrame:
    n = result.scenario.clients.count
    status = result.events["status"]
    client = result.events["client"].to_numpy()
    kinds = {
        "accepted": status.isin(ACCEPTED).to_numpy(),
        "dropped": (status == "dropped").to_numpy(),
        "unused": status.isin(["late", "cancelled", "rejected", "abandoned"]).to_numpy(),
    }
    return pd.DataFrame({k: np.bincount(client[m], minlength=n) for k, m in kinds.items()})


def _stragglers(result: Result, n: int) -> np.ndarray:
    """Each client's straggler flag (all False, with a warning, for a run directory without
    ``clients.parquet``)."""
    try:
        return client_facts(result)["straggler"].to_numpy(dtype=bool)
    except ScenarioError as exc:
        warnings.warn(f"stragglers not marked: {exc}", stacklevel=3)
        return np.zeros(n, dtype=bool)


def _group_means(ax: Axes, group: np.ndarray, x: np.ndarray, y: np.ndarray, label: str) -> None:
    """The mean of ``x`` and of ``y`` in each group, as a black line over a scatter."""
    means = pd.DataFrame({"g": group, "x": x, "y": y}).groupby("g")[["x", "y"]].mean()
    ax.plot(means["x"], means["y"], color="black", lw=1.4, marker="D", ms=4, label=label, zorder=3)


def client_contribution(
    result: ResultLike, speeds: Sequence[float] | np.ndarray | None = None
) -> Figure:
    """Jobs per client by outcome (accepted = applied or buffered, dropped, not used), and — when
    ``speeds`` (each client's duration multiplier, e.g. :func:`client_speeds`) is given — accepted
    updates against speed in a second panel.

    Up to 200 clients the first panel has one stacked bar per client; beyond, it is a histogram of the
    number of accepted updates per client.
    """
    result = _as_result(result)
    counts = _per_client_counts(result)
    n = len(counts)
    panels = 2 if speeds is not None else 1
    fig = Figure(
        figsize=(7 + 4.5 * (panels - 1), 4.5),
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(1, panels, width_ratios=[1.6, 1][:panels]))
    ax = axes[0]
    if n <= 200:
        ids = np.arange(n)
        bottom = np.zeros(n)
        for kind, color, text in (
            ("accepted", "C0", "accepted (applied or buffered)"),
            ("dropped", "#d62728", "dropped"),
            ("unused", "0.65", "not used (late, cancelled, rejected, abandoned)"),
        ):
            values = counts[kind].to_numpy()
            if kind == "accepted" or values.any():
                ax.bar(
                    ids,
                    values,
                    bottom=bottom,
                    width=0.85 if n > 1 else 0.5,
                    color=color,
                    lw=0,
                    label=text,
                )
            bottom = bottom + values
        ax.set_xlabel("client")
        ax.set_ylabel("jobs")
        ax.set_xlim(-0.8, n - 0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small", loc="upper right")
    else:
        acc = counts["accepted"].to_numpy()
        ax.hist(acc, bins=_integer_bins(int(acc.max())), color="C0")
        ax.set_xlabel("accepted updates per client")
        ax.set_ylabel("clients")
        ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.set_title("Jobs per client, by outcome" if n <= 200 else "Accepted updates per client")
    ax.grid(axis="y", alpha=0.3)
    if speeds is not None:
        speeds = np.asarray(speeds, dtype=float)
        if speeds.shape != (n,):
            raise ValueError(f"speeds has shape {speeds.shape}, expected ({n},)")
        ax2 = axes[1]
        slow = result.scenario.clients.stragglers.slowdown
        straggler = _stragglers(result, n)
        acc = counts["accepted"].to_numpy()
        small = n <= 2000
        ax2.scatter(
            speeds[~straggler],
            acc[~straggler],
            s=14 if small else 4,
            color="C0",
            alpha=0.6,
            lw=0,
            rasterized=not small,
            label="clients",
        )
        if straggler.any():
            ax2.scatter(
                speeds[straggler],
                acc[straggler],
                s=18 if small else 5,
                color="#d62728",
                marker="^",
                alpha=0.7,
                lw=0,
                rasterized=not small,
                label=f"stragglers (×{slow:g} slower)",
            )
        log = speeds.max() / max(speeds.min(), 1e-12) > 5
        distinct = np.unique(speeds)
        if len(distinct) <= 12:
            group = np.searchsorted(distinct, speeds)
        else:
            edges = (np.geomspace if log else np.linspace)(speeds.min(), speeds.max(), 13)
            group = np.clip(np.searchsorted(edges, speeds, side="right") - 1, 0, 11)
        _group_means(ax2, group, speeds, acc, "mean per speed group")
        if log:
            ax2.set_xscale("log")
            ax2.xaxis.set_major_formatter(FuncFormatter(_plain_number))
            ax2.xaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
        ax2.set_xlabel("duration multiplier (> 1 = slower client)")
        ax2.set_ylabel("accepted updates")
        ax2.set_title("Accepted updates vs client speed")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize="small", loc="upper right")
    fig.suptitle(f"Per-client contribution — {_run_name(result.scenario)}")
    return fig


def online_clients(result: ResultLike) -> Figure:
    """Clients online over simulated time (top) with the test accuracy beneath (same time axis).

    The top panel is the count of clients online (``clients.availability``), a step function from
    the run's switches (``availability.parquet``), with the scenario's expected count (clients ×
    the model's long-run online share, when it has one) dashed; the bottom panel is the mean test
    accuracy over servers or tasks (the loss for regression; left out for timing-only runs).
    """
    result = _as_result(result)
    times, counts = online_counts(result)
    end = _run_end(result)
    curve = _metric_curve(result, "accuracy")
    metric = "accuracy"
    if curve is None:
        curve, metric = _metric_curve(result, "loss"), "loss"
    panels = 2 if curve is not None else 1
    fig = Figure(figsize=(9, 2.6 + 2.4 * panels), layout="constrained")
    axes = np.atleast_1d(fig.subplots(panels, 1, sharex=True, height_ratios=[1, 1.2][:panels]))
    ax = axes[0]
    n = result.scenario.clients.count
    ax.step(
        np.append(times, end),
        np.append(counts, counts[-1]),
        where="post",
        color="C2",
        lw=1.6,
        label="clients online",
    )
    ax.fill_between(
        np.append(times, end), np.append(counts, counts[-1]), step="post", color="C2", alpha=0.15
    )
    expected = _expected_online(result.scenario)
    if expected is not None:
        ax.axhline(expected * n, color="0.3", ls="--", lw=1, label=f"expected ({expected:.0%})")
    ax.set_ylim(0, n * 1.05)
    ax.set_ylabel(f"clients online (of {n:,})")
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(f"Clients online and {metric} — {_run_name(result.scenario)}")
    if curve is not None:
        t, y = curve
        axes[1].plot(t, y, color="C0", lw=1.8, marker="o", ms=2.5)
        axes[1].set_ylabel("test accuracy" if metric == "accuracy" else "test loss")
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlim(0, end or 1.0)
    _time_axis(axes[-1])
    return fig


def _expected_online(scenario: Scenario) -> float | None:
    """The long-run share of time a client is online, where the scenario says it (diurnal, Markov)."""
    config = scenario.clients.availability
    if config.kind == "always":
        return 1.0
    if config.kind == "diurnal":
        return float(config.on_fraction)
    if config.kind == "markov":
        return config.online.mean / (config.online.mean + config.offline.mean)
    return None


def participation(result: ResultLike) -> Figure:
    """Accepted updates of each client against the share of the run it was online.

    One dot per client (``clients.parquet``'s ``online_s`` over the run's length against its
    applied or buffered updates in the events), and the mean per tenth of online share: how much
    availability, rather than speed, decides who trains the model.
    """
    result = _as_result(result)
    facts = client_facts(result)
    end = _run_end(result)
    share = facts["online_s"].to_numpy(float) / (end or 1.0)
    accepted = _per_client_counts(result)["accepted"].to_numpy()
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    small = len(share) <= 2000
    ax.scatter(
        share,
        accepted,
        s=14 if small else 4,
        color="C0",
        alpha=0.6,
        lw=0,
        rasterized=not small,
        label="clients",
    )
    group = np.clip((share * 10).astype(int), 0, 9)
    _group_means(ax, group, share, accepted, "mean per tenth of online share")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("share of the run online")
    ax.set_ylabel("accepted updates (applied or buffered)")
    ax.set_title(f"Participation against availability — {_run_name(result.scenario)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return fig


def client_label_counts(run: ResultLike | Scenario, *, task: int = 0) -> np.ndarray:
    """Samples of each class held by each client, shape ``(n_clients, n_classes)``, as the run
    partitioned its data (``clients.parquet``; ``task`` of a multi-task run).

    Given a :class:`~fedsim.scenario.Scenario` not run yet, the partition a run of it would draw
    is built (:func:`fedsim.world.partition_label_counts`; this loads the dataset)."""
    from fedsim.scenario import Scenario

    if isinstance(run, Scenario):
        from fedsim.world import partition_label_counts

        return partition_label_counts(run)
    result = _as_result(run)
    counts = client_facts(result, task)["label_counts"]
    if counts.isna().any():
        what = "timing-only run" if result.scenario.training is None else "regression dataset"
        raise ValueError(f"{_run_name(result.scenario)}: no class labels (a {what})")
    return np.stack([np.asarray(c, dtype=np.int64) for c in counts])


def _span(values: np.ndarray) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def label_distribution(
    partition: Sequence[np.ndarray] | np.ndarray,
    *,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Heat map of a partition: samples of each class (rows) held by each client (columns).

    ``partition`` is either a list with each client's label array, or a 2-D array of counts
    ``[n_clients, n_classes]`` (e.g. :func:`client_label_counts`). Cells are annotated with their
    count when there are at most 300 of them.
    """
    if isinstance(partition, np.ndarray) and partition.ndim == 2:
        counts = partition.astype(int)
    else:
        arrays = [np.asarray(p, dtype=int).ravel() for p in partition]
        if not arrays:
            raise ValueError("empty partition")
        k = n_classes or 1 + max((int(a.max()) for a in arrays if len(a)), default=0)
        counts = np.stack([np.bincount(a, minlength=k) for a in arrays])
    n_clients, k = counts.shape
    fig = Figure(
        figsize=(min(16.0, max(6.5, 3.0 + 0.22 * n_clients)), 1.9 + 0.36 * k), layout="constrained"
    )
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")
    shown = np.ma.masked_equal(counts.T, 0)  # a class a client does not hold at all is white
    image = ax.imshow(
        shown, aspect="auto", cmap=cmap, interpolation="nearest", vmin=min(1, counts.max())
    )
    cbar = fig.colorbar(image, ax=ax, pad=0.01)
    cbar.set_label("samples (white = none)")
    cbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("client")
    ax.set_ylabel("class (label)")
    ax.set_yticks(range(k))
    ax.set_yticklabels(class_names if class_names is not None else [str(c) for c in range(k)])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_clients, 20)))
    if counts.size <= 300:
        threshold = counts.min() + 0.6 * (counts.max() - counts.min())
        for (c, j), v in np.ndenumerate(counts):
            if v:
                ax.text(
                    c,
                    j,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if v > threshold else "white",
                )
    sizes = counts.sum(axis=1)
    held = (counts > 0).sum(axis=1)
    ax.set_title(
        title
        or f"Label distribution — {n_clients} clients × {k} classes\n{sizes.sum():,} samples, "
        f"{_span(sizes)} per client, {held.mean():.1f} classes per client on average"
    )
    return fig


# ---------------------------------------------------------------------------------------------------
# The standard set


def standard_figures(result: ResultLike) -> dict[str, Figure]:
    """The figures written for every run: ``accuracy`` (mean over servers or tasks; left out when
    the run recorded no finite accuracy, e.g. ``training: none``), else ``loss`` (regression),
    ``tasks`` (per-task accuracy of multi-task runs), ``consensus`` (consensus error of multi-server
    runs), ``staleness`` (left out when no update was accepted), ``timeline`` (first 20 clients),
    ``contribution`` (with the clients' speeds) and, for runs with ``clients.availability``,
    ``online`` (:func:`online_clients`) and ``participation``. A run directory written before
    fedsim recorded its clients gets these without the clients' facts, and a warning."""
    result = _as_result(result)
    figures: dict[str, Figure] = {}
    if has_metric(result, "accuracy"):
        figures["accuracy"] = accuracy_vs_time(result)
    elif has_metric(result, "loss"):
        figures["loss"] = accuracy_vs_time(result, metric="loss")
    evals = result.evals
    if "task" in evals and evals["task"].nunique() > 1:
        from fedsim import plots_tasks

        figures["tasks"] = plots_tasks.task_accuracy(result)
    if "consensus_error" in evals and evals["consensus_error"].notna().any():
        from fedsim import plots_network

        figures["consensus"] = plots_network.consensus_error_vs_time(result)
    if _accepted(result.events).shape[0]:
        figures["staleness"] = staleness(result)
    figures["timeline"] = client_timeline(result)
    try:
        speeds = client_speeds(result)
    except ScenarioError as exc:  # a run directory from before clients.parquet
        warnings.warn(f"contribution drawn without speeds: {exc}", stacklevel=2)
        speeds = None
    figures["contribution"] = client_contribution(result, speeds=speeds)
    if result.scenario.clients.availability.kind != "always" and speeds is not None:
        figures["online"] = online_clients(result)
        figures["participation"] = participation(result)
    return figures


def save_standard_figures(
    result: ResultLike, directory: str | Path, *, dpi: int = 120
) -> dict[str, Path]:
    """Write :func:`standard_figures` as ``DIRECTORY/<name>.png``; returns name → path.

    A standard PNG left in ``directory`` by an earlier run that this run does not produce (e.g. an old
    ``accuracy.png`` next to a timing-only run) is removed, so the directory never mixes runs.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, fig in standard_figures(result).items():
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        written[name] = path
    for name in STANDARD_FIGURES:
        if name not in written:
            (directory / f"{name}.png").unlink(missing_ok=True)
    return written
