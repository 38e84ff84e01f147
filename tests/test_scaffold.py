"""SCAFFOLD (Karimireddy et al. 2020): control variates against client drift (issue 13).

Checked against what it must equal: full-batch gradient descent (full participation, one local
step), FedAvg's first round (every control variate still 0), and SCAFFOLD written out here with
plain torch over the cohorts the simulation drew (option II, several local steps, partial
participation, a server optimiser), on the loop and the stacked trainer paths.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

import fedsim
from fedsim.cli import main
from fedsim.learning.optim import LocalOptimizer
from fedsim.scenario import OutputConfig, load_scenario

from .test_batched_trainer import build_setup, make_jobs, make_task, sequential_results
from .test_checkpoint import StopAt, _same_files
from .test_limiting_cases import Run, evaluate, reference_mlp, scenario

FULL_BATCH = 4096  # larger than any client: every local step sees all of the client's samples


def _grad(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean cross-entropy of the digits MLP holding ``flat``."""
    model = reference_mlp(flat)
    nn.functional.cross_entropy(model(x), y).backward()
    return parameters_to_vector(p.grad for p in model.parameters())


@pytest.mark.parametrize("backend", ["sequential", "auto"])
def test_full_participation_and_one_local_step_is_full_batch_gd(backend):
    """With every client in every round and K = 1 full-batch step, Σ_i q_i (c − c_i) = 0 (c is the
    weighted mean of the c_i), so each round is one GD step of size η_g·η_l on the union of the
    data; unequal Dirichlet sizes and data-size weights make the weights of c matter."""
    count, rounds, server_lr, lr = 8, 8, 0.5, 2.0
    run = Run(
        scenario(
            {"name": "scaffold", "cohort_size": count, "server_lr": server_lr},
            time_s=rounds + 0.5,
            training={"local_steps": 1, "batch_size": FULL_BATCH, "lr": lr, "backend": backend},
            clients={"count": count, "compute": {"dist": "constant", "mean_s": 1.0}},
        )
    )
    data = run.sim.data
    assert data.client_sizes.max() > 1.5 * data.client_sizes.min()
    assert len(run.published) == rounds
    model = reference_mlp(run.initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=server_lr * lr)
    for r in range(rounds):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        optimizer.step()
        gd = parameters_to_vector(model.parameters()).detach()
        torch.testing.assert_close(run.published[r], gd, atol=1e-5, rtol=0)
    loss_start = evaluate(reference_mlp(run.initial), data.x_test, data.y_test)[1]
    assert evaluate(model, data.x_test, data.y_test)[1] < loss_start - 0.2  # real progress


def _cohorts(run: Run) -> list[list[int]]:
    """The clients whose reports each round applied, in the order the server took them."""
    applied = run.events[run.events["status"] == "applied"]
    return [list(g["client"]) for _, g in applied.groupby("base_version", sort=True)]


def hand_written_scaffold(
    run: Run, *, steps: int, lr: float, server_lr: float, uniform: bool, momentum: float | None
) -> list[torch.Tensor]:
    """SCAFFOLD (the paper's Algorithm 1, option II) over the simulation's own cohorts, in
    float64: each round's model."""
    data = run.sim.data
    n = len(data.client_indices)
    sizes = [float(len(idx)) for idx in data.client_indices]
    weight = [1.0] * n if uniform else sizes
    x = run.initial.double()
    c = torch.zeros_like(x)
    controls: dict[int, torch.Tensor] = {}
    buf = None
    models = []
    for cohort in _cohorts(run):
        deltas, control_changes = [], []
        for i in cohort:
            rows = data.client_indices[i]
            xi, yi = data.x_train[rows].double(), data.y_train[rows]
            ci = controls.get(i, torch.zeros_like(x))
            y = x.clone()
            for _ in range(steps):
                y = y - lr * (_grad(y, xi, yi) - ci + c)
            new_ci = ci - c + (x - y) / (steps * lr)
            deltas.append(y - x)
            control_changes.append(new_ci - ci)
            controls[i] = new_ci
        total = sum(weight[i] for i in cohort)
        step = sum(weight[i] / total * d for i, d in zip(cohort, deltas, strict=True))
        if momentum is None:
            x = x + server_lr * step
        else:  # FedAvgM: b ← β b + Δ, x ← x + η b
            buf = step if buf is None else momentum * buf + step
            x = x + server_lr * buf
        c = c + sum(
            weight[i] / sum(weight) * d for i, d in zip(cohort, control_changes, strict=True)
        )
        models.append(x)
    return models


