"""Peak memory (RSS) of a run with many clients and many jobs in flight, with real CNN training.

Each configuration runs in its own Python process, which reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its resident size once the simulation is built
(dataset, model and client tables loaded; nothing trained yet). Example (goal: 100k clients with
1k in flight on a CNN within 2 GB):

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py

The CNN needs images and 100,000 clients need at least 100,000 training samples, more than any
dataset that ships offline holds. So the script writes MNIST-format IDX files of generated 28×28
images (a class-dependent stroke plus noise; 1 byte per pixel, like MNIST) into ``--data-dir`` once
and runs the ``mnist_idx`` dataset from that local path: the same code path as real MNIST files.

Configurations (``--only`` picks some): ``floor`` imports fedsim and torch only; ``data`` also loads
the federated dataset; ``100k`` is the goal (FedAsync, 100k clients, 1k in flight); ``1k`` has the
same data, model and jobs in flight but 1,000 clients, so ``100k − 1k`` is what the 99,000 clients
that are never or rarely in flight cost; ``100k-timing`` is the 100k run with ``training: none``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def write_idx(file: Path, array: np.ndarray) -> None:
    """An IDX file: magic (0, 0, dtype code, ndim), big-endian dims, then the raw bytes."""
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_bytes(header + array.tobytes())
    os.replace(tmp, file)


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28×28 uint8 images: class c is a bright horizontal stroke at row 3 + 2c, plus noise."""
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 64, (n, 28, 28), dtype=np.uint8)
    rows = 3 + 2 * y.astype(np.int64)
    x[np.arange(n), rows, 4:24] = 255
    return x, y


def ensure_dataset(folder: Path, n_train: int, n_test: int) -> Path:
    """MNIST-format files of ``n_train`` + ``n_test`` generated images under ``folder`` (cached)."""
    folder = folder / f"synthetic-{n_train}-{n_test}"
    files = [folder / name for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]  # fmt: skip
    if all(f.is_file() for f in files):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x, y = make_images(n_train, rng)
    xt, yt = make_images(n_test, rng)
    for file, array in zip(files, (x, y, xt, yt), strict=True):
        write_idx(file, array)
    return folder


def scenario(args: argparse.Namespace, data_path: Path, clients: int, training: bool) -> dict:
    return {
        "name": "memory",
        "seed": 0,
        "stop": {"time_s": 1e9, "max_updates": args.updates},
        "data": {"dataset": "mnist_idx", "path": str(data_path), "partition": {"kind": "iid"}},
        "model": {"kind": "cnn", "channels": args.channels, "hidden": [64]},
        "training": (
            {"local_steps": args.steps, "batch_size": args.batch, "lr": 0.05} if training else None
        ),
        "clients": {"count": clients, "compute": {"dist": "exponential", "mean_s": 5.0}},
        "algorithm": {"name": "fedasync", "concurrency": args.in_flight, "alpha": 0.6},
        "eval": {"every_s": args.eval_every},
    }


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def child(config: dict) -> None:
    """Run one configuration in this process and print one JSON line."""
    import torch

    torch.set_num_threads(1)
    from fedsim.learning.data import DataConfig, load_federated
    from fedsim.rng import SeedStreams
    from fedsim.scenario import load_scenario
    from fedsim.simulation import Simulation

    out: dict = {"name": config["name"]}
    started = time.perf_counter()
    if config["kind"] == "data":
        spec = config["scenario"]
        data = load_federated(
            DataConfig(**spec["data"]),
            spec["clients"]["count"],
            SeedStreams(0),
            torch.device("cpu"),
        )
        out["train_samples"] = len(data.y_train)
    elif config["kind"] == "run":
        sim = Simulation(load_scenario(config["scenario"]), device="cpu")
        out["built_rss_mb"] = rss_now_mb()
        result = sim.run()
        s = result.summary
        out.update(
            updates=s["updates"],
            jobs_trained=s["jobs_trained"],
            sim_time_s=s["sim_time_s"],
            params=s["model_params"],
            largest_flush=getattr(sim.trainer, "largest_flush", None),
            final_accuracy=s["final_accuracy"],
        )
    out["wall_s"] = time.perf_counter() - started
    out["end_rss_mb"] = rss_now_mb()
    out["peak_rss_mb"] = peak_mb()
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=100_000)
    p.add_argument("--in-flight", type=int, default=1000)
    p.add_argument("--updates", type=int, default=3000, help="stop after this many updates")
    p.add_argument("--train-samples", type=int, default=120_000)
    p.add_argument("--test-samples", type=int, default=10_000)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32])
    p.add_argument("--steps", type=int, default=10, help="local steps per job")
    p.add_argument(
        "--batch",
        type=int,
        default=2,
        help="mini-batch size (100k clients hold 1-2 samples each; 2 gives the 1k-client "
        "configuration the same work per job)",
    )
    p.add_argument("--eval-every", type=float, default=50.0, help="simulated seconds")
    p.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "fedsim-bench-memory"
    )
    p.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    data_path = ensure_dataset(args.data_dir, args.train_samples, args.test_samples)
    few = min(1000, args.clients)
    configs = [
        {"name": "floor", "kind": "floor"},
        {"name": "data", "kind": "data", "scenario": scenario(args, data_path, args.clients, True)},
        {"name": f"{args.clients // 1000}k", "kind": "run",
         "scenario": scenario(args, data_path, args.clients, True)},
        {"name": f"{few // 1000}k", "kind": "run", "scenario": scenario(args, data_path, few, True)},
        {"name": f"{args.clients // 1000}k-timing", "kind": "run",
         "scenario": scenario(args, data_path, args.clients, False)},
    ]  # fmt: skip
    if args.only:
        configs = [c for c in configs if c["name"] in args.only]
    rows = []
    for config in configs:
        proc = subprocess.run(
            [sys.executable, str(HERE), "--child", json.dumps(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"configuration {config['name']} failed")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr, flush=True)

    print(
        f"\nFedAsync, CNN channels {args.channels} + hidden [64] on 28×28 images, "
        f"{args.train_samples:,} training / {args.test_samples:,} test samples (IID), "
        f"{args.in_flight:,} in flight, {args.steps} local steps, batch {args.batch}, "
        f"stop at {args.updates:,} updates, eval every {args.eval_every} s simulated; CPU, "
        f"1 torch thread, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| configuration | clients | updates | jobs trained | largest flush | wall s "
          "| RSS built (MB) | peak RSS (MB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r, config in zip(rows, configs, strict=True):
        spec = config.get("scenario", {})
        clients = spec.get("clients", {}).get("count", "")
        if spec and spec.get("training") is None:
            clients = f"{clients:,} (training: none)"
        elif clients:
            clients = f"{clients:,}"
        cells = [
            r["name"],
            clients if config["kind"] == "run" else "",
            f"{r['updates']:,}" if "updates" in r else "",
            f"{r['jobs_trained']:,}" if "jobs_trained" in r else "",
            f"{r['largest_flush']:,}" if r.get("largest_flush") else "",
            f"{r['wall_s']:.1f}",
            f"{r['built_rss_mb']:,.0f}" if "built_rss_mb" in r else "",
            f"{r['peak_rss_mb']:,.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
