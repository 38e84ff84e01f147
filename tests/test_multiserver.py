"""The multi-server base: topology wired into the scenario, messages over links in simulated time,
failures, consensus error in the evals and bytes per link kind in the summary.

A minimal consensus algorithm (defined here, on the real base class) exercises the machinery that
DFL, D-SGD, MoDeST and DRPGA build on; their own tests check the algorithms.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
import torch

from fedsim.algorithms.multiserver import MultiServerAlgorithm
from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.scenario import load_scenario
from fedsim.simulation import Simulation


class GossipOnlyConfig(Section):
    name: Literal["gossip_only"] = "gossip_only"
    steps: int = 3


class GossipOnly(MultiServerAlgorithm):
    """Servers start from different models and only run consensus steps (no client training)."""

    name = "gossip_only"
    config_class = GossipOnlyConfig

    def run(self):
        gen = torch.Generator().manual_seed(0)
        models = [torch.randn(self.ctx.model.spec.numel, generator=gen) for _ in self.servers]
        self.start_models = [m.clone() for m in models]
        self.step_ends: list[float] = []
        for s, m in enumerate(models):
            self.publish_to(s, m)
        for _ in range(self.config.steps):
            inbox = yield from self.exchange(models)
            self.inboxes = inbox
            models = self.mix(models)
            for s, m in enumerate(models):
                self.publish_to(s, m)
            self.step_ends.append(self.now)

    def on_arrival(self, job):  # pragma: no cover - no client jobs here
        raise AssertionError


def _sim(small_learning, topology: dict, steps: int = 3) -> Simulation:
    scenario = load_scenario(
        {**small_learning, "topology": topology, "clients": {"compute": {"mean_s": 1.0}}}
    )
    sim = Simulation(scenario, device="cpu")
    sim.algorithm = GossipOnly(GossipOnlyConfig(steps=steps), sim.context)
    return sim


def test_topology_sets_servers_and_client_assignment(small_learning):
    scenario = load_scenario({**small_learning, "clients": {}, "topology": {"servers": 4}})
    assert scenario.clients.count == 20  # 4 servers × 5 clients (the default)
    sim = Simulation(scenario, device="cpu")
    assert len(sim.servers) == 4
    assert np.bincount(sim.client_server).tolist() == [5, 5, 5, 5]
    assert all(torch.equal(s.params, sim.servers[0].params) for s in sim.servers)


def test_explicit_client_count_must_match_the_topology(small_learning):
    with pytest.raises(ScenarioError, match=r"clients.count \(20\).*topology's 15"):
        load_scenario({**small_learning, "topology": {"servers": 3}})


def test_messages_take_latency_plus_bytes_over_bandwidth(small_learning):
    latency, mbps = 0.5, 8.0
    sim = _sim(
        small_learning,
        {"servers": 4, "graph": "ring", "link": {"latency_s": latency, "bandwidth_mbps": mbps}},
    )
    result = sim.run()
    one_way = latency + sim.spec.nbytes() * 8 / (mbps * 1e6)
    ends = sim.algorithm.step_ends
    assert ends == pytest.approx([one_way * (k + 1) for k in range(3)])
    messages = result.events[result.events["status"] == "message"]
    assert len(messages) == 3 * 8  # a ring of 4: 8 directed links per step
    assert (messages["receiver"] >= 0).all() and (messages["client"] == -1).all()
    assert np.allclose(messages["sim_time"] - messages["dispatched_at"], one_way)
    assert result.summary["bytes"]["server_to_server"] == 24 * sim.spec.nbytes()
    assert result.summary["topology"]["spectral_gap"] == pytest.approx(sim.topology.gap)


def test_consensus_steps_preserve_the_mean_and_shrink_the_error(small_learning):
    sim = _sim(small_learning, {"servers": 5, "graph": "ring"}, steps=12)
    result = sim.run()
    start = torch.stack(sim.algorithm.start_models)
    final = torch.stack([s.params for s in sim.servers])
    assert torch.allclose(final.mean(0), start.mean(0), atol=1e-5)  # W doubly stochastic
    # Contraction at the rate the spectral gap predicts: ‖X_k − X̄‖ ≤ (1 − gap)^k ‖X_0 − X̄‖.
    rate = (1 - sim.topology.gap) ** 12
    dev0 = (start - start.mean(0)).double().norm().item()
    dev = (final - final.mean(0)).double().norm().item()
    assert dev <= rate * dev0 * (1 + 1e-3) + 1e-5
    assert dev >= 0.2 * rate * dev0  # and not much faster: the bound is tight for a ring
    error = result.evals.groupby("sim_time")["consensus_error"].max()
    first_error = (start - start.mean(0)).norm(dim=1).max().item()
    assert error.iloc[-1] < 0.1 * first_error
    # The error column is ‖w_s − mean‖ per server, recomputed independently here.
    last = result.evals[result.evals["sim_time"] == result.evals["sim_time"].max()]
    final64 = final.double()
    expected = (final64 - final64.mean(0)).norm(dim=1).numpy()
    assert np.allclose(last.sort_values("server")["consensus_error"], expected, rtol=1e-6)


def test_a_failed_link_carries_no_message_and_keeps_its_weight_home(small_learning):
    topology = {"servers": 4, "graph": "ring", "failures": [{"at_s": 0.0, "link": [0, 1]}]}
    sim = _sim(small_learning, topology, steps=2)
    result = sim.run()
    messages = result.events[result.events["status"] == "message"]
    pairs = set(zip(messages["server"], messages["receiver"], strict=True))
    assert (0, 1) not in pairs and (1, 0) not in pairs
    assert len(messages) == 2 * 6
    assert 0 not in sim.algorithm.inboxes[1] and 3 in sim.algorithm.inboxes[0]


def test_single_server_runs_have_nan_consensus_error(small_learning):
    import fedsim

    result = fedsim.run(small_learning, save=False, device="cpu", stop__time_s=20)
    assert result.evals["consensus_error"].isna().all()
    assert (result.evals["task"] == 0).all()
    assert result.summary["bytes"]["server_to_server"] == 0
    assert result.summary["topology"] is None


def test_cli_plots_of_a_multi_server_run(small_learning, tmp_path, capsys):
    import fedsim
    from fedsim.cli import main

    def cli(args: list[str]) -> tuple[int, str]:
        try:
            main(args)
        except SystemExit as exc:
            return int(exc.code or 0), capsys.readouterr().err
        return 0, capsys.readouterr().err

    multi = {**small_learning, "clients": {"compute": {"mean_s": 1.0}}}
    multi |= {"topology": {"servers": 4}, "algorithm": {"name": "dfl", "consensus_steps": 2}}
    fedsim.run(multi, out=tmp_path / "multi", stop__time_s=20)
    fedsim.run(small_learning, out=tmp_path / "single", stop__time_s=10)
    for kind in ("consensus", "bytes", "graph"):
        out = tmp_path / f"{kind}.png"
        code, err = cli(["plot", str(tmp_path / "multi"), "--kind", kind, "--out", str(out)])
        assert code == 0, err
        assert out.stat().st_size > 1000
    code, err = cli(
        ["plot", str(tmp_path / "single"), "--kind", "graph", "--out", str(tmp_path / "x.png")]
    )
    assert code == 2
    assert err.count("\n") == 1 and "needs a multi-server run" in err


def test_standard_figures_follow_the_kind_of_run(small_learning):
    import fedsim
    from fedsim.plots import standard_figures

    multi = {**small_learning, "clients": {"compute": {"mean_s": 1.0}}}
    multi |= {"topology": {"servers": 3}, "algorithm": {"name": "dfl", "consensus_steps": 2}}
    names = set(standard_figures(fedsim.run(multi, save=False, stop__time_s=15)))
    assert {"accuracy", "consensus"} <= names and "tasks" not in names
    regression = {
        **small_learning,
        "data": {"dataset": "synthetic_regression", "partition": {"kind": "iid"}},
        "model": {"kind": "linear"},
    }
    names = set(standard_figures(fedsim.run(regression, save=False, stop__time_s=15)))
    assert "loss" in names and "accuracy" not in names and "consensus" not in names
