"""Server topologies: graphs, mixing matrices, spectral gap, consensus, and the section's errors.

Mixing matrices are checked against their definitions (hand-computed small cases) and against
linear algebra done here independently (numpy eigenvalues, operator norms); consensus is checked
against the bound the spectral gap gives, not against pinned seeded numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from fedsim.config_base import Section
from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario, load_scenario, scenario_error
from fedsim.topology import (
    FailureConfig,
    LinkConfig,
    Topology,
    TopologyConfig,
    build_graph,
    build_topology,
    check_mixing,
    client_assignment,
    consensus_contraction,
    consensus_error,
    consensus_steps,
    cut_pairs,
    draw_graph,
    failure_times,
    graph_at,
    link_delay_s,
    mixing_matrix,
    spectral_gap,
    torus_shape,
)

N = 12
GRAPHS: dict[str, dict[str, Any]] = {
    "complete": {"kind": "complete"},
    "ring": {"kind": "ring"},
    "torus": {"kind": "torus"},
    "erdos_renyi": {"kind": "erdos_renyi", "p": 0.4},
    "random_regular": {"kind": "random_regular", "k": 3},
    "small_world": {"kind": "small_world", "k": 4, "p": 0.3},
    "from_file": {"kind": "from_file"},  # path filled in by the fixture
}
BUILT_IN_MIXINGS = ("metropolis_hastings", "uniform", "max_degree")
SMALL = settings(max_examples=30, deadline=None)


class _Root(Section):
    """Stands in for the scenario until the topology section is wired into it."""

    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    """The section under test."""


def parse(topology: dict[str, Any]) -> TopologyConfig:
    """Validate a topology section as the scenario loader does (errors name the key path)."""
    data = {"topology": topology}
    try:
        return _Root.model_validate(data).topology
    except ValidationError as exc:
        raise scenario_error(exc, data) from None


def write_edges(path: Path, edges: list[tuple[int, int]]) -> str:
    path.write_text("# i j\n" + "".join(f"{i}, {j}\n" for i, j in edges))
    return str(path)


@pytest.fixture
def edge_file(tmp_path: Path) -> str:
    """A connected, irregular 12-server graph: a path with two chords."""
    edges = [(i, i + 1) for i in range(N - 1)] + [(0, 6), (3, 9)]
    return write_edges(tmp_path / "edges.txt", edges)


def build(graph: dict[str, Any], n: int = N, seed: int = 0, **extra: Any) -> nx.Graph:
    config = parse({"servers": n, "graph": graph, **extra})
    return build_graph(config, np.random.default_rng(seed))


def assert_doubly_stochastic(W: np.ndarray, graph: nx.Graph, *, on_links: bool = True) -> None:
    n = graph.number_of_nodes()
    assert W.shape == (n, n)
    assert (W >= 0).all()
    np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(W, W.T, rtol=0, atol=1e-15)
    if on_links:
        adjacency = nx.to_numpy_array(graph, nodelist=range(n)) + np.eye(n)
        assert (W[adjacency == 0] == 0).all(), "weight on a pair that is not linked"


def second_modulus(W: np.ndarray) -> float:
    """|λ₂| straight from numpy's general eigenvalue routine (no symmetry assumed)."""
    moduli = sorted(np.abs(np.linalg.eigvals(W)), reverse=True)
    return float(moduli[1])


# ---------------------------------------------------------------------------------------------------
# Graphs


@pytest.mark.parametrize("kind", list(GRAPHS))
def test_every_graph_kind_is_connected_simple_and_numbered_from_zero(kind, edge_file):
    spec = dict(GRAPHS[kind], **({"path": edge_file} if kind == "from_file" else {}))
    graph = build(spec)
    assert sorted(graph.nodes) == list(range(N))
    assert nx.is_connected(graph)
    assert nx.number_of_selfloops(graph) == 0
    assert graph.graph["kind"] == kind


