"""fedsim and Flower's simulation engine side by side on the same FedAvg workload.

    pip install -e ".[bench]"          # flwr[simulation] (and Ray) for Flower's side
    OMP_NUM_THREADS=1 python benchmarks/bench_flower.py

Both sides run FedAvg over 100 clients with a cohort of 20 per round, the same MLP on digits, the
same partition (fedsim's loader, the same seed), the same initial model, local steps, batch size and
learning rate, for the same number of rounds, and evaluate the global model on the same held-out
set after every round. Each side runs in its own process; the parent samples the memory of that
process and all its descendants (Ray starts a GCS server, a raylet and worker processes) every
50 ms: the sum of their proportional set sizes (PSS, from /proc/PID/smaps_rollup, so pages shared
between processes count once), and the process's own peak RSS (``ru_maxrss``).

Flower's side is written with the Message API of Flower 1.41 (``ServerApp`` + ``@app.main()``
running ``flwr.serverapp.strategy.FedAvg.start``, ``ClientApp`` + ``@app.train()``) and run with
``flwr.simulation.run_simulation`` on the Ray backend, one CPU per client actor. Local training on
both sides samples a client's mini-batches without replacement, pass after pass (a client with
fewer samples than the batch size uses all of them each step), plain SGD, weighted averaging by
number of samples. fedsim simulates a constant 1 s per job and no network, so rounds take 1 s of
simulated time and it evaluates once per round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------------------
# What both sides share


def data_config(args: argparse.Namespace):
    from fedsim.learning.data import DataConfig

    return DataConfig(dataset="digits", partition={"kind": "dirichlet", "alpha": args.alpha})


def load_data(args: argparse.Namespace):
    """The federated digits split (fedsim's loader and seed streams: identical on both sides)."""
    import torch

    from fedsim.learning.data import load_federated
    from fedsim.rng import SeedStreams

    return load_federated(
        data_config(args), args.clients, SeedStreams(args.seed), torch.device("cpu")
    )


def initial_model(args: argparse.Namespace, info):
    """The fedsim MLP's initial flat vector (the seed's ``model.init`` stream) and its spec."""
    from fedsim.learning.models import MLPConfig, build_model, init_params
    from fedsim.rng import SeedStreams

    _, spec = build_model(MLPConfig(hidden=args.hidden), info)
    return init_params(spec, SeedStreams(args.seed).torch_generator("model.init")), spec


def first_round_reaching(accuracy: list[float], target: float) -> int | None:
    return next((i for i, a in enumerate(accuracy) if a >= target), None)


# ---------------------------------------------------------------------------------------------------
# fedsim's side


def run_fedsim(args: argparse.Namespace) -> dict:
    import torch

    import fedsim

    torch.set_num_threads(1)
    scenario = {
        "name": "flower-comparison",
        "seed": args.seed,
        # Round k closes at 0.999 k s; the evaluation at k s sees exactly k rounds (k < 999).
        "stop": {"time_s": args.rounds * 0.999 + 0.5},
        "data": data_config(args).model_dump(),
        "model": {"kind": "mlp", "hidden": args.hidden},
        "training": {
            "local_steps": args.steps,
            "batch_size": args.batch,
            "lr": args.lr,
            "backend": args.backend,
        },
        "clients": {"count": args.clients, "compute": {"dist": "constant", "mean_s": 0.999}},
        "algorithm": {"name": "fedavg", "cohort_size": args.cohort},
        "eval": {"every_s": 1.0},
    }
    started = time.perf_counter()
    result = fedsim.run(scenario, save=False)
    wall = time.perf_counter() - started
    evals = result.evals
    rounds = (evals["sim_time"] / 1.0).round().astype(int).tolist()
    accuracy = evals["accuracy"].tolist()
    elapsed = (evals["real_time_s"] - evals["real_time_s"].iloc[0]).tolist()
    assert rounds[: args.rounds + 1] == list(range(args.rounds + 1)), rounds
    n = args.rounds + 1
    return {
        "run_wall_s": wall,
        "accuracy": accuracy[:n],
        "elapsed_s": elapsed[:n],
        "updates": result.summary["updates"],
        "model_versions": result.summary["versions"],
        "jobs_trained": result.summary["jobs_trained"],
    }


# ---------------------------------------------------------------------------------------------------
# Flower's side


def _client_state(args_dict: dict) -> dict:
    """Per-process state of a Flower client actor: data and a module, built once per process.

    The ClientApp is pickled into every call; a registry module in ``sys.modules`` keeps what it
    loads for the life of the actor process, as a Flower app module's globals would.
    """
    import types

    registry = sys.modules.get("_fedsim_bench_flower")
    if registry is None:
        registry = types.ModuleType("_fedsim_bench_flower")
        registry.state = {}
        sys.modules["_fedsim_bench_flower"] = registry
    state = registry.state
    if not state:
        import torch

        torch.set_num_threads(1)
        args = argparse.Namespace(**args_dict)
        state["data"] = load_data(args)
        state["module"] = make_module(args.hidden, state["data"].info)
    return state


def make_module(hidden: list[int], info):
    """A plain PyTorch MLP whose state_dict keys and shapes match the fedsim MLP's flat vector."""
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = info.in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, info.n_classes))
    return nn.Sequential(*layers)