@pytest.mark.parametrize(
    ("backend", "weighting", "server_optimizer"),
    [
        ("sequential", "data_size", None),
        ("auto", "uniform", None),
        ("auto", "data_size", {"name": "momentum", "momentum": 0.5}),
    ],
)
def test_equals_scaffold_written_out_in_torch(backend, weighting, server_optimizer):
    """Several local steps, half the clients per round, control variates of returning clients:
    every published model equals the hand-written algorithm's (to 1e-4, float32 against float64).
    ``auto`` trains each round's cohort as one stack (the stacked path, a correction row per job)."""
    count, cohort, rounds, steps, lr, server_lr = 8, 4, 6, 3, 0.3, 0.8
    sections = {}
    if server_optimizer is not None:
        sections["server_optimizer"] = server_optimizer

    def run_of(name: str) -> Run:
        algorithm = {"name": name, "cohort_size": cohort, "server_lr": server_lr}
        return Run(
            scenario(
                {**algorithm, "weighting": weighting},
                time_s=rounds + 0.5,
                training={
                    "local_steps": steps,
                    "batch_size": FULL_BATCH,
                    "lr": lr,
                    "backend": backend,
                },
                clients={"count": count, "compute": {"dist": "constant", "mean_s": 1.0}},
                **sections,
            )
        )

    run = run_of("scaffold")
    assert len(run.published) == rounds
    cohorts = _cohorts(run)
    assert len({i for c in cohorts for i in c}) < sum(len(c) for c in cohorts)  # clients return
    momentum = None if server_optimizer is None else server_optimizer["momentum"]
    want = hand_written_scaffold(
        run,
        steps=steps,
        lr=lr,
        server_lr=server_lr,
        uniform=weighting == "uniform",
        momentum=momentum,
    )
    for got, ref in zip(run.published, want, strict=True):
        torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=0)
    # ... and the corrections mattered: FedAvg on the same scenario ends elsewhere.
    fedavg = run_of("fedavg")
    assert float((fedavg.published[-1] - run.published[-1]).abs().max()) > 1e-3


def test_first_round_with_zero_control_variates_is_fedavgs_first_round():
    """Round 1 adds c − c_i = 0 to every gradient: bit for bit FedAvg's model (mini-batches,
    stacked path); later rounds differ."""

    def run(name: str) -> Run:
        return Run(
            scenario(
                {"name": name, "cohort_size": 5},
                time_s=3.5,
                training={"local_steps": 5, "batch_size": 16, "lr": 0.1, "backend": "auto"},
            )
        )

    scaffold, fedavg = run("scaffold"), run("fedavg")
    assert torch.equal(scaffold.published[0], fedavg.published[0])
    assert not torch.equal(scaffold.published[1], fedavg.published[1])
    pd.testing.assert_frame_equal(scaffold.events, fedavg.events)  # the same jobs, the same times


def test_control_variates_are_kept_only_for_clients_that_took_part(tmp_path):
    data = scenario(
        {"name": "scaffold", "cohort_size": 3, "deadline_s": 1.5},
        time_s=4.5,
        clients={"count": 30, "compute": {"dist": "exponential", "mean_s": 1.0}},
    )
    result = fedsim.run(data, out=tmp_path / "r")
    events = result.events
    took_part = set(events.loc[events["status"] == "applied", "client"])
    assert 0 < len(took_part) < 30
    assert set(events.loc[events["status"] == "late", "client"]) - took_part  # late: no c_i
    assert result.summary["control_variates"] == len(took_part)
    sim_run = Run(data)
    controls = sim_run.sim.algorithm.controls
    assert set(controls) == set(sim_run.events.loc[sim_run.events["status"] == "applied", "client"])
    n_params = sim_run.sim.servers[0].params.numel()
    assert all(c.shape == (n_params,) for c in controls.values())
    # c is the weighted mean of every client's c_i (0 for those that never took part).
    sizes = sim_run.sim.data.client_sizes
    mean = sum(float(sizes[i]) * ci for i, ci in controls.items()) / float(sizes.sum())
    torch.testing.assert_close(sim_run.sim.algorithm.c, mean, atol=1e-6, rtol=1e-5)


def test_a_refused_model_changes_no_control_variate():
    """A server step that overflows (finite reports, η_g = 1e300) is refused, and the round then
    updates no c_i and leaves c at 0."""
    run = Run(
        scenario({"name": "scaffold", "cohort_size": 4, "server_lr": 1e300}, time_s=3.5),
    )
    assert run.result.summary["rejected_models"] >= 3
    algorithm = run.sim.algorithm
    assert (run.events["status"] == "applied").sum() >= 8 and not run.published
    assert algorithm.controls == {} and not algorithm.c.any()


def test_same_seed_same_trace(tmp_path):
    data = scenario(
        {"name": "scaffold", "cohort_size": 4, "deadline_s": 1.2, "over_selection": 0.5},
        time_s=8.0,
        clients={
            "count": 16,
            "compute": {"dist": "lognormal", "mean_s": 1.0, "sigma": 0.5},
            "dropout": {"prob": 0.1},
        },
        training={"local_steps": 4, "batch_size": 16, "lr": 0.1},
    )
    a = fedsim.run(data, out=tmp_path / "a")
    b = fedsim.run(data, out=tmp_path / "b")
    assert (tmp_path / "a" / "events.parquet").read_bytes() == (
        tmp_path / "b" / "events.parquet"
    ).read_bytes()
    pd.testing.assert_frame_equal(
        a.evals.drop(columns="real_time_s"), b.evals.drop(columns="real_time_s"), check_exact=True
    )
    other = fedsim.run({**data, "seed": data["seed"] + 1}, out=tmp_path / "c")
    assert not other.events.equals(a.events)


