"""Client updates per second of the trainer backends at a given number of pending jobs.

Every backend trains the same jobs (same clients, start points and seeds) in the same process, so the
ratios in the printed markdown table are measured in one run. Each model (``--models``: the digits
MLP and a small CNN on digits as 1×8×8 images) gets its own rows. Example:

    OMP_NUM_THREADS=1 python benchmarks/bench_trainer.py --threads 1 --pending 1 10 100 1000

A flush of 1,000 jobs trained one at a time takes seconds, so large pending counts get fewer
rounds: at least one, and no more than ``--max-jobs`` jobs per backend and pending count beyond
``--min-rounds`` (which then only applies while the budget lasts).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch

from fedsim.learning.batched import BatchedTrainer, make_trainer
from fedsim.learning.data import DataConfig, load_federated
from fedsim.learning.models import (
    CNNConfig,
    MLPConfig,
    TransformerConfig,
    build_model,
    init_params,
)
from fedsim.learning.trainer import LocalTask, TrainingConfig, TrainJob
from fedsim.rng import SeedStreams


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--pending", type=int, nargs="+", default=[1, 10, 100, 1000], help="jobs per flush"
    )
    p.add_argument(
        "--models", nargs="+", choices=["mlp", "cnn", "transformer"], default=["mlp", "cnn"]
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["sequential", "batched", "auto"],
        help="sequential, batched, auto, vmap (batched without stacked execution), serial "
        "(batched, one stack at a time even with several threads) or parallel (batched, stacks "
        "side by side whatever their size)",
    )
    p.add_argument("--steps", type=int, default=10, help="local steps per job")
    p.add_argument("--batch", type=int, default=32, help="mini-batch size")
    p.add_argument("--hidden", type=int, nargs="*", default=[64], help="MLP hidden widths")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32], help="CNN channels")
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
    p.add_argument(
        "--max-jobs",
        type=int,
        default=1000,
        help="jobs per backend and pending count (caps the rounds at large pending counts)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="jobs per stack (default: chosen from the model)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def model_config(name: str, args: argparse.Namespace) -> MLPConfig | CNNConfig | TransformerConfig:
    if name == "cnn":
        return CNNConfig(channels=args.channels, hidden=args.hidden)
    if name == "transformer":
        return TransformerConfig()  # digits as 8 tokens (rows) of 8 features
    return MLPConfig(hidden=args.hidden)


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
    training = TrainingConfig(local_steps=args.steps, batch_size=args.batch, lr=0.05)
    next_id = 0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def build_trainer(task: LocalTask, backend: str):
        """A backend of ``make_trainer``, or a variant of ``batched``: ``vmap`` (no stacked
        execution: every model through ``vmap(grad(loss))``, stacks sized by the parameter budget
        alone), ``serial`` (stacks one at a time even on several threads) or ``parallel`` (stacks
        side by side on several threads whatever their size)."""
        if backend == "vmap":
            return BatchedTrainer(task, max_batch=args.max_batch, pad=args.pad, stacked=False)
        if backend not in ("serial", "parallel"):
            return make_trainer(task, backend, max_batch=args.max_batch, pad=args.pad)
        trainer = make_trainer(task, "batched", max_batch=args.max_batch, pad=args.pad)
        if backend == "serial":
            trainer.parallel_stacks = False
        else:
            trainer.parallel_min_floats = 0
        return trainer

    def measure(task: LocalTask, w0: torch.Tensor, n: int) -> dict[str, float]:
        """Updates/s of each backend at ``n`` pending jobs: median over interleaved rounds.

        Backends take turns flush by flush (in rotating order), so a load change on the machine
        hits all of them alike and the ratios stay meaningful.
        """
        trainers = {b: build_trainer(task, b) for b in args.backends}
        times: dict[str, list[float]] = {b: [] for b in args.backends}

        def jobs(k: int) -> list[TrainJob]:
            nonlocal next_id
            out = [
                TrainJob(i, i % args.clients, w0, streams.sequence("training.job", i))
                for i in range(next_id, next_id + k)
            ]
            next_id += k
            return out

        def flush(backend: str, k: int) -> float:
            trainer = trainers[backend]
            batch = jobs(k)
            t0 = time.perf_counter()
            handles = [trainer.submit(job) for job in batch]
            for h in handles:
                h.result()
            sync()
            return time.perf_counter() - t0

        for b in args.backends:
            flush(b, min(n, 16))  # warm-up (vmap tracing, allocator)
        max_rounds = max(1, math.ceil(args.max_jobs / n))
        start, r = time.perf_counter(), 0
        while r < max_rounds and (
            r < args.min_rounds or time.perf_counter() - start < args.min_time
        ):
            k = r % len(args.backends)
            for b in args.backends[k:] + args.backends[:k]:
                times[b].append(flush(b, n))
            r += 1
        return {b: n / statistics.median(t) for b, t in times.items()}

    rows = []
    for name in args.models:
        module, spec = build_model(model_config(name, args), data.info)
        task = LocalTask(module, spec, data, training)
        w0 = init_params(spec, streams.torch_generator("model.init")).to(device)
        for n in args.pending:
            rows.append((f"{name} ({spec.numel:,} params)", n, measure(task, w0, n)))
            print(*rows[-1], file=sys.stderr, flush=True)  # progress

    sizes = data.client_sizes
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    split = "IID" if args.alpha is None else f"Dirichlet {args.alpha}"
    print(
        f"digits; MLP hidden={args.hidden}, CNN channels={args.channels} kernel 5 + hidden "
        f"{args.hidden}; {args.steps} local steps, batch {args.batch}, {args.clients} clients "
        f"({split}, sizes {sizes.min()}-{sizes.max()}), pad {args.pad}; device {device} "
        f"({dev or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; median per-flush time over interleaved rounds\n"
    )
    base = args.backends[0]
    head = ["model", "pending"] + [f"{b} updates/s" for b in args.backends]
    head += [f"{b} / {base}" for b in args.backends[1:]]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for model, n, r in rows:
        cells = [model, str(n)] + [f"{r[b]:,.0f}" for b in args.backends]
        cells += [f"{r[b] / r[base]:.2f}×" for b in args.backends[1:]]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
