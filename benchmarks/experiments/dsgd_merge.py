"""Gossip D-SGD and the single global merge against server-based FedAvg (seed 001: arXiv
2507.06542; ALGORITHMS.md §3.10, §5), CPU-sized, over seeds.

Runs ``scenarios/dsgd_merge.yaml`` (16 peers on digits, Dirichlet 0.1, MLP, 10 local steps per
round, random-r gossip) and, on the same data split and partition (same seed, 16 clients),
server-based FedAvg with every client in every round and the same local training. Three studies:

- **Training length.** After R rounds (every R in ``--lengths``): FedAvg's model against the model
  one global merge of the D-SGD peers gives after round R (the mean of the 16 peers' models, the
  evals rows with ``server = -1``; ``merge: {final_at: 1}`` would merge instead of round R's
  gossip), with r = 0.2 and r = 0 (no gossip), and the peers' mean local accuracy. One run per scheme and seed up to the longest R; a probe (a
  callback: it records, it changes nothing) evaluates the models when round R is published.
- **Where a fixed communication budget goes** (the paper's dense-window study): r = 0.2 outside a
  window of ``WINDOW`` × R rounds in which every peer averages with every other (r = 15), the
  window opening at π = 0.1, 0.5 or 0.9 (``r: {kind: truncate_v2}``), against r = 0.2
  throughout; no final merge. Same number of messages in the three windows.

Writes ``--out`` (JSON: the command, the seeds, one row per run) and prints :func:`table`. Every
figure is a mean over seeds ± the half-width of its 95 % Student-t interval (stats.py); "A beats
B" only where the interval of the paired difference (same seeds) excludes 0.

    python benchmarks/experiments/dsgd_merge.py --jobs 2 --out benchmarks/results/dsgd_merge.json

``--table FILE`` prints the table of an existing results file (no runs); ``--figure PNG`` draws
it (docs/img/dsgd_merge.png comes from ``--table benchmarks/results/dsgd_merge.json --figure``). ``--scale paper`` is the
authors' Figure-3 shape on CIFAR-10 from local files (32 peers, 100 local steps of batch 128 per
round, 300 rounds, lr 0.01; the paper uses TinyImageNet and a ResNet-18, fedsim a small CNN):

    python benchmarks/experiments/dsgd_merge.py --scale paper --data-path ~/data/cifar10 \
        --device cuda --out benchmarks/results/dsgd_merge_paper.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from censored import command_line, run_all, write_results
from stats import NO_DIFFERENCE, interval, paired, verdict

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "dsgd_merge.yaml"
WINDOW = 0.05
"""Width of the dense window, in progress units (the authors' window_size)."""
WINDOW_STARTS = (0.1, 0.5, 0.9)
EQUIVALENCE = 0.02
"""Two accuracies "match" where the 95 % interval of their paired difference lies within ±this."""
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"seeds": list(range(10)), "lengths": [25, 50, 100, 200, 300], "window_rounds": 100},
    "paper": {"seeds": list(range(5)), "lengths": [50, 100, 200, 300], "window_rounds": 300},
}
PAPER_SETS = {
    "data.dataset": "cifar10",
    "model": {"kind": "cnn"},
    "topology.servers": 32,
    "training.local_steps": 100,
    "training.batch_size": 128,
    "training.lr": 0.01,
}
"""The authors' Figure-3 preset, as far as fedsim's datasets and models go."""
FEDAVG = "FedAvg"
MERGED = "D-SGD r=0.2"
NO_GOSSIP = "D-SGD r=0"
NO_WINDOW = "r = 0.2 throughout"


class AccuracyAt:
    """Callback: when round R (a model version in ``rounds``) is published by the last server,
    the accuracy of the mean of all servers' models (``merged``) and the mean of each server's
    own accuracy (``local``). FedAvg has one server: both are its model's accuracy."""

    def __init__(self, rounds: list[int]) -> None:
        self.rounds = set(rounds)
        self.at: dict[int, dict[str, float]] = {}

    def on_start(self, *, sim: Any) -> None:
        self.sim = sim

    def on_publish(self, *, server: int, version: int) -> None:
        servers = self.sim.servers
        if version not in self.rounds or server != len(servers) - 1:
            return
        import torch

        evaluate = self.sim.evaluator
        models = [s.params for s in servers]
        merged = torch.stack(models).double().mean(0).to(models[0].dtype)
        local = [evaluate(m)[0] for m in models]
        self.at[version] = {
            "merged": evaluate(merged)[0],
            "local": math.fsum(local) / len(local),
            "message_mb": self.sim.message_bytes / 1e6,  # between servers, so far
        }


