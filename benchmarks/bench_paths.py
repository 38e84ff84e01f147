"""Client updates per second of the three training paths, at 1, 10 and 100 pending jobs.

The three paths of docs/models-and-data.md ("Your own model"), each as fedsim picks it:

- ``stacked``: the built-in MLP (``model: {kind: mlp, hidden: [64]}``), ``training.backend:
  batched``;
- ``vmap``: an imported functional MLP of the same shape (a module class of the user's, which has
  no stacked form; the probe sends it to ``torch.func.vmap``), ``training.backend: batched``;
- ``loop``: the same imported MLP with ``training.backend: sequential`` (one job at a time: the
  path every model with buffers, dropout or BatchNorm takes).

Every path trains the same jobs (clients, start point, seeds) in one process, one flush of
``pending`` jobs at a time (as ``benchmarks/bench_trainer.py`` does), the paths taking turns flush
by flush so that a load change on the shared machine hits them alike. Each cell is ``pending`` /
the median flush time over ``--repeats`` flushes. Issue 12's goal: the vmap path ≥ 3× the loop at
100 pending on a CPU. Example (the docs' table):

    python benchmarks/bench_paths.py --out benchmarks/results/paths.json
    python benchmarks/bench_paths.py --table benchmarks/results/paths.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from fedsim.learning.batched import make_trainer
from fedsim.learning.data import DataConfig, load_federated
from fedsim.learning.models import MemoryModelConfig, MLPConfig, build_model, init_params
from fedsim.learning.trainer import LocalTask, TrainingConfig, TrainJob
from fedsim.rng import SeedStreams

COMMAND = "python benchmarks/bench_paths.py --out benchmarks/results/paths.json"
GOAL = 3.0
"""vmap updates/s ≥ GOAL × loop updates/s at the largest pending count."""
PATHS = ("stacked", "vmap", "loop")


class FunctionalMLP(nn.Module):
    """A user's MLP: the built-in ``mlp`` layer for layer, but a class of its own (no stacked form),
    and a pure function of its parameters (no buffers, no dropout), so it takes the vmap path."""

    def __init__(self, input_shape, n_outputs, hidden=64):
        super().__init__()
        n_in = 1
        for d in input_shape:
            n_in *= d
        self.hidden = nn.Linear(n_in, hidden)
        self.out = nn.Linear(hidden, n_outputs)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.reshape(x.shape[0], -1))))


def _trainers(args: argparse.Namespace, data, training: TrainingConfig, streams: SeedStreams):
    """path → (trainer, initial parameters); checks that fedsim picks the path named."""
    builtin, spec = build_model(MLPConfig(hidden=[args.hidden]), data.info)
    mine, my_spec = build_model(
        MemoryModelConfig(kwargs={"hidden": args.hidden}), data.info, module=FunctionalMLP
    )
    if spec.numel != my_spec.numel:
        raise SystemExit(f"the two MLPs differ: {spec.numel} vs {my_spec.numel} parameters")
    w_builtin = init_params(spec, streams.torch_generator("model.init"))
    w_mine = init_params(my_spec, streams.torch_generator("model.init"))
    task, my_task = (
        LocalTask(builtin, spec, data, training),
        LocalTask(mine, my_spec, data, training),
    )
    out = {
        "stacked": (make_trainer(task, "batched"), w_builtin),
        "vmap": (make_trainer(my_task, "batched"), w_mine),
        "loop": (make_trainer(my_task, "sequential"), w_mine),
    }
    for path, (trainer, _) in out.items():
        if trainer.training_path.path != path:
            raise SystemExit(f"expected the {path} path, got {trainer.training_path}")
    return out, spec.numel


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    streams = SeedStreams(args.seed)
    data = load_federated(
        DataConfig(partition={"kind": "iid"}), args.clients, streams, torch.device("cpu")
    )
    training = TrainingConfig(local_steps=args.steps, batch_size=args.batch, lr=0.05)
    trainers, numel = _trainers(args, data, training, streams)
    next_id = 0

    def flush(path: str, k: int) -> float:
        nonlocal next_id
        trainer, w0 = trainers[path]
        jobs = [
            TrainJob(i, i % args.clients, w0, streams.sequence("training.job", i))
            for i in range(next_id, next_id + k)
        ]
        next_id += k
        t0 = time.perf_counter()
        handles = [trainer.submit(job) for job in jobs]
        for h in handles:
            h.result()
        return time.perf_counter() - t0

    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for n in args.pending:
        for path in PATHS:
            flush(path, min(n, 16))  # warm-up (vmap tracing, allocator)
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        for r in range(args.repeats):
            order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
            for path in order:
                times[path].append(flush(path, n))
        median = {p: statistics.median(t) for p, t in times.items()}
        rows.append(
            {
                "pending": n,
                "flush_s": {p: [round(x, 5) for x in t] for p, t in times.items()},
                "median_flush_s": {p: round(m, 5) for p, m in median.items()},
                "updates_per_s": {p: round(n / m, 1) for p, m in median.items()},
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
        )
        print(n, rows[-1]["updates_per_s"], file=sys.stderr, flush=True)
    largest = rows[-1]["updates_per_s"]
    ratio = largest["vmap"] / largest["loop"]
    return {
        "command": COMMAND,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "device": "cpu",
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared with other developers' test runs while measured (see the load average)",
        },
        "workload": {
            "dataset": "digits",
            "clients": args.clients,
            "partition": "iid",
            "model": f"MLP 64-{args.hidden}-10 ({numel:,} parameters)",
            "local_steps": args.steps,
            "batch_size": args.batch,
            "paths": {
                "stacked": "built-in mlp, training.backend batched",
                "vmap": "imported FunctionalMLP, training.backend batched",
                "loop": "imported FunctionalMLP, training.backend sequential",
            },
        },
        "repeats": args.repeats,
        "seconds": round(time.perf_counter() - started, 1),
        "goal": f"vmap >= {GOAL:g} x loop at {rows[-1]['pending']} pending (medians)",
        "vmap_over_loop": round(ratio, 2),
        "goal_met": ratio >= GOAL,
        "rows": rows,
    }


def table(results: dict) -> str:
    """The markdown table of docs/performance.md ("The three training paths") for ``results``."""
    lines = [
        "| pending | stacked updates/s | vmap updates/s | loop updates/s | vmap / loop | "
        "stacked / loop | load avg (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        u = row["updates_per_s"]
        lines.append(
            f"| {row['pending']} | {u['stacked']:,.0f} | {u['vmap']:,.0f} | {u['loop']:,.0f} | "
            f"{u['vmap'] / u['loop']:.2f}× | {u['stacked'] / u['loop']:.2f}× | "
            f"{row['loadavg'][0]:.1f} |"
        )
    m = results["machine"]
    lines.append("")
    lines.append(
        f"{results['workload']['model']}, {results['workload']['local_steps']} local steps, batch "
        f"{results['workload']['batch_size']}, {results['workload']['clients']} clients; CPU "
        f"({m['processor']}), {m['cores']} cores, {m['threads']} torch thread(s), torch "
        f"{m['torch']}; median of {results['repeats']} flushes per cell; {results['date_utc']} "
        f"UTC. Goal ({results['goal']}): **{'met' if results['goal_met'] else 'missed'}** "
        f"({results['vmap_over_loop']:.2f}×)."
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, help="write the results (JSON) here")
    p.add_argument("--table", type=Path, help="print the docs table of a results file")
    p.add_argument("--pending", type=int, nargs="+", default=[1, 10, 100], help="jobs per flush")
    p.add_argument("--repeats", type=int, default=5, help="flushes per path and pending count")
    p.add_argument("--steps", type=int, default=10, help="local steps per job")
    p.add_argument("--batch", type=int, default=32, help="mini-batch size")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of both MLPs")
    p.add_argument("--clients", type=int, default=40, help="clients (digits: 1438 samples)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.table is not None:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return
    if args.repeats < 3:
        p.error("--repeats must be at least 3")
    results = measure(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
