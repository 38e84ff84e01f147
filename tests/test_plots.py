"""fedsim.plots on small real runs: every function returns a Figure with the expected axes, labels,
legend entries and artists."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

import fedsim
from fedsim import plots
from fedsim.availability import Diurnal
from fedsim.rng import SeedStreams

TIME = "simulated time (s)"


def _learning(seed: int, **algorithm) -> dict:
    return {
        "name": "tiny",
        "seed": seed,
        "stop": {"time_s": 20},
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "model": {"kind": "mlp", "hidden": [16]},
        "training": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
        "clients": {"count": 10, "compute": {"dist": "exponential", "mean_s": 2.0}},
        "algorithm": {"name": "fedasync", "concurrency": 3, **algorithm},
        "eval": {"every_s": 5.0},
    }


def _timing(**overrides) -> dict:
    scenario = {
        "name": "timing",
        "seed": 1,
        "stop": {"time_s": 200},
        "training": "none",
        "clients": {
            "count": 30,
            "compute": {"dist": "constant", "mean_s": 2.0},
            "heterogeneity": {"dist": "lognormal", "sigma": 0.5},
            "stragglers": {"fraction": 0.2, "slowdown": 10.0},
            "dropout": {"prob": 0.1},
            "network": {"latency_s": 0.2},
        },
        "algorithm": {"name": "fedasync", "concurrency": 6},
        "eval": {"every_s": 20.0},
    }
    scenario.update(overrides)
    return scenario


@pytest.fixture(scope="module")
def runs():
    """Three tiny learning runs (two seeds of one scenario, one FedBuff) and three timing-only runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention
    try:
        out = {
            "a0": fedsim.run(_learning(0), save=False),
            "a1": fedsim.run(_learning(1), save=False),
            "b": fedsim.run(_learning(0, name="fedbuff", buffer_size=2), save=False),
            "async": fedsim.run(_timing(), save=False),
            "async_slow": fedsim.run(_timing(), {"clients.stragglers.fraction": 0.5}, save=False),
            "fedavg": fedsim.run(
                _timing(
                    algorithm={
                        "name": "fedavg",
                        "cohort_size": 5,
                        "deadline_s": 6.0,
                        "over_selection": 0.4,
                        "min_fraction": 0.4,
                    }
                ),
                save=False,
            ),
        }
    finally:
        torch.set_num_threads(threads)
    return out


def _legend_texts(fig: Figure) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _collections(ax, kind) -> list:
    return [c for c in ax.collections if isinstance(c, kind)]


# -- accuracy -----------------------------------------------------------------------------------------


def test_accuracy_groups_seeds_into_a_band(runs):
    a0, a1, b = runs["a0"], runs["a1"], runs["b"]
    fig = plots.accuracy_vs_time([a0, a1, b])
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xlabel() == TIME
    assert "accuracy" in ax.get_ylabel()
    assert "tiny" in ax.get_title()
    texts = _legend_texts(fig)
    assert len(texts) == 2  # the two seeds share one entry
    assert "2 seeds" in texts[0] and "fedbuff" in texts[1]
    assert len(ax.get_lines()) == 2
    bands = _collections(ax, PolyCollection)
    assert len(bands) == 1  # only the seed group has a band
    # Both seeds evaluate at the same times, so the mean line is the plain average.
    mean_line = ax.get_lines()[0]
    expected = (a0.evals["accuracy"].to_numpy() + a1.evals["accuracy"].to_numpy()) / 2
    np.testing.assert_allclose(mean_line.get_ydata(), expected)
    lo, hi = (
        bands[0].get_paths()[0].vertices[:, 1].min(),
        bands[0].get_paths()[0].vertices[:, 1].max(),
    )
    assert lo < expected.min() + 1e-9 and hi > expected.max() - 1e-9


def test_accuracy_with_labels_and_loss(runs):
    rs = [runs["a0"], runs["a1"], runs["b"]]
    fig = plots.accuracy_vs_time(rs, labels=["s0", "s1", "buff"])
    (ax,) = fig.axes
    assert _legend_texts(fig) == ["s0", "s1", "buff"]
    assert len(ax.get_lines()) == 3 and not _collections(ax, PolyCollection)
    loss = plots.accuracy_vs_time(rs, metric="loss")
    assert "loss" in loss.axes[0].get_ylabel()
    with pytest.raises(ValueError, match="labels"):
        plots.accuracy_vs_time(rs, labels=["only one"])
    with pytest.raises(ValueError, match="metric"):
        plots.accuracy_vs_time(rs, metric="f1")