def _sets(scheme: str, rounds: int, scale: dict[str, Any], start: float | None) -> dict:
    """The scenario overrides of one run of ``scheme`` for ``rounds`` rounds."""
    sets: dict[str, Any] = {**scale, "eval.every_s": 1e9}  # the probe evaluates; no timed evals
    peers = sets.get("topology.servers", 16)
    if scheme == FEDAVG:
        return {
            **{k: v for k, v in sets.items() if k != "topology.servers"},
            "topology": None,
            "clients.count": peers,
            "algorithm": {"name": "fedavg", "cohort_size": peers},
            "stop.time_s": None,
            "stop.max_updates": peers * rounds,
        }
    sets.update({"algorithm.rounds": rounds, "algorithm.merge": None})
    if scheme == NO_GOSSIP:
        sets["algorithm.r.r_start"] = 0.0
    if start is not None:
        sets["algorithm.r"] = {
            "kind": "truncate_v2",
            "r_start": 0.2,
            "r_end": peers - 1,
            "point1": start,
            "window_size": WINDOW,
        }
    return sets


def one_run(task: tuple[str, int, list[int], float | None, dict, str]) -> dict:
    """Run one scheme and seed (in a worker process); return its row."""
    import torch

    import fedsim

    scheme, seed, rounds, start, scale, device = task
    torch.set_num_threads(1)
    probe = AccuracyAt(rounds)
    sets = {**_sets(scheme, max(rounds), scale, start), "seed": seed}
    result = fedsim.run(SCENARIO, sets, save=False, callbacks=[probe], device=device)
    row = {
        "scheme": scheme,
        "window_start": start,
        "seed": seed,
        "rounds": {str(r): probe.at[r] for r in sorted(probe.at)},
        "messages": int((result.events["status"] == "message").sum()),
        "wall_s": round(result.summary["wall_time_s"], 1),
    }
    print(f"{scheme} {start} seed {seed}: {row['rounds']} ({row['wall_s']:.0f} s)", file=sys.stderr)
    return row


def tasks(seeds: list[int], lengths: list[int], window_rounds: int, scale: dict, device: str):
    schemes = (FEDAVG, MERGED, NO_GOSSIP)
    out = [(s, seed, lengths, None, scale, device) for s in schemes for seed in seeds]
    out += [
        (MERGED, seed, [window_rounds], start, scale, device)
        for start in WINDOW_STARTS
        for seed in seeds
    ]
    return out


# -- tables -------------------------------------------------------------------------------------------
def at(rows: list[dict], scheme: str, rounds: int, col: str, start: float | None = None):
    """``{seed: value}`` of ``col`` (merged or local) after ``rounds`` rounds."""
    return {
        r["seed"]: r["rounds"][str(rounds)][col]
        for r in rows
        if r["scheme"] == scheme and r["window_start"] == start and str(rounds) in r["rounds"]
    }


def _ci(values: dict[int, float], fmt: str = ".3f") -> str:
    return interval(list(values.values())).format(fmt)


def _diff(a: dict, b: dict, name_a: str, name_b: str) -> str:
    d = paired(a, b)
    return f"{d.format('+.3f')} | {verdict(name_a, name_b, d)}"


def _status(reached: bool, partly: bool) -> str:
    return "reproduced" if reached else ("partly" if partly else "not reproduced")