def run_flower(args: argparse.Namespace) -> dict:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch.nn import functional as F

    torch.set_num_threads(1)
    args_dict = vars(args)
    data = load_data(args)
    w0, spec = initial_model(args, data.info)
    server_module = make_module(args.hidden, data.info)
    initial = {name: view.clone() for name, view in spec.views(w0).items()}
    server_module.load_state_dict(initial)

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        state = _client_state(args_dict)
        module, fed = state["module"], state["data"]
        module.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        cid = int(context.node_config["partition-id"])
        rows = torch.as_tensor(fed.client_indices[cid])
        n, b = len(rows), min(args_dict["batch"], len(rows))
        optimizer = torch.optim.SGD(module.parameters(), lr=args_dict["lr"])
        seed = args_dict["seed"] * 1_000_003 + int(msg.content["config"]["server-round"]) * 1009
        gen = torch.Generator().manual_seed(seed + cid)
        stream = torch.cat(
            [torch.randperm(n, generator=gen) for _ in range(-(-args_dict["steps"] * b // n))]
        )
        for step in range(args_dict["steps"]):
            batch = rows[stream[step * b : (step + 1) * b]]
            optimizer.zero_grad()
            F.cross_entropy(module(fed.x_train[batch]), fed.y_train[batch]).backward()
            optimizer.step()
        content = RecordDict(
            {
                "arrays": ArrayRecord(module.state_dict()),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        return Message(content=content, reply_to=msg)

    history: dict[int, tuple[float, float]] = {}
    run_started: list[float] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if not run_started:
            run_started.append(time.perf_counter())
        server_module.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            pred = server_module(data.x_test).argmax(1)
        accuracy = float((pred == data.y_test).float().mean())
        history[server_round] = (accuracy, time.perf_counter() - run_started[0])
        return MetricRecord({"accuracy": accuracy})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=args.cohort / args.clients,
            fraction_evaluate=0.0,
            min_train_nodes=args.cohort,
            min_available_nodes=args.clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(server_module.state_dict()),
            num_rounds=args.rounds,
            train_config=ConfigRecord({"lr": args.lr}),
            evaluate_fn=evaluate,
        )

    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.ray_cpus, "include_dashboard": False},
        },
    )
    wall = time.perf_counter() - started
    rounds = sorted(history)
    assert rounds == list(range(args.rounds + 1)), rounds
    return {
        "run_wall_s": wall,
        "accuracy": [history[r][0] for r in rounds],
        "elapsed_s": [history[r][1] for r in rounds],
    }


# ---------------------------------------------------------------------------------------------------
# The parent: one subprocess per side, memory sampled from /proc


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pss_mb(root: int) -> tuple[float, int]:
    """Summed PSS (MB) of ``root`` and all its descendants, and how many processes that is."""
    tree = _children_of()
    todo, total, count = [root], 0, 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    count += 1
                    break
        except OSError:
            continue
    return total / 1024, count


def run_side(side: str, argv: list[str]) -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0"
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(HERE), *argv, "--side", side],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = {"pss_mb": 0.0, "procs": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, count = tree_pss_mb(proc.pid)
            if pss > peak["pss_mb"]:
                peak["pss_mb"] = pss
            peak["procs"] = max(peak["procs"], count)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        return {"side": side, "failed": True, "error": lines[-1] if lines else f"exit {proc.returncode}",
                "stderr_tail": "\n".join(lines[-25:]), "process_wall_s": wall}  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    result.update(side=side, process_wall_s=wall, peak_tree_pss_mb=peak["pss_mb"],
                  max_processes=peak["procs"])  # fmt: skip
    return result


def child(args: argparse.Namespace) -> None:
    out = run_fedsim(args) if args.side == "fedsim" else run_flower(args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.side == "flower":
        from importlib.metadata import version

        out["library_versions"] = {"flwr": version("flwr"), "ray": version("ray")}
    print(json.dumps(out))


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--cohort", type=int, default=20)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=10, help="local SGD steps per job")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--hidden", type=int, nargs="*", default=[64])
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew of the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.85, help="accuracy for time-to-accuracy")
    p.add_argument("--backend", default="auto", help="fedsim training.backend")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--sides", nargs="+", default=["fedsim", "flower"])
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    return args, list(sys.argv[1:])