def test_graph_shapes_by_hand():
    assert build({"kind": "complete"}).number_of_edges() == N * (N - 1) // 2
    ring = build({"kind": "ring"})
    assert all(d == 2 for _, d in ring.degree()) and ring.has_edge(0, N - 1)
    torus = build({"kind": "torus"})  # 12 = 3 × 4
    assert torus_shape(N) == (3, 4)
    assert all(d == 4 for _, d in torus.degree()) and torus.number_of_edges() == 2 * N
    assert torus.has_edge(0, 3) and torus.has_edge(0, 8)  # wrap along the row and the column
    assert all(d == 3 for _, d in build({"kind": "random_regular", "k": 3}).degree())
    assert build({"kind": "torus", "rows": 1}).number_of_edges() == N  # a 1 × n torus is a ring
    assert build({"kind": "ring"}, n=1).number_of_edges() == 0  # no self-loop
    assert build({"kind": "ring"}, n=2).number_of_edges() == 1


def test_adjacency_file_and_npy(tmp_path):
    ring = nx.to_numpy_array(nx.cycle_graph(5))
    text = tmp_path / "ring.txt"
    np.savetxt(text, ring, fmt="%d")
    npy = tmp_path / "ring.npy"
    np.save(npy, ring)
    for path in (text, npy):
        graph = build({"kind": "from_file", "path": str(path)}, n=5)
        assert sorted(graph.edges()) == sorted(nx.cycle_graph(5).edges())


@pytest.mark.parametrize("kind", ["erdos_renyi", "random_regular", "small_world"])
def test_random_graphs_depend_only_on_the_generator(kind):
    np.random.seed(1)  # noqa: NPY002 - global state must make no difference
    first = sorted(build(GRAPHS[kind], seed=5).edges())
    np.random.seed(2)  # noqa: NPY002
    assert sorted(build(GRAPHS[kind], seed=5).edges()) == first
    others = {tuple(sorted(build(GRAPHS[kind], seed=s).edges())) for s in range(6, 10)}
    assert len(others | {tuple(first)}) > 1


# ---------------------------------------------------------------------------------------------------
# Mixing matrices


@pytest.mark.parametrize("mixing", [*BUILT_IN_MIXINGS, "from_file"])
@pytest.mark.parametrize("kind", list(GRAPHS))
def test_mixing_is_doubly_stochastic_for_every_graph_and_mixing_kind(
    kind, mixing, edge_file, tmp_path
):
    spec = dict(GRAPHS[kind], **({"path": edge_file} if kind == "from_file" else {}))
    graph = build(spec)
    if mixing == "from_file":  # a user-supplied matrix: the MH weights of this graph, as text
        path = tmp_path / "W.txt"
        np.savetxt(path, mixing_matrix(graph, "metropolis_hastings"), fmt="%.17g")
        section = parse({"servers": N, "mixing": {"kind": "from_file", "path": str(path)}})
        W = mixing_matrix(graph, section.mixing)
    else:
        W = mixing_matrix(graph, mixing)
    assert_doubly_stochastic(W, graph, on_links=mixing != "uniform")
    check_mixing(W, symmetric=True)
    assert 0 < spectral_gap(W) <= 1  # connected with positive self-weights: consensus happens


def test_metropolis_hastings_and_max_degree_by_hand():
    star = nx.star_graph(3)  # centre 0 (degree 3), leaves 1..3 (degree 1)
    W = mixing_matrix(star, "metropolis_hastings")
    np.testing.assert_allclose(W[0], [1 / 4, 1 / 4, 1 / 4, 1 / 4], atol=1e-15)
    np.testing.assert_allclose(W[1], [1 / 4, 3 / 4, 0, 0], atol=1e-15)
    W = mixing_matrix(star, "max_degree")  # 1/(1 + d_max) = 1/4 on links
    np.testing.assert_allclose(W[0], [1 / 4] * 4, atol=1e-15)
    np.testing.assert_allclose(W[2], [1 / 4, 0, 3 / 4, 0], atol=1e-15)
    ring = mixing_matrix(nx.cycle_graph(5), "metropolis_hastings")
    np.testing.assert_allclose(ring[0], [1 / 3, 1 / 3, 0, 0, 1 / 3], atol=1e-15)
    np.testing.assert_allclose(mixing_matrix(nx.path_graph(4), "uniform"), np.full((4, 4), 0.25))
    np.testing.assert_array_equal(mixing_matrix(nx.empty_graph(1)), [[1.0]])