def table(results: dict) -> str:
    """The Markdown tables of a results file: accuracy over training length, paired differences,
    the budget windows, and the paper's three claims with a status derived from the verdicts."""
    rows, lengths, wr = results["rows"], results["lengths"], results["window_rounds"]
    n = len(results["seeds"])
    fed = {r: at(rows, FEDAVG, r, "merged") for r in lengths}
    mrg = {r: at(rows, MERGED, r, "merged") for r in lengths}
    loc = {r: at(rows, MERGED, r, "local") for r in lengths}
    zero = {r: at(rows, NO_GOSSIP, r, "merged") for r in lengths}
    lines = [
        f"Test accuracy after R rounds, mean ± 95 % interval over {n} seeds:",
        "",
        f"| R | {FEDAVG} | {MERGED}, merged | {MERGED}, mean local | {NO_GOSSIP}, merged |",
        "|---|---|---|---|---|",
    ]
    for r in lengths:
        lines.append(f"| {r} | {_ci(fed[r])} | {_ci(mrg[r])} | {_ci(loc[r])} | {_ci(zero[r])} |")
    lines += [
        "",
        "Paired differences (same seeds: same split, partition and initial model), 95 % interval:",
        "",
        "| R | FedAvg − merged (r=0.2) | verdict | merged − mean local (r=0.2) | verdict "
        "| merged: r=0.2 − r=0 | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    beats = {"fedavg": {}, "local": {}, "gossip": {}}
    for r in lengths:
        cells = []
        for key, a, b, name_a, name_b in (
            ("fedavg", fed[r], mrg[r], "FedAvg", "D-SGD + merge"),
            ("local", mrg[r], loc[r], "merged", "local"),
            ("gossip", mrg[r], zero[r], "r=0.2", "r=0"),
        ):
            d = paired(a, b)
            beats[key][r] = verdict(name_a, name_b, d)
            cells += [d.format("+.3f"), beats[key][r]]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    first, last = lengths[0], lengths[-1]
    gap = {r: {s: v - mrg[r][s] for s, v in fed[r].items()} for r in (first, last)}
    change = paired(gap[last], gap[first])
    if not change.excludes_zero():
        trend = NO_DIFFERENCE
    else:
        trend = "the gap narrows" if change.mean < 0 else "the gap widens"
    lines += [
        "",
        f"Gap FedAvg − merged (r=0.2) after {last} rounds minus the gap after {first} rounds, "
        f"paired: {change.format('+.3f')} ({trend}).",
        "",
        f"A fixed budget: {wr} rounds, r = 0.2 except in a window of {WINDOW:g} × {wr} = "
        f"{round(WINDOW * wr)} rounds where every peer averages with all others (r = 15); no final "
        "merge. Accuracy after the last round; MB sent between peers (mean over seeds):",
        "",
        "| schedule | MB between peers | merged | mean local | merged − window at π = 0.1 "
        "| verdict |",
        "|---|---|---|---|---|---|",
    ]
    windows = {s: at(rows, MERGED, wr, "merged", s) for s in WINDOW_STARTS}
    early = windows[WINDOW_STARTS[0]]
    for name, start in [(NO_WINDOW, None)] + [(f"window at π = {s:g}", s) for s in WINDOW_STARTS]:
        merged = at(rows, MERGED, wr, "merged", start)
        mb = at(rows, MERGED, wr, "message_mb", start)
        cmp = "— | —" if start == WINDOW_STARTS[0] else _diff(merged, early, name, "π = 0.1")
        lines.append(
            f"| {name} | {math.fsum(mb.values()) / len(mb):.1f} | {_ci(merged)} "
            f"| {_ci(at(rows, MERGED, wr, 'local', start))} | {cmp} |"
        )
    late_middle = paired(windows[WINDOW_STARTS[-1]], windows[WINDOW_STARTS[1]])
    late_early = paired(windows[WINDOW_STARTS[-1]], early)
    said = verdict("π = 0.9", "π = 0.5", late_middle)
    lines += [
        "",
        f"Window at π = 0.9 − window at π = 0.5, merged: {late_middle.format('+.3f')} ({said}).",
        "",
        "The paper's claims against these runs (status from the verdicts above):",
        "",
        "| claim (arXiv 2507.06542) | here | status |",
        "|---|---|---|",
    ]
    d_last = paired(fed[last], mrg[last])
    matches = d_last.low > -EQUIVALENCE and d_last.high < EQUIVALENCE
    lines.append(
        "| one global merge at the end matches server-based training "
        f"| FedAvg − merged after {last} rounds: {d_last.format('+.3f')} ({beats['fedavg'][last]}; "
        f"matching = the whole interval within ±{EQUIVALENCE:g}); change of the gap from {first} "
        f"to {last} rounds: {trend} | {_status(matches, trend == 'the gap narrows')} |"
    )
    merge_wins = sum(beats["local"][r] == "merged beats local" for r in lengths)
    gossip_wins = sum(beats["gossip"][r] == "r=0.2 beats r=0" for r in lengths)
    lines.append(
        "| sparse gossip keeps the local models mergeable (merged ≫ local); r = 0 loses it "
        f"| merged beats local at {merge_wins} of {len(lengths)} lengths; r = 0.2 beats r = 0 at "
        f"{gossip_wins} of {len(lengths)} "
        f"| {_status(merge_wins == gossip_wins == len(lengths), merge_wins + gossip_wins > 0)} |"
    )
    late_wins = [
        verdict("late", "other", d) == "late beats other" for d in (late_early, late_middle)
    ]
    lines.append(
        "| a fixed communication budget spent late beats the same budget spent early "
        f"| π = 0.9 − π = 0.1: {late_early.format('+.3f')}; π = 0.9 − π = 0.5: "
        f"{late_middle.format('+.3f')} | {_status(all(late_wins), any(late_wins))} |"
    )
    return "\n".join(lines)


def figure(results: dict, path: Path) -> None:
    """Accuracy against training length (mean and 95 % band over seeds) and the budget windows."""
    from matplotlib.figure import Figure

    rows, lengths, wr = results["rows"], results["lengths"], results["window_rounds"]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    curves = [
        (FEDAVG, "merged", "FedAvg", "tab:green", "-"),
        (MERGED, "merged", "D-SGD r=0.2, one global merge", "tab:blue", "-"),
        (MERGED, "local", "D-SGD r=0.2, mean local", "tab:blue", "--"),
        (NO_GOSSIP, "merged", "D-SGD r=0, one global merge", "tab:orange", "-"),
    ]
    for scheme, col, label, colour, style in curves:
        ivs = [interval(list(at(rows, scheme, r, col).values())) for r in lengths]
        mean = [iv.mean for iv in ivs]
        ax.plot(lengths, mean, style, color=colour, marker="o", ms=3, label=label)
        ax.fill_between(
            lengths, [iv.low for iv in ivs], [iv.high for iv in ivs], color=colour, alpha=0.15
        )
    ax.set_xlabel("communication rounds R (10 local steps each)")
    ax.set_ylabel("test accuracy after round R")
    ax.set_title(f"Same data and partition; mean and 95 % interval, {len(results['seeds'])} seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    names = ["none", *(f"π = {s:g}" for s in WINDOW_STARTS)]
    ivs = [
        interval(list(at(rows, MERGED, wr, "merged", start).values()))
        for start in (None, *WINDOW_STARTS)
    ]
    bx.bar(names, [iv.mean for iv in ivs], yerr=[iv.half for iv in ivs], color="tab:blue")
    low = min(iv.low for iv in ivs)
    bx.set_ylim(max(0.0, low - 0.05), min(1.0, max(iv.high for iv in ivs) + 0.03))
    bx.set_xlabel(f"where the {round(WINDOW * wr)} rounds of full averaging go ({wr} rounds)")
    bx.set_ylabel("merged accuracy after the last round")
    bx.set_title("A fixed communication budget, early or late")
    bx.grid(True, axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the preset's")
    parser.add_argument("--lengths", type=int, nargs="+", help="rounds R; default: the preset's")
    parser.add_argument("--window-rounds", type=int, help="rounds of the budget study")
    parser.add_argument("--dataset", help="data.dataset (cifar10 with --scale paper)")
    parser.add_argument("--data-path", help="data.path of a dataset read from local files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "dsgd_merge.json"
    )
    parser.add_argument("--table", type=Path, help="print the table of this results file; no runs")
    parser.add_argument("--figure", type=Path, help="also draw the results as this image")
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text(encoding="utf-8"))
        print(table(results))
        if args.figure:
            figure(results, args.figure)
        return
    preset = PRESETS[args.scale]
    seeds = args.seeds or preset["seeds"]
    lengths = sorted(args.lengths or preset["lengths"])
    window_rounds = args.window_rounds or preset["window_rounds"]
    if window_rounds not in lengths:
        lengths = sorted({*lengths, window_rounds})  # r = 0.2 throughout is the budget baseline
    scale = dict(PAPER_SETS) if args.scale == "paper" else {}
    if args.dataset:
        scale["data.dataset"] = args.dataset
    if args.data_path:
        scale["data.path"] = args.data_path
    started = time.perf_counter()
    rows = run_all(one_run, tasks(seeds, lengths, window_rounds, scale, args.device), args.jobs)
    wall = time.perf_counter() - started
    results = {
        "command": command_line(argv),
        "scenario": "scenarios/dsgd_merge.yaml",
        "scale": args.scale,
        "overrides": scale,
        "device": args.device,
        "seeds": seeds,
        "lengths": lengths,
        "window_rounds": window_rounds,
        "wall_s": round(wall, 1),
        "rows": rows,
    }
    write_results(args.out, results)
    print(table(results))
    if args.figure:
        figure(results, args.figure)
    print(f"\n{len(rows)} runs in {wall:.0f} s wall; command: {results['command']}")


if __name__ == "__main__":
    main()