@pytest.mark.parametrize(
    ("override", "culprit"),
    [
        ("algorithm.cohort=3", "algorithm.cohort"),
        ("training.optimizer=adam", "training.optimizer"),
        ("training.momentum=0.9", "training.momentum"),
        ("training.proximal_mu=0.1", "training.proximal_mu"),
        ("algorithm.cohort_size=500", "algorithm.cohort_size"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(tmp_path, capsys, override, culprit):
    path = tmp_path / "s.yaml"
    path.write_text("algorithm: {name: scaffold}\nclients: {count: 20}\n")
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path), "--set", override])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], lines
    with pytest.raises(fedsim.ScenarioError, match=culprit.replace(".", r"\.")):
        load_scenario(path, [override])


def test_a_short_run_learns_well_beyond_chance(tmp_path):
    """Digits (10 classes, chance 0.1), non-IID clients, 30 rounds."""
    data = scenario(
        {"name": "scaffold", "cohort_size": 6},
        time_s=30.0,
        data={"dataset": "digits", "partition": {"kind": "dirichlet", "alpha": 0.3}},
        clients={"count": 24, "compute": {"dist": "constant", "mean_s": 1.0}},
        training={"local_steps": 10, "batch_size": 16, "lr": 0.1},
    )
    result = fedsim.run(data, out=tmp_path / "r")
    assert result.evals["accuracy"].iloc[-1] > 0.6


def test_the_correction_is_added_to_every_row_of_a_stack():
    """A stack whose first ``k`` rows train, each with its own correction: row by row the
    one-vector step with that correction, which is the step on ``g + correction``."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    grads = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    corrections = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    opt = LocalOptimizer("sgd", lr=0.1, weight_decay=1e-2)
    w = w0.clone()
    state: dict = {}
    opt.correct(state, corrections)
    opt.step(w, grads[0], state, 0)
    opt.step(w[:2], grads[1, :2], state, 1, 2)
    for i in range(3):
        want = w0[i].clone()
        for t in range(2 if i < 2 else 1):
            LocalOptimizer("sgd", lr=0.1, weight_decay=1e-2).step(
                want, grads[t, i] + corrections[i], {}, t
            )
        torch.testing.assert_close(w[i], want, rtol=1e-12, atol=1e-14)


def test_a_stopped_run_resumes_to_the_same_files(tmp_path):
    """Checkpointable like FedAvg: the control variates travel in the checkpoint."""
    data = scenario(
        {"name": "scaffold", "cohort_size": 4, "deadline_s": 1.5},
        time_s=24.0,
        clients={"count": 16, "compute": {"dist": "exponential", "mean_s": 1.0}},
    )
    data["eval"] = {"every_s": 2.0}
    data["output"] = {"checkpoint_every_s": 5.0, "flush_rows": 16}
    if "checkpoint_max_overhead" in OutputConfig.model_fields:  # every checkpoint, however dear
        data["output"]["checkpoint_max_overhead"] = None
    reference = fedsim.run(data, out=tmp_path / "whole")
    assert reference.summary["checkpoints"] >= 3
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(data, out=out, callbacks=[StopAt(16.0)])
    resumed = fedsim.run(resume=out)
    assert resumed.summary["resumed_from_s"] == 15.0
    assert resumed.summary["control_variates"] == reference.summary["control_variates"]
    _same_files(out, tmp_path / "whole")


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "vmap"])
def test_batched_jobs_with_corrections_equal_the_loop(stacked):
    """Jobs of different sizes (padded stacks) and step counts, some with a correction and some
    without, trained together: each as the loop trains it alone, to 1e-5."""
    from fedsim.learning.batched import BatchedTrainer

    setup = build_setup()
    task = make_task(setup, local_epochs=1.0, batch_size=16, lr=0.05, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(5)
    plain = make_jobs(setup, n=12)
    jobs = [
        job
        if i % 3 == 0
        else dataclasses.replace(job, correction=0.5 * torch.randn(job.start.shape, generator=gen))
        for i, job in enumerate(plain)
    ]
    want = sequential_results(task, jobs)
    trainer = BatchedTrainer(task, stacked=stacked)
    handles = [trainer.submit(job) for job in jobs]
    got = [h.result() for h in handles]
    assert trainer.jobs_batched == len(jobs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    without = sequential_results(task, plain)
    moved = [float((a - b).abs().max()) for a, b in zip(want, without, strict=True)]
    assert all(m > 1e-3 for i, m in enumerate(moved) if i % 3) and moved[0] == 0.0