def test_mixing_file_may_use_fractions(tmp_path):
    path = tmp_path / "W.txt"
    path.write_text("1/3 1/3 1/3\n1/3 1/3 1/3  # a comment\n1/3, 1/3, 1/3\n")
    section = parse(
        {"servers": 3, "graph": "complete", "mixing": {"kind": "from_file", "path": str(path)}}
    )
    np.testing.assert_allclose(mixing_matrix(nx.complete_graph(3), section.mixing), 1 / 3)


@SMALL
@given(
    kind=st.sampled_from(["erdos_renyi", "random_regular", "small_world", "torus", "ring"]),
    mixing=st.sampled_from(BUILT_IN_MIXINGS),
    n=st.integers(6, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_graphs_give_doubly_stochastic_mixing(kind, mixing, n, seed):
    spec = dict(GRAPHS[kind])
    if kind == "random_regular":
        spec["k"] = 4
    graph = build(spec, n=n, seed=seed)
    assert_doubly_stochastic(mixing_matrix(graph, mixing), graph, on_links=mixing != "uniform")


# ---------------------------------------------------------------------------------------------------
# Spectral gap and consensus


@pytest.mark.parametrize("mixing", BUILT_IN_MIXINGS)
@pytest.mark.parametrize("kind", [k for k in GRAPHS if k != "from_file"])
def test_spectral_gap_matches_numpy_eigenvalues(kind, mixing):
    W = mixing_matrix(build(GRAPHS[kind]), mixing)
    gap = spectral_gap(W)
    assert gap == pytest.approx(1 - second_modulus(W), abs=1e-10)
    # For symmetric doubly stochastic W, |λ₂| is also the operator norm of W − 11ᵀ/n.
    J = np.full_like(W, 1 / N)
    assert gap == pytest.approx(1 - np.linalg.norm(W - J, 2), abs=1e-10)


@SMALL
@given(n=st.integers(3, 60))
def test_ring_gap_has_the_closed_form(n):
    # MH on a ring: W = (I + S + Sᵀ)/3, eigenvalues (1 + 2 cos(2πk/n))/3, and |λ₂| is k = 1.
    W = mixing_matrix(nx.cycle_graph(n), "metropolis_hastings")
    assert spectral_gap(W) == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / n)), abs=1e-12)


def test_gap_is_zero_when_consensus_is_impossible():
    two_parts = nx.disjoint_union(nx.cycle_graph(3), nx.cycle_graph(3))
    assert spectral_gap(mixing_matrix(two_parts)) == pytest.approx(0, abs=1e-12)
    assert spectral_gap(np.eye(4)) == 0
    assert spectral_gap([[0.0, 1.0], [1.0, 0.0]]) == pytest.approx(0, abs=1e-12)  # periodic
    assert spectral_gap(np.full((5, 5), 0.2)) == pytest.approx(1, abs=1e-12)


