"""Client updates per second of the trainer backends at a given number of pending jobs.

Every backend trains the same jobs (same clients, start points and seeds) in the same process, so the
ratios in the printed markdown table are measured in one run. Example:

    python benchmarks/bench_trainer.py --pending 1 10 100 --steps 10 --batch 32 --hidden 64
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from fedsim.learning.batched import make_trainer
from fedsim.learning.data import DataConfig, load_federated
from fedsim.learning.models import ModelConfig, build_model, init_params
from fedsim.learning.trainer import LocalTask, TrainingConfig, TrainJob
from fedsim.rng import SeedStreams


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pending", type=int, nargs="+", default=[1, 10, 100], help="jobs per flush")
    p.add_argument("--backends", nargs="+", default=["sequential", "batched", "auto"])
    p.add_argument("--steps", type=int, default=10, help="local steps per job")
    p.add_argument("--batch", type=int, default=32, help="mini-batch size")
    p.add_argument("--hidden", type=int, nargs="*", default=[64], help="MLP hidden widths")
    p.add_argument(
        "--clients", type=int, default=40, help="clients (digits: 1438 training samples)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="Dirichlet label skew (client sizes differ; some below --batch); default IID",
    )
    p.add_argument("--pad", choices=["exact", "pow2", "full"], default="pow2")
    p.add_argument(
        "--min-time", type=float, default=3.0, help="seconds per pending count (at least)"
    )
    p.add_argument("--min-rounds", type=int, default=5, help="flushes per backend (at least)")
    p.add_argument("--max-batch", type=int, default=1024, help="BatchedTrainer chunk size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    streams = SeedStreams(args.seed)
    partition = (
        {"kind": "iid"} if args.alpha is None else {"kind": "dirichlet", "alpha": args.alpha}
    )
    data = load_federated(DataConfig(partition=partition), args.clients, streams, device)
    module, spec = build_model(
        ModelConfig(hidden=args.hidden), data.info.in_features, data.info.n_classes
    )
    task = LocalTask(
        module,
        spec,
        data,
        TrainingConfig(local_steps=args.steps, batch_size=args.batch, lr=0.05),
    )
    w0 = init_params(spec, streams.torch_generator("model.init")).to(device)
    next_id = 0

    def jobs(n: int) -> list[TrainJob]:
        nonlocal next_id
        out = [
            TrainJob(i, i % args.clients, w0, streams.sequence("training.job", i))
            for i in range(next_id, next_id + n)
        ]
        next_id += n
        return out

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def measure(n: int) -> dict[str, float]:
        """Updates/s of each backend at ``n`` pending jobs: median over interleaved rounds.

        Backends take turns flush by flush (in rotating order), so a load change on the machine
        hits all of them alike and the ratios stay meaningful.
        """
        trainers = {
            b: make_trainer(task, b, max_batch=args.max_batch, pad=args.pad) for b in args.backends
        }
        times: dict[str, list[float]] = {b: [] for b in args.backends}

        def flush(backend: str) -> float:
            trainer = trainers[backend]
            batch = jobs(n)
            t0 = time.perf_counter()
            handles = [trainer.submit(job) for job in batch]
            for h in handles:
                h.result()
            sync()
            return time.perf_counter() - t0

        for b in args.backends:
            flush(b)  # warm-up
        start, r = time.perf_counter(), 0
        while r < args.min_rounds or time.perf_counter() - start < args.min_time:
            order = (
                args.backends[r % len(args.backends) :] + args.backends[: r % len(args.backends)]
            )
            for b in order:
                times[b].append(flush(b))
            r += 1
        return {b: n / statistics.median(t) for b, t in times.items()}

    rows = [(n, measure(n)) for n in args.pending]
    sizes = data.client_sizes

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    split = "IID" if args.alpha is None else f"Dirichlet {args.alpha}"
    print(
        f"digits MLP hidden={args.hidden} ({spec.numel} params), {args.steps} local steps, "
        f"batch {args.batch}, {args.clients} clients ({split}, sizes {sizes.min()}-{sizes.max()}), "
        f"pad {args.pad}; device {device} ({dev or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; median per-flush time over interleaved rounds\n"
    )
    base = args.backends[0]
    head = ["pending"] + [f"{b} updates/s" for b in args.backends]
    head += [f"{b} / {base}" for b in args.backends[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for n, r in rows:
        cells = [str(n)] + [f"{r[b]:,.0f}" for b in args.backends]
        cells += [f"{r[b] / r[base]:.2f}×" for b in args.backends[1:]]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