def test_accuracy_of_timing_only_runs_is_refused(runs):
    assert not plots.has_metric(runs["async"])
    with pytest.raises(ValueError, match="timing-only"):
        plots.accuracy_vs_time(runs["async"])
    # A timing-only run among learning runs is left out.
    fig = plots.accuracy_vs_time([runs["a0"], runs["async"]])
    assert len(_legend_texts(fig)) == 1


# -- staleness ----------------------------------------------------------------------------------------


def test_staleness_histogram_and_cdf(runs):
    fig = plots.staleness([runs["a0"], runs["a1"], runs["b"]])
    ax_h, ax_c = fig.axes
    assert "staleness" in ax_h.get_xlabel() and "staleness" in ax_c.get_xlabel()
    assert "share of updates" in ax_h.get_ylabel()
    texts = _legend_texts(fig)
    assert len(texts) == 2 and "2 seeds" in texts[0]
    assert len(ax_h.patches) == 2  # one step histogram per group
    assert len(ax_c.get_lines()) == 2
    for line in ax_c.get_lines():
        assert line.get_ydata()[-1] == pytest.approx(1.0)
    # The pooled mean in the legend is the mean over both seeds' accepted updates.
    pooled = pd.concat([runs["a0"].events, runs["a1"].events])
    mean = pooled.loc[pooled["status"].isin(["applied", "buffered"]), "staleness"].mean()
    assert f"mean {mean:.1f}" in texts[0]


def test_groups_that_differ_in_a_key_are_told_apart(runs):
    fig = plots.staleness([runs["async"], runs["async_slow"]])
    texts = _legend_texts(fig)
    assert len(texts) == 2
    assert "clients.stragglers.fraction=0.2" in texts[0]
    assert "clients.stragglers.fraction=0.5" in texts[1]


def test_staleness_over_time(runs):
    fig = plots.staleness_over_time(runs["async"])
    (ax,) = fig.axes
    assert ax.get_xlabel() == "arrival time (simulated s)"
    assert "staleness" in ax.get_ylabel()
    assert len(_legend_texts(fig)) == 3  # updates, band, mean
    accepted = runs["async"].events["status"].isin(["applied", "buffered"]).sum()
    (dots,) = _collections(ax, PathCollection)
    assert len(dots.get_offsets()) == accepted
    # FedAvg with a deadline has late reports: drawn too, with their own legend entry.
    late = (runs["fedavg"].events["status"] == "late").sum()
    assert late > 0
    fig = plots.staleness_over_time(runs["fedavg"])
    assert any(t.startswith(f"late, not used ({late:,})") for t in _legend_texts(fig))


# -- time to target -----------------------------------------------------------------------------------