@SMALL
@given(
    kind=st.sampled_from(["ring", "torus", "erdos_renyi", "random_regular", "small_world"]),
    mixing=st.sampled_from(BUILT_IN_MIXINGS),
    n=st.integers(5, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_consensus_contracts_at_least_as_fast_as_the_gap_says(kind, mixing, n, seed):
    spec = dict(GRAPHS[kind], **({"k": 2} if kind == "random_regular" else {}))
    W = mixing_matrix(build(spec, n=n, seed=seed), mixing)
    rate = 1 - spectral_gap(W)
    x = np.random.default_rng(seed).normal(size=(n, 3))
    mean = x.mean(axis=0)
    start = np.linalg.norm(x - mean)
    for t in range(1, 41):
        x = consensus_steps(W, x, 1)
        np.testing.assert_allclose(x.mean(axis=0), mean, rtol=0, atol=1e-12)  # W keeps the mean
        assert np.linalg.norm(x - mean) <= rate**t * start * (1 + 1e-9) + 1e-12


def test_ring_consensus_converges_at_the_rate_the_gap_predicts():
    n = 10
    W = mixing_matrix(nx.cycle_graph(n), "metropolis_hastings")
    x0 = np.random.default_rng(2024).normal(size=n)
    mean = x0.mean()
    errors = [np.linalg.norm(consensus_steps(W, x0, t) - mean) for t in (40, 140)]
    observed = (errors[1] / errors[0]) ** (1 / 100)
    predicted = 1 - spectral_gap(W)
    assert observed == pytest.approx(predicted, rel=1e-3)
    assert errors[1] <= predicted**140 * np.linalg.norm(x0 - mean)


def test_complete_graph_with_uniform_mixing_averages_exactly_in_one_step():
    W = mixing_matrix(build({"kind": "complete"}), "uniform")
    x0 = np.random.default_rng(7).normal(size=(N, 4))
    x1 = consensus_steps(W, x0, 1)
    np.testing.assert_allclose(x1, np.tile(x0.mean(axis=0), (N, 1)), rtol=0, atol=1e-12)
    assert consensus_error(x1).max() < 1e-12
    assert consensus_error(x0).min() > 0


def test_dfl_contraction_for_the_five_cycle():
    # ALGORITHMS.md §3.8: σ_A = ‖A^{T_S} − 11ᵀ/M‖₂ ≈ 2e-7 for the 5-cycle with MH weights, T_S = 25.
    W = mixing_matrix(nx.cycle_graph(5), "metropolis_hastings")
    sigma = consensus_contraction(W, 25)
    assert sigma == pytest.approx(((1 + 2 * math.cos(2 * math.pi / 5)) / 3) ** 25, rel=1e-6)
    assert sigma == pytest.approx((1 - spectral_gap(W)) ** 25, rel=1e-6)
    assert 1e-7 < sigma < 3e-7


def test_consensus_steps_on_torch_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    W = mixing_matrix(nx.cycle_graph(6))
    x0 = np.arange(12.0).reshape(6, 2)
    xt = torch.tensor(x0, dtype=torch.float64)
    out = consensus_steps(W, xt, 5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), consensus_steps(W, x0, 5), rtol=0, atol=1e-12)
    assert torch.equal(xt, torch.tensor(x0))  # input untouched
    np.testing.assert_array_equal(consensus_steps(W, x0, 0), x0)


# ---------------------------------------------------------------------------------------------------
# Links, clients, failures, the bundle


def test_link_delay_is_latency_plus_bytes_over_bandwidth():
    assert link_delay_s(LinkConfig(latency_s=0.1, bandwidth_mbps=100), 1_250_000) == pytest.approx(
        0.2
    )
    assert link_delay_s(LinkConfig(latency_s=0.3, bandwidth_mbps=None), 10**9) == 0.3


@SMALL
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1))
def test_client_assignment_partitions_the_clients(counts, seed):
    n, total = len(counts), sum(counts)
    for spec in (counts, counts[0]):
        groups = client_assignment(n, spec)
        assert len(groups) == n
        ids = [c for g in groups for c in g]
        assert sorted(ids) == list(range(total if spec is counts else n * counts[0]))
    shuffled = np.random.default_rng(seed).permutation(total).tolist()
    explicit = [shuffled[a : a + c] for a, c in zip(np.cumsum([0, *counts]), counts, strict=False)]
    groups = client_assignment(n, explicit)
    assert [sorted(g) for g in explicit] == [list(g) for g in groups]
    config = parse({"servers": n, "clients_per_server": explicit})
    assert config.n_clients == total and config.assignment() == groups


def test_failures_cut_links_and_keep_mixing_doubly_stochastic():
    config = parse(
        {
            "servers": 6,
            "graph": "ring",
            "failures": [{"at_s": 10, "link": [0, 1]}, {"at_s": 20, "until_s": 30, "node": 3}],
        }
    )
    topo = build_topology(config)
    assert isinstance(topo, Topology)
    assert failure_times(config.failures) == [10, 20, 30]
    assert topo.mixing_at(5) is topo.W
    assert not topo.graph_at(15).has_edge(0, 1) and topo.graph_at(15).number_of_edges() == 5
    W = topo.mixing_at(25)
    assert topo.graph_at(25).degree(3) == 0
    np.testing.assert_array_equal(W[3], np.eye(6)[3])  # a failed server keeps its own model
    assert_doubly_stochastic(W, topo.graph_at(25))
    assert topo.neighbours(2, W) == (1,) and topo.neighbours(2) == (1, 3)
    assert topo.graph_at(30).degree(3) == 2  # repaired
    np.testing.assert_array_equal(cut_pairs(topo.W, []), topo.W)
    assert topo.summary()["spectral_gap"] == pytest.approx(spectral_gap(topo.W))
    assert graph_at(topo.graph, [], 0).number_of_edges() == 6
    assert topo.link_delay_s(0) == pytest.approx(0.1)


