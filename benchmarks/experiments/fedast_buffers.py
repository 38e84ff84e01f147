"""FedAST where buffers and Realloc have room: the buffer and Realloc ablations, two delay laws.

At the shipped budget of ``scenarios/fedast_multitask.yaml`` (24 busy clients, ``buffer_ratio: 8``,
3 tasks) every task starts with 8 requests, so its buffer is ``ceil(8/8) = 1`` and Realloc, which
keeps ``unit = 8`` requests per task, has ``24 − 3·8 = 0`` requests to move: neither mechanism is
exercised. Here the budget is 48 busy clients with ``buffer_ratio: 4`` (buffers of ``ceil(16/4) =
4`` at the start, 48 − 3·4 = 36 requests Realloc may move), and each arm is run under the shipped
log-normal job times and under the authors' shifted-exponential delay law (same mean, 1 s):

* ``FedAST`` — buffers ``ceil(a_m/4)``, Realloc on;
* ``no Realloc`` — the same buffers, fixed allocation;
* ``no buffer`` — ``buffer_size: 1`` (FedAST-NoBuffer, one server step per arrival), Realloc on.

Per run it records the time to all targets, the largest buffer merged by one server step, and the
requests Realloc moved (summary fields ``largest_buffer`` and ``requests_moved``). Mean ± 95 %
t-intervals over seeds; paired verdicts on the per-seed difference.

    python benchmarks/experiments/fedast_buffers.py --seeds 0 1 2 3 4 --jobs 2 \\
        --out benchmarks/results/fedast_buffers.json

Paper-scale preset (documented, not run here): ``--scale paper`` trains the first task on
CIFAR-10 from local files (``--data-path``) with a CNN, 100 clients and a budget of 90, e.g.
``--scale paper --data-path ~/data/cifar10 --device cuda --seeds 0 1 2 3 4``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import interval, paired, verdict  # noqa: E402

from fedsim.scenario import load_scenario  # noqa: E402
from fedsim.simulation import Simulation  # noqa: E402

SCENARIO = ROOT / "scenarios" / "fedast_multitask.yaml"
DELAYS = {
    "log-normal": {"dist": "lognormal", "mean_s": 1.0, "sigma": 1.0},
    "shifted exponential": {"dist": "shifted_exponential", "shift_s": 0.5, "exp_mean_s": 0.5},
}
"""Job-time laws, both of mean 1 s: the shipped one and the authors' shift + Exp."""
ARMS = {
    "FedAST": {},
    "no Realloc": {"algorithm.realloc": False},
    "no buffer": {"algorithm.buffer_ratio": None, "algorithm.buffer_size": 1},
}
"""Arm → overrides on top of the preset."""
PRESETS = {
    "cpu": {"algorithm.concurrency": 48, "algorithm.buffer_ratio": 4},
    "paper": {
        "algorithm.concurrency": 90,
        "algorithm.buffer_ratio": 4,
        "clients.count": 100,
        "stop.time_s": 20000,
        "dataset": "cifar10",
        "model": {"kind": "cnn"},
    },
}
"""Everything a preset fixes; ``--dataset`` and ``--data-path`` override the first task's data."""


def overrides(preset: dict, arm: str, delay: str, seed: int, time_s: float | None) -> dict:
    out = {k: v for k, v in preset.items() if k not in ("dataset", "model", "data_path")}
    out.update(ARMS[arm])
    out["seed"] = seed
    out["clients.compute"] = DELAYS[delay]
    if time_s is not None:
        out["stop.time_s"] = time_s
    return out


def first_task_swapped(preset: dict) -> list[dict]:
    """The scenario's tasks with the first one on ``--dataset``/``--data-path`` (and its model)."""
    tasks = yaml.safe_load(SCENARIO.read_text(encoding="utf-8"))["algorithm"]["tasks"]
    data = tasks[0]["data"]
    if preset.get("dataset"):
        data["dataset"] = preset["dataset"]
        data["partition"] = {"kind": "dirichlet", "alpha": 0.5}
    if preset.get("data_path"):
        data["path"] = preset["data_path"]
    if preset.get("model"):
        tasks[0]["model"] = preset["model"]
    return tasks