def _versions(r: dict) -> str:
    v = r.get("library_versions")
    return f" (flwr {v['flwr']}, ray {v['ray']})" if v else ""


def main() -> None:
    args, argv = parse_args()
    if args.side:
        child(args)
        return
    results = {side: run_side(side, argv) for side in args.sides}
    print(
        f"FedAvg, {args.clients} clients (digits, Dirichlet {args.alpha}), cohort {args.cohort}, "
        f"{args.rounds} rounds, MLP hidden {args.hidden}, {args.steps} local steps, batch "
        f"{args.batch}, lr {args.lr}; CPU, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print("| side | run wall s | process wall s | peak RSS main process (MB) "
          "| peak PSS all processes (MB) | processes | final accuracy "
          f"| round reaching {args.target:.0%} | wall s to {args.target:.0%} |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for side, r in results.items():
        if r.get("failed"):
            print(f"| {side} | failed: {r['error']} | | | | | | | |")
            continue
        hit = first_round_reaching(r["accuracy"], args.target)
        cells = [
            side + _versions(r),
            f"{r['run_wall_s']:.2f}",
            f"{r['process_wall_s']:.2f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['peak_tree_pss_mb']:,.0f}",
            str(r["max_processes"]),
            f"{r['accuracy'][-1]:.3f}",
            "—" if hit is None else str(hit),
            "—" if hit is None else f"{r['elapsed_s'][hit]:.2f}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    ok = {s: r for s, r in results.items() if not r.get("failed")}
    if len(ok) == 2:
        a, b = ok["fedsim"], ok["flower"]
        print(
            f"\nflower / fedsim: run wall {b['run_wall_s'] / a['run_wall_s']:.1f}×, process wall "
            f"{b['process_wall_s'] / a['process_wall_s']:.1f}×, peak PSS "
            f"{b['peak_tree_pss_mb'] / a['peak_tree_pss_mb']:.1f}×"
        )
    print("\naccuracy per round (round 0 = the initial model) and wall s since round 0:\n")
    print("| round | " + " | ".join(f"{s} accuracy | {s} wall s" for s in ok) + " |")
    print("|---:|" + "---:|---:|" * len(ok))
    for k in range(args.rounds + 1):
        cells = [f"{r['accuracy'][k]:.3f} | {r['elapsed_s'][k]:.2f}" for r in ok.values()]
        print(f"| {k} | " + " | ".join(cells) + " |")
    for side, r in results.items():
        if r.get("failed"):
            print(f"\n{side} failed:\n{r['stderr_tail']}")


if __name__ == "__main__":
    main()