def test_shorthand_defaults_and_round_trip():
    config = parse({"graph": "torus", "mixing": "uniform"})
    assert config.graph.kind == "torus" and config.mixing.kind == "uniform"
    assert parse(config.model_dump(mode="json")) == config
    default = TopologyConfig()
    assert (default.servers, default.graph.kind, default.mixing.kind) == (
        5,
        "ring",
        "metropolis_hastings",
    )
    assert default.n_clients == 25
    assert parse({"graph": {"p": 0.3, "kind": "erdos_renyi"}}).graph.p == 0.3


def test_draw_graph_returns_a_figure(tmp_path):
    from matplotlib.figure import Figure

    for kind in ("ring", "torus", "erdos_renyi"):  # circular, grid and spring layouts
        fig = draw_graph(build(GRAPHS[kind]), title=kind)
        assert isinstance(fig, Figure)
        assert len(fig.axes[0].texts) == N  # one label per server
    fig.savefig(tmp_path / "graph.png", dpi=40)  # Agg, without pyplot
    assert (tmp_path / "graph.png").stat().st_size > 0
    fig = Figure()
    ax = fig.add_subplot()
    assert draw_graph(nx.cycle_graph(4), ax) is fig


# ---------------------------------------------------------------------------------------------------
# Bad input: one line naming the key