def run_one(task: tuple) -> dict:
    preset, arm, delay, seed, time_s, device = task
    torch.set_num_threads(1)
    merged = overrides(preset, arm, delay, seed, time_s)
    if preset.get("dataset") or preset.get("data_path"):
        merged["algorithm.tasks"] = first_task_swapped(preset)
    scenario = load_scenario(SCENARIO, merged)
    sim = Simulation(scenario, device=device)
    result = sim.run()
    extra = sim.algorithm.summary_extra()
    return {
        "arm": arm,
        "delay": delay,
        "seed": seed,
        "all_targets_s": extra["time_to_all_targets_s"],
        "largest_buffer": extra["largest_buffer"],
        "requests_moved": extra["requests_moved"],
        "jobs": len(result.events),
    }


def _values(rows: list[dict], arm: str, delay: str, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in rows if r["arm"] == arm and r["delay"] == delay}


def table(results: dict) -> str:
    """Time to all targets, largest buffer and requests moved per arm and delay law, and verdicts."""
    rows = results["rows"]
    n = len(results["seeds"])
    lines = [
        f"Mean ± 95 % interval over {n} seeds; budget {results['concurrency']} busy clients, "
        f"buffer_ratio {results['buffer_ratio']}. Largest buffer: most deltas one server step "
        "merged (max over tasks); moved: requests Realloc moved from one task to another.",
        "",
        "| delay law | arm | all targets (s) | largest buffer | requests moved | jobs |",
        "|---|---|---|---|---|---|",
    ]
    for delay in results["delays"]:
        for arm in results["arms"]:
            runs = [r for r in rows if r["arm"] == arm and r["delay"] == delay]
            done = [r["all_targets_s"] for r in runs if r["all_targets_s"] is not None]
            when = interval(done).format(".1f") if done else "never"
            if len(done) < len(runs):
                when += f" ({len(done)}/{len(runs)} seeds)"
            buf = interval([max(r["largest_buffer"]) for r in runs]).format(".1f")
            moved = interval([r["requests_moved"] for r in runs]).format(".1f")
            jobs = interval([r["jobs"] for r in runs]).format(".0f")
            lines.append(f"| {delay} | {arm} | {when} | {buf} | {moved} | {jobs} |")
    lines += [
        "",
        "| delay law | comparison | difference of time to all targets (s) | verdict |",
        "|---|---|---|---|",
    ]
    for delay in results["delays"]:
        base = _values(rows, "FedAST", delay, "all_targets_s")
        for arm in results["arms"][1:]:
            other = _values(rows, arm, delay, "all_targets_s")
            if any(v is None for v in [*base.values(), *other.values()]):
                lines.append(f"| {delay} | FedAST − {arm} | censored | not compared |")
                continue
            diff = paired(base, other)
            word = verdict("FedAST", arm, diff, higher_is_better=False)
            lines.append(f"| {delay} | FedAST − {arm} | {diff.format('+.1f')} | {word} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--scale", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--dataset", default=None, help="first task's dataset (preset's if unset)")
    parser.add_argument("--data-path", default=None, help="local files of --dataset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--time-s", type=float, default=None, help="simulated horizon override")
    parser.add_argument("--delays", nargs="+", choices=sorted(DELAYS), default=list(DELAYS))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "fedast_buffers.json"
    )
    parser.add_argument(
        "--table", type=Path, default=None, help="print the table of a results file"
    )
    args = parser.parse_args(argv)
    if args.table is not None:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    preset = dict(PRESETS[args.scale])
    if args.dataset is not None:
        preset["dataset"] = args.dataset
    if args.data_path is not None:
        preset["data_path"] = args.data_path
    tasks = [
        (preset, arm, delay, seed, args.time_s, args.device)
        for delay in args.delays
        for arm in ARMS
        for seed in args.seeds
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_one, tasks))
    results = {
        "command": "python " + " ".join(sys.argv),
        "scale": args.scale,
        "device": args.device,
        "seeds": args.seeds,
        "concurrency": preset["algorithm.concurrency"],
        "buffer_ratio": preset["algorithm.buffer_ratio"],
        "delays": args.delays,
        "arms": list(ARMS),
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