def test_time_to_target_s_from_evals(runs):
    r = runs["a0"]
    evals = r.evals
    target = float(evals["accuracy"].iloc[len(evals) // 2])
    t = plots.time_to_target_s(r, target)
    assert t == evals.loc[evals["accuracy"] >= target, "sim_time"].min()
    assert math.isnan(plots.time_to_target_s(r, float(evals["accuracy"].max()) + 1e-6))
    table = plots.time_to_target_table([runs["a0"], runs["a1"], runs["b"]], target)
    assert list(table.columns) == [
        "clients.stragglers.fraction",
        "algorithm",
        "seed",
        "name",
        "time_to_target_s",
    ]
    assert table["algorithm"].tolist() == ["fedasync", "fedasync", "fedbuff"]
    assert table["time_to_target_s"].iloc[0] == t


def test_time_to_target_one_line_per_algorithm():
    rows = []
    for algorithm, base in (("fedavg", 200.0), ("fedasync", 120.0), ("fedbuff", 90.0)):
        for fraction in (0.0, 0.1, 0.3):
            for seed in range(3):
                value = base * (1 + fraction) + seed
                if algorithm == "fedavg" and fraction == 0.3:
                    value = math.nan  # never reached
                rows.append(
                    {
                        "straggler_fraction": fraction,
                        "algorithm.name": algorithm,
                        "seed": seed,
                        "time_to_target_s": value,
                    }
                )
    table = pd.DataFrame(rows)
    fig = plots.time_to_target(table, x="straggler_fraction", target=0.8)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "straggler fraction (share of clients)"
    assert ax.get_ylabel() == "time to target accuracy (simulated s)"
    assert "0.8" in ax.get_title()
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3
    assert _legend_texts(fig) == ["fedavg", "fedasync", "fedbuff", "target never reached"]
    fedasync_line = bars[1].lines[0]
    np.testing.assert_allclose(fedasync_line.get_ydata(), [121.0, 133.0, 157.0])
    with pytest.raises(KeyError, match="lacks"):
        plots.time_to_target(table, x="slowdown")


# -- clients ------------------------------------------------------------------------------------------


def test_client_speeds_are_the_runs_multipliers(runs):
    r = runs["async"]
    speeds = plots.client_speeds(r)
    assert speeds.shape == (30,)
    # Constant compute law: every job's compute time is exactly speed × 2 s.
    np.testing.assert_allclose(r.events["compute_s"], speeds[r.events["client"]] * 2.0)


def test_attackers_speeds_in_the_plots_are_the_traces(tmp_path):
    """Slowed attackers (byzantine.speed) are drawn at the speed they ran at (issue 15: the
    plots used to draw them again from the seed at full speed)."""
    attacked = _timing(byzantine={"fraction": 0.3, "speed": 3.0}, stop={"time_s": 300})
    fedsim.run(attacked, out=tmp_path / "run")
    r = fedsim.Result.load(tmp_path / "run")
    speeds = plots.client_speeds(r)
    jobs = r.events
    bad = jobs["byzantine"].to_numpy()
    assert bad.any() and (~bad).any()
    # The trace's own speeds: constant 2 s compute law, no slow jobs.
    traced = jobs.groupby("client")["compute_s"].first() / 2.0
    np.testing.assert_allclose(speeds[traced.index], traced.to_numpy())
    # The attackers are 3× slower than the same clients in the scenario without attackers.
    honest = plots.client_speeds(fedsim.run(_timing(stop={"time_s": 1}), save=False))
    attackers = np.flatnonzero(r.clients["byzantine"])
    np.testing.assert_allclose(speeds[attackers], 3.0 * honest[attackers])
    fig = plots.client_timeline(r, first_n=30)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    for client in attackers:
        assert labels[client] == f"{client} (×{speeds[client]:.2g})"


def _diurnal_run(tmp_path):
    diurnal = {"kind": "diurnal", "period_s": 40.0, "on_fraction": 0.5, "phase": "spread"}
    scenario = _learning(0)
    scenario["clients"] = {**scenario["clients"], "availability": diurnal}
    scenario["stop"] = {"time_s": 80}
    fedsim.run(scenario, out=tmp_path / "diurnal")
    return fedsim.Result.load(tmp_path / "diurnal")


def test_online_clients_with_the_accuracy_beneath(tmp_path):
    r = _diurnal_run(tmp_path)
    times, counts = plots.online_counts(r)
    # Against the diurnal model itself: client i is online on [φ_i + 40k, φ_i + 40k + 20).
    assert len(r.availability) > 10
    model = Diurnal(r.scenario.clients.availability, 10, SeedStreams(r.scenario.seed))
    phase = np.asarray(model.phase)
    probe = np.linspace(0.5, 79.5, 80)
    walked = [counts[np.searchsorted(times, t, side="right") - 1] for t in probe]
    expected = [int((((t - phase) % 40.0) < 20.0).sum()) for t in probe]
    np.testing.assert_array_equal(walked, expected)
    fig = plots.online_clients(r)
    top, bottom = fig.axes
    assert top.get_ylabel() == "clients online (of 10)"
    assert bottom.get_ylabel() == "test accuracy" and bottom.get_xlabel() == TIME
    assert any("expected (50%)" in t for t in _legend_texts(fig))


def test_participation_and_offline_spans(tmp_path):
    r = _diurnal_run(tmp_path)
    fig = plots.participation(r)
    (ax,) = fig.axes
    (dots, *_) = _collections(ax, PathCollection)
    xy = dots.get_offsets()
    np.testing.assert_allclose(xy[:, 0], r.clients["online_s"] / 80.0)
    assert 0.4 < xy[:, 0].mean() < 0.6  # half of each 40 s day online, 2 days
    accepted = r.events[r.events["status"].isin(["applied", "buffered"])]
    np.testing.assert_array_equal(xy[:, 1], np.bincount(accepted["client"], minlength=10))
    spans = plots.offline_spans(r, range(10))
    for client, items in spans.items():
        offline = sum(b - a for a, b in items)
        assert offline == pytest.approx(80.0 - r.clients["online_s"].iloc[client])
    timeline = plots.client_timeline(r, first_n=10)
    (ax,) = timeline.axes
    hatched = next(c for c in ax.collections if c.get_label() == "offline")
    assert len(hatched.get_paths()) == sum(len(v) for v in spans.values())
    assert "offline" in _legend_texts(timeline)
    written = plots.save_standard_figures(r, tmp_path / "plots", dpi=30)
    assert {"online", "participation"} <= set(written)


def test_client_timeline(runs):
    r = runs["fedavg"]
    statuses = set(r.events["status"])
    assert {"dropped", "cancelled", "late", "applied"} <= statuses
    fig = plots.client_timeline(r, first_n=8)
    (ax,) = fig.axes
    assert ax.get_xlabel() == TIME
    assert ax.get_ylabel() == "client (duration multiplier)"
    assert len(ax.get_yticks()) == 8
    assert "fedavg" in ax.get_title() and "timing" in ax.get_title()
    texts = _legend_texts(fig)
    for expected in ("communication", "local compute", "dropped", "cancelled", "late", "idle"):
        assert any(expected in t for t in texts), expected
    ev = r.events[r.events["client"] < 8]
    used = (
        ev["status"]
        .isin(["applied", "late", "rejected", "abandoned", "buffered", "in_flight"])
        .sum()
    )
    compute = next(c for c in ax.collections if c.get_label() == "local compute")
    assert len(compute.get_paths()) == used
    lost = next(c for c in ax.collections if c.get_label() == "compute of a dropped job")
    assert len(lost.get_paths()) == (ev["status"] == "dropped").sum()
    # Segments never go past the moment the job ended (cancelled jobs stop where they were cancelled)
    # and never start before its dispatch.
    xs = np.concatenate([p.vertices[:, 0] for c in ax.collections for p in c.get_paths()])
    assert xs.max() <= ev["sim_time"].max() + 1e-9
    assert xs.min() >= ev["dispatched_at"].min() - 1e-9


def test_client_timeline_of_an_async_run(runs):
    fig = plots.client_timeline(runs["async"], first_n=30, time_range=(50, 100))
    (ax,) = fig.axes
    assert ax.get_xlim() == (50, 100)
    assert not any("cancelled" in t for t in _legend_texts(fig))


def test_client_contribution(runs):
    r = runs["fedavg"]
    fig = plots.client_contribution(r)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "client" and ax.get_ylabel() == "jobs"
    heights = {c.get_label(): sum(p.get_height() for p in c) for c in ax.containers}
    counts = r.events["status"].value_counts()
    assert heights["accepted (applied or buffered)"] == counts.get("applied", 0) + counts.get(
        "buffered", 0
    )
    assert heights["dropped"] == counts["dropped"]

    fig = plots.client_contribution(r, speeds=plots.client_speeds(r))
    assert len(fig.axes) == 2
    ax2 = fig.axes[1]
    assert ax2.get_xlabel().startswith("duration multiplier")
    dots = sum(len(c.get_offsets()) for c in _collections(ax2, PathCollection))
    assert dots == r.scenario.clients.count
    assert any("stragglers" in t for t in _legend_texts(fig))
    with pytest.raises(ValueError, match="shape"):
        plots.client_contribution(r, speeds=[1.0, 2.0])


def test_label_distribution(runs):
    counts = plots.client_label_counts(runs["a0"])
    assert counts.shape == (10, 10)
    assert counts.sum() == 1797 - round(0.2 * 1797)
    fig = plots.label_distribution(counts)
    assert len(fig.axes) == 2  # heat map and colour bar
    ax = fig.axes[0]
    assert ax.get_xlabel() == "client" and ax.get_ylabel() == "class (label)"
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert image.get_array().shape == (10, 10)
    # From per-client label arrays: the same picture.
    labels = [np.repeat(np.arange(10), row) for row in counts]
    again = plots.label_distribution(labels)
    (image2,) = [a for a in again.axes[0].get_children() if isinstance(a, AxesImage)]
    np.testing.assert_array_equal(image2.get_array().filled(0), counts.T)


# -- the standard set ---------------------------------------------------------------------------------


def test_save_standard_figures(runs, tmp_path):
    written = plots.save_standard_figures(runs["a0"], tmp_path / "plots", dpi=40)
    assert set(written) == {"accuracy", "staleness", "timeline", "contribution"}
    for name, path in written.items():
        assert path == tmp_path / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_standard_figures_skip_accuracy_of_a_timing_only_run(tmp_path):
    run_dir = tmp_path / "run"
    fedsim.run(_timing(), out=run_dir)  # from a run directory, as `fedsim plot` will
    plots_dir = run_dir / "plots"
    plots_dir.mkdir()
    (plots_dir / "accuracy.png").write_bytes(b"stale")  # left by an earlier learning run
    written = plots.save_standard_figures(run_dir, plots_dir, dpi=40)
    assert set(written) == {"staleness", "timeline", "contribution"}
    assert sorted(p.name for p in plots_dir.iterdir()) == [
        "contribution.png",
        "staleness.png",
        "timeline.png",
    ]


def test_no_pyplot_state(runs):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figs = [plots.staleness(runs["async"]), plots.client_timeline(runs["async"], first_n=5)]
    assert plt.get_fignums() == before
    assert all(isinstance(f, Figure) for f in figs)
    assert matplotlib.get_backend()  # any backend works; nothing was shown