def raises_at(key: str, *words: str):
    """Context: a ScenarioError on one line whose path is ``key`` and message holds ``words``."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(ScenarioError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            err = self.info.value
            text = str(err)
            assert "\n" not in text, text
            assert err.path == key, text
            assert text.startswith(f"{key}: "), text
            for word in words:
                assert word in text, text
            return handled

    return _Check()


def test_disconnected_graph_is_an_error(tmp_path):
    path = write_edges(tmp_path / "two.txt", [(0, 1), (1, 2), (3, 4)])
    with raises_at("topology.graph", "disconnected", "2 components"):
        build({"kind": "from_file", "path": path}, n=5)
    with raises_at("topology.graph", "disconnected"):  # server 5 is named by no edge
        build({"kind": "from_file", "path": path, "format": "edge_list"}, n=6)
    with raises_at("topology.graph", "no connected erdos_renyi", "3 draws"):
        build({"kind": "erdos_renyi", "p": 0.001, "max_tries": 3}, n=20)


def test_servers_below_one_is_an_error():
    with raises_at("topology.servers", "> 0"):
        parse({"servers": 0})


def test_mixing_file_whose_rows_do_not_sum_to_one_is_an_error(tmp_path):
    W = mixing_matrix(nx.cycle_graph(4))
    W[1, 1] -= 0.1
    path = tmp_path / "W.txt"
    np.savetxt(path, W)
    config = parse({"servers": 4, "mixing": {"kind": "from_file", "path": str(path)}})
    with raises_at("topology.mixing", "row 1", "sums to 0.9"):
        build_topology(config)


def test_unknown_graph_kind_is_an_error():
    with raises_at("topology.graph.kind", "'star'", "ring", "small_world"):
        parse({"graph": {"kind": "star"}})
    with raises_at("topology.graph.kind", "'star'"):
        parse({"graph": "star"})


def test_random_regular_with_odd_degree_sum_is_an_error():
    with raises_at("topology.graph", "even", "servers=5", "k=3"):
        parse({"servers": 5, "graph": {"kind": "random_regular", "k": 3}})


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        (
            {"servers": 5, "graph": {"kind": "random_regular", "k": 5}},
            "topology.graph",
            ["k < servers"],
        ),
        ({"servers": 8, "graph": {"kind": "small_world", "k": 3}}, "topology.graph", ["even"]),
        ({"servers": 12, "graph": {"kind": "torus", "rows": 5}}, "topology.graph", ["divide"]),
        (
            {"servers": 12, "graph": {"kind": "torus", "rows": 2, "cols": 5}},
            "topology.graph",
            ["12"],
        ),
        ({"graph": {"kind": "from_file", "path": " "}}, "topology.graph.path", ["empty"]),
        ({"mixing": {"kind": "from_file", "path": ""}}, "topology.mixing.path", ["empty"]),
        ({"mixing": "average"}, "topology.mixing.kind", ["'average'", "max_degree"]),
        ({"graph": {"kind": "erdos_renyi", "p": 0}}, "topology.graph.p", ["> 0"]),
        ({"servers": 3, "clients_per_server": [2, 2]}, "topology.clients_per_server", ["3"]),
        (
            {"servers": 2, "clients_per_server": [[0, 1], [1]]},
            "topology.clients_per_server",
            ["twice"],
        ),
        (
            {"servers": 2, "clients_per_server": [[0, 2], [3]]},
            "topology.clients_per_server",
            ["missing"],
        ),
        ({"failures": [{"at_s": 1, "node": 9}]}, "topology.failures", ["server 9", "0..4"]),
        ({"failures": [{"at_s": 1}]}, "topology.failures.0", ["exactly one"]),
        ({"failures": [{"at_s": 5, "until_s": 2, "node": 1}]}, "topology.failures.0", ["until_s"]),
        ({"link": {"latency_s": -1}}, "topology.link.latency_s", [">= 0"]),
    ],
)
def test_section_errors_name_the_key(section, key, words):
    with raises_at(key, *words):
        parse(section)


def test_build_time_errors_name_the_key(tmp_path):
    missing = str(tmp_path / "nowhere.txt")
    with raises_at("topology.graph.path", "not found", "nowhere.txt"):
        build({"kind": "from_file", "path": missing})
    config = parse({"servers": 4, "mixing": {"kind": "from_file", "path": missing}})
    with raises_at("topology.mixing.path", "not found", "nowhere.txt"):
        build_topology(config)
    path = tmp_path / "full.txt"
    np.savetxt(path, np.full((4, 4), 0.25))  # averages over non-links of a ring
    config = parse({"servers": 4, "mixing": {"kind": "from_file", "path": str(path)}})
    with raises_at("topology.mixing", "row 0", "server 2", "not link"):
        build_topology(config)
    with raises_at("topology.failures", "not linked"):
        build_topology(parse({"servers": 6, "failures": [{"link": [0, 3]}]}))
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1\n1 x\n")
    with raises_at("topology.graph.path", "line 2"):
        build({"kind": "from_file", "path": str(bad)}, n=3)
    asym = tmp_path / "asym.txt"
    asym.write_text("0 1 0\n0 0 1\n1 1 0\n")
    with raises_at("topology.graph.path", "not symmetric"):
        build({"kind": "from_file", "path": str(asym)}, n=3)


@pytest.mark.parametrize(
    ("W", "words"),
    [
        ([[0.5, 0.5, 0.0]], ["square"]),
        ([[1.5, -0.5], [-0.5, 1.5]], ["row 0", "negative"]),
        ([[0.5, 0.5], [0.2, 0.8]], ["column 0", "sums to 0.7"]),
        ([[0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]], ["row 0", "not symmetric"]),
        ([[np.nan, 1], [1, 0]], ["non-finite"]),
    ],
)
def test_check_mixing_names_the_offending_row(W, words):
    with raises_at("topology.mixing", *words):
        check_mixing(W, symmetric=True)


def test_doubly_stochastic_but_asymmetric_is_accepted_unless_symmetry_is_required():
    cycle = np.roll(np.eye(3), 1, axis=1)  # a permutation: doubly stochastic, not symmetric
    check_mixing(cycle)
    with raises_at("topology.mixing", "not symmetric"):
        check_mixing(cycle, symmetric=True)


@pytest.mark.skipif(
    "topology" not in Scenario.model_fields, reason="topology not wired into the scenario yet"
)
def test_scenario_loader_reports_topology_errors_with_the_key():
    with raises_at("topology.servers"):
        load_scenario({"topology": {"servers": 0}})
    with raises_at("topology.graph.kind", "'star'"):
        load_scenario({"topology": {"graph": {"kind": "star"}}})


def test_failure_config_knows_when_it_is_active():
    f = FailureConfig(at_s=2, until_s=4, node=0)
    assert [f.active(t) for t in (1, 2, 3, 4)] == [False, True, True, False]
