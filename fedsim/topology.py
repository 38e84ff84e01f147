"""Server graphs for decentralized and multi-server FL: the ``topology:`` section and its maths.

The section says how many servers (or peers) there are, how they are linked (a networkx graph), how
each one weighs its neighbours' models (the mixing matrix ``W``), what a message over a link costs in
simulated time, which clients belong to which server, and when links or servers fail::

    topology:
      servers: 5
      graph: {kind: ring}
      mixing: metropolis_hastings
      link: {latency_s: 0.1, bandwidth_mbps: 100}
      clients_per_server: 5
      failures: [{at_s: 100, link: [0, 1]}, {at_s: 50, node: 3}]

The maths is a set of pure functions of graphs and arrays, each tested alone:
:func:`build_graph`, :func:`mixing_matrix`, :func:`check_mixing`, :func:`spectral_gap`,
:func:`consensus_contraction`, :func:`consensus_steps`, :func:`link_delay_s`,
:func:`client_assignment`, :func:`graph_at`, :func:`cut_pairs`. :func:`build_topology` bundles them
into one frozen :class:`Topology` for the simulation.

Random graphs draw from a ``numpy.random.Generator`` passed in (never global state). Servers are
numbered ``0 … servers−1`` and every graph built here has exactly those nodes and no self-loops.
Anything wrong with the input is a one-line :class:`~fedsim.errors.ScenarioError` naming the key
(``topology.graph``, ``topology.mixing``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import networkx as nx
import numpy as np
from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedsim.config_base import DefaultTag, Section
from fedsim.errors import ScenarioError
from fedsim.yamlio import read_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MIXING_TOL = 1e-9
"""Rows and columns of a mixing matrix must sum to 1 within this."""

# ---------------------------------------------------------------------------------------------------
# Graph kinds


def _non_empty_path(value: str) -> str:
    """Validator of the ``path`` of file-based sections: an empty path is an error, not "here"."""
    if not value.strip():
        raise ValueError("path must not be empty")
    return value


class CompleteGraph(Section):
    """Every server linked to every other (one hop between any two)."""

    kind: Literal["complete"] = "complete"
    """Selects this variant."""


class RingGraph(Section):
    """Server i linked to i − 1 and i + 1 (mod servers): the sparsest connected regular graph."""

    kind: Literal["ring"] = "ring"
    """Selects this variant."""


class TorusGraph(Section):
    """A rows × cols grid with wrap-around links; server ``r·cols + c`` sits at row r, column c.

    Degree 4 when both sides are at least 3; a side of 1 gives a ring.
    """

    kind: Literal["torus"] = "torus"
    """Selects this variant."""
    rows: PositiveInt | None = None
    """Rows of the grid; null picks the most nearly square shape with rows ≤ cols."""
    cols: PositiveInt | None = None
    """Columns of the grid; null means servers / rows (rows × cols must equal servers)."""


class ErdosRenyiGraph(Section):
    """Each pair of servers linked independently with probability p (G(n, p)), redrawn until connected."""

    kind: Literal["erdos_renyi"] = "erdos_renyi"
    """Selects this variant."""
    p: float = Field(0.5, gt=0, le=1)
    """Probability of each link (connected with high probability once p > ln(servers)/servers)."""
    max_tries: PositiveInt = 100
    """Draws before giving up on a connected graph (an error naming topology.graph)."""


class RandomRegularGraph(Section):
    """A uniformly random k-regular graph, redrawn until connected (servers × k must be even)."""

    kind: Literal["random_regular"] = "random_regular"
    """Selects this variant."""
    k: PositiveInt = 4
    """Degree of every server (< servers)."""
    max_tries: PositiveInt = 100
    """Draws before giving up on a connected graph (an error naming topology.graph)."""


class SmallWorldGraph(Section):
    """Watts–Strogatz: a ring lattice, each link rewired with probability p, redrawn until connected."""

    kind: Literal["small_world"] = "small_world"
    """Selects this variant."""
    k: PositiveInt = 4
    """Each server starts linked to its k nearest ring neighbours, k/2 on each side (even, < servers)."""
    p: float = Field(0.1, ge=0, le=1)
    """Probability that each lattice link is rewired to a random server."""
    max_tries: PositiveInt = 100
    """Draws before giving up on a connected graph (an error naming topology.graph)."""


class FileGraph(Section):
    """Links read from a local file, servers numbered from 0.

    A text file holds either an edge list (one ``i j`` pair per line) or an adjacency matrix (servers
    rows of servers numbers; a non-zero off-diagonal entry is a link, the diagonal is ignored); a
    ``.npy`` file holds an adjacency matrix. ``#`` starts a comment; commas may separate numbers.
    """

    kind: Literal["from_file"] = "from_file"
    """Selects this variant."""
    path: str = "edges.txt"
    """File to read (a relative path is relative to the scenario file's folder; made absolute when
    the scenario is loaded)."""
    format: Literal["auto", "edge_list", "adjacency"] = "auto"
    """How to read the file; auto takes a servers × servers table as an adjacency matrix and
    two columns as an edge list."""

    _path_given = field_validator("path")(_non_empty_path)


GraphConfig = Annotated[
    CompleteGraph
    | RingGraph
    | TorusGraph
    | ErdosRenyiGraph
    | RandomRegularGraph
    | SmallWorldGraph
    | FileGraph,
    Field(discriminator="kind"),
    DefaultTag("kind", "ring"),
]
GRAPH_KINDS = (
    "complete",
    "ring",
    "torus",
    "erdos_renyi",
    "random_regular",
    "small_world",
    "from_file",
)
RANDOM_GRAPH_KINDS = ("erdos_renyi", "random_regular", "small_world")

# ---------------------------------------------------------------------------------------------------
# Mixing kinds


class MetropolisHastingsMixing(Section):
    """w_ij = 1/(1 + max(d_i, d_j)) on each link and w_ii = 1 − Σ_j w_ij: symmetric and doubly
    stochastic, and each server needs only its neighbours' degrees."""

    kind: Literal["metropolis_hastings"] = "metropolis_hastings"
    """Selects this variant."""


class UniformMixing(Section):
    """w_ij = 1/servers for every pair, linked or not: exact averaging in one step, as if the graph
    were complete (messages then go between every pair of servers)."""

    kind: Literal["uniform"] = "uniform"
    """Selects this variant."""


class MaxDegreeMixing(Section):
    """w_ij = 1/(1 + d_max) on each link and w_ii = 1 − d_i/(1 + d_max), d_max the largest degree."""

    kind: Literal["max_degree"] = "max_degree"
    """Selects this variant."""


class FileMixing(Section):
    """A mixing matrix read from a local file: servers rows of servers numbers (``.npy`` or text;
    text entries may be fractions such as ``1/3`` so rows sum to 1 exactly).

    It must be non-negative with rows and columns summing to 1 within 1e-9, and put weight only on
    linked pairs of topology.graph (and the diagonal).
    """

    kind: Literal["from_file"] = "from_file"
    """Selects this variant."""
    path: str = "mixing.txt"
    """File to read (a relative path is relative to the scenario file's folder; made absolute when
    the scenario is loaded)."""
    symmetric: bool = False
    """Also require W = Wᵀ (within 1e-9)."""

    _path_given = field_validator("path")(_non_empty_path)


MixingConfig = Annotated[
    MetropolisHastingsMixing | UniformMixing | MaxDegreeMixing | FileMixing,
    Field(discriminator="kind"),
    DefaultTag("kind", "metropolis_hastings"),
]
MIXING_KINDS = ("metropolis_hastings", "uniform", "max_degree", "from_file")

# ---------------------------------------------------------------------------------------------------
# Links, failures, the section


class LinkConfig(Section):
    """Server-to-server messages: each costs ``latency_s + bytes / bandwidth`` on every link."""

    latency_s: float = Field(0.1, ge=0)
    """One-way latency of a message between two servers, in seconds."""
    bandwidth_mbps: PositiveFloat | None = 100.0
    """Link bandwidth in megabits per second; null means messages take only the latency."""


class FailureConfig(Section):
    """One failure: a link (``link: [i, j]``) or a server (``node: i``) goes down at ``at_s``.

    A failed server keeps its model but neither sends nor receives; weights on pairs that cannot
    communicate move to the diagonal of the mixing matrix (see :meth:`Topology.mixing_at`).
    """

    at_s: float = Field(0.0, ge=0)
    """Simulated time at which the failure starts, in seconds."""
    until_s: PositiveFloat | None = None
    """Simulated time at which it is repaired, in seconds; null means never."""
    link: tuple[NonNegativeInt, NonNegativeInt] | None = None
    """The two servers whose link fails (set this or node)."""
    node: NonNegativeInt | None = None
    """The server that fails (set this or link)."""

    @model_validator(mode="after")
    def _one_target(self) -> FailureConfig:
        if (self.link is None) == (self.node is None):
            raise ValueError("a failure sets exactly one of link: [i, j] or node: i")
        if self.link is not None and self.link[0] == self.link[1]:
            raise ValueError(f"link {list(self.link)} joins a server to itself")
        if self.until_s is not None and self.until_s <= self.at_s:
            raise ValueError(f"until_s ({self.until_s}) must be > at_s ({self.at_s})")
        return self

    def active(self, t: float) -> bool:
        """Whether the failure is in effect at simulated time ``t``."""
        return self.at_s <= t and (self.until_s is None or t < self.until_s)


ClientsPerServer = PositiveInt | list[PositiveInt] | list[list[NonNegativeInt]]


def _shorthand(value: Any) -> Any:
    """``graph: ring`` / ``mixing: uniform`` mean ``{kind: ring}`` / ``{kind: uniform}``."""
    return {"kind": value} if isinstance(value, str) else value


class TopologyConfig(Section):
    """Servers (or peers) linked by a graph, for multi-server and decentralized algorithms."""

    json_shorthands: ClassVar[dict[str, Any]] = {
        "graph": "kind",
        "mixing": "kind",
    }  # graph: ring (see _kind_shorthand)
    servers: PositiveInt = 5
    """Number of servers (or peers): the nodes of the graph."""
    graph: GraphConfig = Field(default_factory=RingGraph)
    """How servers are linked: complete | ring | torus | erdos_renyi | random_regular |
    small_world | from_file (``graph: ring`` is short for ``graph: {kind: ring}``)."""
    mixing: MixingConfig = Field(default_factory=MetropolisHastingsMixing)
    """Mixing matrix W of consensus steps: metropolis_hastings | uniform | max_degree | from_file
    (``mixing: uniform`` is short for ``mixing: {kind: uniform}``)."""
    link: LinkConfig = Field(default_factory=LinkConfig)
    """Cost of one message over a server-to-server link."""
    clients_per_server: ClientsPerServer = 5
    """Clients of each server: a number (the same for all; server s gets the next block of client
    ids), a list of counts (one per server), or a list of client-id lists (one per server, every
    client exactly once)."""
    failures: list[FailureConfig] = Field(default_factory=list)
    """Link and server failures: ``{at_s: 100, link: [0, 1]}`` or ``{at_s: 50, node: 3}``, each
    with an optional ``until_s`` repair time."""

    @field_validator("graph", "mixing", mode="before")
    @classmethod
    def _kind_shorthand(cls, value: Any) -> Any:
        return _shorthand(value)

    @field_validator("graph")
    @classmethod
    def _graph_fits(cls, graph: Any, info: ValidationInfo) -> Any:
        n = info.data.get("servers")
        if n is not None:
            problem = _graph_problem(graph, n)
            if problem:
                raise ValueError(problem)
        return graph

    @field_validator("clients_per_server")
    @classmethod
    def _assignment_fits(cls, value: Any, info: ValidationInfo) -> Any:
        n = info.data.get("servers")
        if n is not None:
            try:
                client_assignment(n, value)
            except ScenarioError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("failures")
    @classmethod
    def _failures_fit(cls, failures: list[FailureConfig], info: ValidationInfo) -> Any:
        n = info.data.get("servers")
        if n is None:
            return failures
        for i, f in enumerate(failures):
            named = list(f.link) if f.link is not None else [f.node]
            bad = [s for s in named if s is not None and s >= n]
            if bad:
                raise ValueError(f"entry {i} names server {bad[0]}, but servers are 0..{n - 1}")
        return failures

    @property
    def n_clients(self) -> int:
        """Total number of clients over all servers."""
        return sum(len(c) for c in client_assignment(self.servers, self.clients_per_server))

    def assignment(self) -> tuple[tuple[int, ...], ...]:
        """Client ids of each server (see :func:`client_assignment`)."""
        return client_assignment(self.servers, self.clients_per_server)


def _graph_problem(graph: Any, n: int) -> str | None:
    """Why ``graph`` cannot have ``n`` servers, or None."""
    kind = graph.kind
    if kind == "torus":
        try:
            torus_shape(n, graph.rows, graph.cols)
        except ValueError as exc:
            return str(exc)
    elif kind == "random_regular":
        if graph.k >= n:
            return f"random_regular needs k < servers, got k={graph.k}, servers={n}"
        if (n * graph.k) % 2:
            return f"random_regular needs servers × k even, got servers={n}, k={graph.k}"
    elif kind == "small_world":
        if graph.k % 2:
            return f"small_world needs an even k (k/2 neighbours each side), got k={graph.k}"
        if graph.k >= n:
            return f"small_world needs k < servers, got k={graph.k}, servers={n}"
    return None


def torus_shape(n: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of a torus of ``n`` servers; ``None`` sides are filled in.

    >>> torus_shape(12), torus_shape(12, rows=2), torus_shape(7)
    ((3, 4), (2, 6), (1, 7))
    """
    if rows is None and cols is None:
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    if rows is None:
        assert cols is not None
        if n % cols:
            raise ValueError(f"torus cols={cols} does not divide servers={n}")
        rows = n // cols
    if cols is None:
        if n % rows:
            raise ValueError(f"torus rows={rows} does not divide servers={n}")
        cols = n // rows
    if rows * cols != n:
        raise ValueError(f"torus rows × cols must equal servers, got {rows} × {cols} != {n}")
    return rows, cols


# ---------------------------------------------------------------------------------------------------
# Reading numbers from files


def _resolve(path: str, base_dir: str | Path | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def _read_table(path: str, base_dir: str | Path | None, key: str) -> np.ndarray:
    """A 2-D float array from ``.npy`` or text (``#`` comments, commas or spaces, fractions)."""
    file = _resolve(path, base_dir)
    if not file.is_file():
        raise ScenarioError(f"file not found: {file}", path=key, value=path)
    if file.suffix == ".npy":
        try:
            table = np.asarray(np.load(file, allow_pickle=False), dtype=float)
        except (OSError, ValueError, TypeError, EOFError) as exc:
            problem = " ".join(str(exc).split())
            raise ScenarioError(f"cannot read {file}: {problem}", path=key, value=path) from None
        if table.ndim != 2:
            raise ScenarioError(
                f"{file} must hold a 2-D array, got shape {table.shape}", path=key, value=path
            )
        return table
    rows: list[list[float]] = []
    try:
        text = read_text(file, "table")
    except ScenarioError as exc:
        raise ScenarioError(exc.message, path=key, value=path) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].replace(",", " ").split()
        if not tokens:
            continue
        try:
            rows.append([float(Fraction(t)) for t in tokens])
        except (ValueError, ZeroDivisionError):
            raise ScenarioError(
                f"{file} line {lineno}: not a number in {line.strip()!r}", path=key, value=path
            ) from None
        if len(rows[-1]) != len(rows[0]):
            raise ScenarioError(
                f"{file} line {lineno}: {len(rows[-1])} numbers, earlier lines have {len(rows[0])}",
                path=key,
                value=path,
            )
    if not rows:
        raise ScenarioError(f"{file} holds no numbers", path=key, value=path)
    return np.asarray(rows, dtype=float)


def _graph_from_file(config: FileGraph, n: int, base_dir: str | Path | None) -> nx.Graph:
    key = "topology.graph.path"
    table = _read_table(config.path, base_dir, key)
    fmt = config.format
    if fmt == "auto":
        if Path(config.path).suffix == ".npy" or table.shape == (n, n):
            fmt = "adjacency"
        elif table.shape[1] == 2:
            fmt = "edge_list"
        else:
            raise ScenarioError(
                f"{config.path}: a {table.shape[0]} × {table.shape[1]} table is neither an edge "
                f"list (2 columns) nor a {n} × {n} adjacency matrix",
                path=key,
            )
    graph = nx.empty_graph(n)
    if fmt == "adjacency":
        if table.shape != (n, n):
            raise ScenarioError(
                f"{config.path}: adjacency matrix must be {n} × {n} (servers), got "
                f"{table.shape[0]} × {table.shape[1]}",
                path=key,
            )
        linked = (table != 0) & ~np.eye(n, dtype=bool)
        asym = np.argwhere(linked != linked.T)
        if len(asym):
            i, j = asym[0]
            raise ScenarioError(
                f"{config.path}: adjacency matrix is not symmetric (entry [{i}, {j}] is "
                f"{table[i, j]:g}, [{j}, {i}] is {table[j, i]:g})",
                path=key,
            )
        graph.add_edges_from(map(tuple, np.argwhere(np.triu(linked, 1)).tolist()))
    else:
        if table.shape[1] != 2:
            raise ScenarioError(
                f"{config.path}: an edge list has 2 columns, got {table.shape[1]}", path=key
            )
        for row, (a, b) in enumerate(table):
            if a != int(a) or b != int(b) or not (0 <= a < n and 0 <= b < n):
                raise ScenarioError(
                    f"{config.path}: edge {row} ({a:g}, {b:g}) must join servers 0..{n - 1}",
                    path=key,
                )
            if a != b:
                graph.add_edge(int(a), int(b))
    return graph


# ---------------------------------------------------------------------------------------------------
# Graphs


def _int_seed(rng: np.random.Generator) -> int:
    """A seed for networkx generators (an int keeps their draws stable across networkx versions)."""
    return int(rng.integers(2**63))


def _erdos_renyi(n: int, p: float, rng: np.random.Generator) -> nx.Graph:
    graph = nx.empty_graph(n)
    i, j = np.triu_indices(n, 1)
    keep = rng.random(len(i)) < p
    graph.add_edges_from(zip(i[keep].tolist(), j[keep].tolist(), strict=True))
    return graph


def _torus(rows: int, cols: int) -> nx.Graph:
    graph = nx.empty_graph(rows * cols)
    for r in range(rows):
        for c in range(cols):
            here = r * cols + c
            graph.nodes[here]["pos"] = (float(c), float(-r))
            for other in (((r + 1) % rows) * cols + c, r * cols + (c + 1) % cols):
                if other != here:
                    graph.add_edge(here, other)
    return graph


def _components_text(graph: nx.Graph) -> str:
    parts = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0])
    shown = [
        "{" + ", ".join(map(str, c[:6])) + (", …" if len(c) > 6 else "") + "}" for c in parts[:4]
    ]
    more = f" and {len(parts) - 4} more" if len(parts) > 4 else ""
    return f"{len(parts)} components: {', '.join(shown)}{more}"


def build_graph(
    config: TopologyConfig,
    rng: np.random.Generator | None = None,
    *,
    base_dir: str | Path | None = None,
) -> nx.Graph:
    """The connected server graph of ``config``: nodes ``0 … servers−1``, no self-loops.

    Random kinds (erdos_renyi, random_regular, small_world) draw from ``rng`` and are redrawn until
    connected, up to ``max_tries`` times; then, or for a disconnected file graph, a ScenarioError
    naming ``topology.graph``. ``graph.graph["kind"]`` records the kind (used to lay it out).

    >>> g = build_graph(TopologyConfig(servers=4, graph={"kind": "ring"}))
    >>> sorted(g.edges())
    [(0, 1), (0, 3), (1, 2), (2, 3)]
    """
    n = config.servers
    spec = config.graph
    problem = _graph_problem(spec, n)
    if problem:
        raise ScenarioError(problem, path="topology.graph")
    if spec.kind in RANDOM_GRAPH_KINDS and rng is None:
        raise TypeError(f"graph kind {spec.kind} needs a numpy Generator")
    graph: nx.Graph
    if spec.kind == "complete":
        graph = nx.complete_graph(n)
    elif spec.kind == "ring":
        graph = nx.cycle_graph(n)
    elif spec.kind == "torus":
        graph = _torus(*torus_shape(n, spec.rows, spec.cols))
    elif spec.kind == "from_file":
        graph = _graph_from_file(spec, n, base_dir)
    else:
        assert rng is not None
        for _ in range(spec.max_tries):
            if spec.kind == "erdos_renyi":
                graph = _erdos_renyi(n, spec.p, rng)
            elif spec.kind == "random_regular":
                graph = nx.random_regular_graph(spec.k, n, seed=_int_seed(rng))
            else:
                graph = nx.watts_strogatz_graph(n, spec.k, spec.p, seed=_int_seed(rng))
            if nx.is_connected(graph):
                break
        else:
            hint = (
                f"; p={spec.p:g} is small (connectivity needs p > ln(n)/n = {math.log(n) / n:.3g})"
                if spec.kind == "erdos_renyi"
                else ""
            )
            raise ScenarioError(
                f"no connected {spec.kind} graph of {n} servers in {spec.max_tries} draws{hint}",
                path="topology.graph",
            )
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    if n > 1 and not nx.is_connected(graph):
        raise ScenarioError(
            f"the graph is disconnected ({_components_text(graph)})", path="topology.graph"
        )
    graph.graph["kind"] = spec.kind
    return graph


def _adjacency(graph: nx.Graph) -> np.ndarray:
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise ValueError("graph nodes must be 0 … n−1")
    a = nx.to_numpy_array(graph, nodelist=range(n), weight=None)
    a = (a != 0).astype(float)
    np.fill_diagonal(a, 0.0)
    return a


def graph_at(graph: nx.Graph, failures: Iterable[FailureConfig], t: float) -> nx.Graph:
    """A copy of ``graph`` without the links that are down at time ``t``.

    A failed server keeps its node but loses every link.
    """
    out = graph.copy()
    for f in failures:
        if not f.active(t):
            continue
        if f.link is not None:
            if out.has_edge(*f.link):
                out.remove_edge(*f.link)
        else:
            out.remove_edges_from(list(out.edges(f.node)))
    return out


def failure_times(failures: Iterable[FailureConfig]) -> list[float]:
    """Sorted times at which the set of working links changes (starts and repairs)."""
    times = {f.at_s for f in failures} | {f.until_s for f in failures if f.until_s is not None}
    return sorted(times)


# ---------------------------------------------------------------------------------------------------
# Mixing matrices


def check_mixing(
    W: Any,
    *,
    symmetric: bool = False,
    tol: float = MIXING_TOL,
    path: str = "topology.mixing",
) -> np.ndarray:
    """``W`` as a float array if it is a valid mixing matrix, else a ScenarioError naming ``path``.

    Valid: square, finite, non-negative, every row and every column summing to 1 within ``tol``
    (doubly stochastic), and ``W = Wᵀ`` within ``tol`` when ``symmetric``. The message names the
    first offending row (or column, or entry).

    >>> check_mixing([[0.5, 0.5], [0.5, 0.5]], symmetric=True).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    W = np.asarray(W, dtype=float)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ScenarioError(f"must be a non-empty square matrix, got shape {W.shape}", path=path)
    bad = np.argwhere(~np.isfinite(W))
    if len(bad):
        i, j = bad[0]
        raise ScenarioError(f"row {i} has a non-finite entry W[{i}, {j}] = {W[i, j]}", path=path)
    bad = np.argwhere(W < 0)
    if len(bad):
        i, j = bad[0]
        raise ScenarioError(f"row {i} has a negative entry W[{i}, {j}] = {W[i, j]:g}", path=path)
    rows = W.sum(axis=1)
    off = np.flatnonzero(np.abs(rows - 1) > tol)
    if len(off):
        i = off[0]
        raise ScenarioError(f"row {i} sums to {rows[i]:.12g}, not 1 (within {tol:g})", path=path)
    cols = W.sum(axis=0)
    off = np.flatnonzero(np.abs(cols - 1) > tol)
    if len(off):
        j = off[0]
        raise ScenarioError(
            f"column {j} sums to {cols[j]:.12g}, not 1 (within {tol:g}): W is row- but not "
            "doubly stochastic",
            path=path,
        )
    if symmetric:
        bad = np.argwhere(np.abs(W - W.T) > tol)
        if len(bad):
            i, j = bad[0]
            raise ScenarioError(
                f"row {i} is not symmetric: W[{i}, {j}] = {W[i, j]:g} but W[{j}, {i}] = "
                f"{W[j, i]:g}",
                path=path,
            )
    return W


_MIXINGS_BY_NAME: dict[str, type[Section]] = {
    "metropolis_hastings": MetropolisHastingsMixing,
    "uniform": UniformMixing,
    "max_degree": MaxDegreeMixing,
    "from_file": FileMixing,
}
"""Mixing kind → its section (a bare name means the section's defaults)."""


def _mixing_kind(kind: str | Any) -> Any:
    if not isinstance(kind, str):
        return kind
    if kind not in _MIXINGS_BY_NAME:
        raise ScenarioError(
            f"unknown name {kind!r}; known: {', '.join(MIXING_KINDS)}",
            path="topology.mixing.kind",
        )
    return _MIXINGS_BY_NAME[kind]()


def mixing_matrix(
    graph: nx.Graph,
    kind: str | MetropolisHastingsMixing | UniformMixing | MaxDegreeMixing | FileMixing = (
        "metropolis_hastings"
    ),
    *,
    base_dir: str | Path | None = None,
) -> np.ndarray:
    """The ``n × n`` mixing matrix of ``graph`` (nodes ``0 … n−1``), checked by :func:`check_mixing`.

    ``kind`` is a mixing section or the name of a built-in kind:

    - ``metropolis_hastings``: ``w_ij = 1/(1 + max(d_i, d_j))`` on links, ``w_ii = 1 − Σ_j w_ij``;
    - ``uniform``: ``w_ij = 1/n`` everywhere (complete averaging, whatever the graph);
    - ``max_degree``: ``w_ij = 1/(1 + d_max)`` on links, ``w_ii = 1 − d_i/(1 + d_max)``;
    - ``from_file``: read, checked doubly stochastic, and allowed weight only on links and the
      diagonal.

    The built-in kinds are symmetric and doubly stochastic.

    >>> mixing_matrix(nx.path_graph(3)).round(4).tolist()
    [[0.6667, 0.3333, 0.0], [0.3333, 0.3333, 0.3333], [0.0, 0.3333, 0.6667]]
    """
    spec = _mixing_kind(kind)
    a = _adjacency(graph)
    n = a.shape[0]
    if n == 0:
        raise ValueError("the graph has no nodes")
    deg = a.sum(axis=1)
    if spec.kind == "metropolis_hastings":
        W = a / (1.0 + np.maximum.outer(deg, deg))
    elif spec.kind == "max_degree":
        W = a / (1.0 + deg.max())
    elif spec.kind == "uniform":
        return check_mixing(np.full((n, n), 1.0 / n), symmetric=True)
    else:
        W = _read_table(spec.path, base_dir, "topology.mixing.path")
        if W.shape != (n, n):
            raise ScenarioError(
                f"{spec.path}: mixing matrix must be {n} × {n} (servers), got "
                f"{W.shape[0]} × {W.shape[1]}",
                path="topology.mixing",
            )
        W = check_mixing(W, symmetric=spec.symmetric)
        stray = np.argwhere((W > 0) & (a == 0) & ~np.eye(n, dtype=bool))
        if len(stray):
            i, j = stray[0]
            raise ScenarioError(
                f"row {i} puts weight {W[i, j]:g} on server {j}, which topology.graph does not "
                f"link to {i}",
                path="topology.mixing",
            )
        return W
    W[np.diag_indices(n)] = 1.0 - W.sum(axis=1)
    return check_mixing(W, symmetric=True)


def cut_pairs(W: np.ndarray, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """``W`` with the weight between each pair ``(i, j)`` (both ways) moved to the diagonal.

    Rows still sum to 1; a symmetric doubly stochastic ``W`` stays symmetric and doubly stochastic.
    This is how a consensus step goes on when some servers cannot hear from each other.

    >>> cut_pairs(np.full((2, 2), 0.5), [(0, 1)]).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    out = np.array(W, dtype=float)
    for i, j in pairs:
        for a, b in ((i, j), (j, i)):
            out[a, a] += out[a, b]
            out[a, b] = 0.0
    return out


# ---------------------------------------------------------------------------------------------------
# Spectra and consensus


def spectral_gap(W: Any) -> float:
    """``1 − |λ₂|``: one minus the second largest eigenvalue modulus of ``W``.

    For a symmetric doubly stochastic ``W`` this is the per-step contraction of the distance to
    consensus: ``‖W x − x̄‖ ≤ (1 − gap) ‖x − x̄‖``. It is 0 for a disconnected graph (or a
    periodic one, eigenvalue −1), 1 for ``11ᵀ/n``, and 1 by convention for a single server.

    >>> round(spectral_gap(np.full((4, 4), 0.25)), 12)
    1.0
    """
    W = np.asarray(W, dtype=float)
    if W.shape[0] == 1:
        return 1.0
    if np.allclose(W, W.T, rtol=0.0, atol=1e-12):
        moduli = np.abs(np.linalg.eigvalsh(W))
    else:
        moduli = np.abs(np.linalg.eigvals(W))
    moduli = np.sort(moduli)[::-1]
    return float(min(1.0, max(0.0, 1.0 - moduli[1])))


def consensus_contraction(W: Any, steps: int) -> float:
    """``σ = ‖W^steps − 11ᵀ/n‖₂``: how much ``steps`` consensus steps shrink the worst disagreement.

    For a symmetric doubly stochastic ``W`` this equals ``(1 − spectral_gap(W))^steps`` (DFL's σ_A).
    """
    W = np.asarray(W, dtype=float)
    n = W.shape[0]
    power = np.linalg.matrix_power(W, int(steps))
    return float(np.linalg.norm(power - np.full((n, n), 1.0 / n), 2))


def consensus_steps(W: Any, x0: Any, steps: int) -> Any:
    """``steps`` consensus steps ``x ← W x`` from ``x0`` (one row per server: shape ``(n,)`` or
    ``(n, d)``).

    ``x0`` may be a numpy array or a torch tensor (the result has its type, dtype and device); the
    input is never modified. A doubly stochastic ``W`` keeps the servers' mean exactly (up to
    rounding).

    >>> consensus_steps(np.full((2, 2), 0.5), np.array([0.0, 2.0]), 1).tolist()
    [1.0, 1.0]
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if hasattr(x0, "new_tensor"):  # a torch tensor: mix on its device, in its dtype
        w = x0.new_tensor(np.asarray(W, dtype=float))
        x = x0.clone()
        for _ in range(steps):
            x = w @ x
        return x
    w = np.asarray(W, dtype=float)
    x = np.array(x0, dtype=float)
    for _ in range(steps):
        x = w @ x
    return x


def consensus_error(x: Any) -> np.ndarray:
    """Distance of each server's row of ``x`` from the servers' mean (shape ``(n,)``)."""
    x = np.asarray(x, dtype=float)
    x = x.reshape(x.shape[0], -1)
    return np.linalg.norm(x - x.mean(axis=0, keepdims=True), axis=1)


# ---------------------------------------------------------------------------------------------------
# Links and clients


def link_delay_s(link: LinkConfig, nbytes: int) -> float:
    """Simulated seconds for one message of ``nbytes`` over a link: latency + bytes / bandwidth.

    >>> link_delay_s(LinkConfig(latency_s=0.1, bandwidth_mbps=8), 1_000_000)
    1.1
    """
    if link.bandwidth_mbps is None:
        return link.latency_s
    return link.latency_s + nbytes * 8 / (link.bandwidth_mbps * 1e6)


def client_assignment(
    n_servers: int, clients_per_server: int | Sequence[int] | Sequence[Sequence[int]]
) -> tuple[tuple[int, ...], ...]:
    """Client ids of each server (sorted), from a count, a list of counts or a list of id lists.

    A count ``k`` gives server ``s`` clients ``s·k … s·k + k − 1``; a list of counts gives
    consecutive blocks; a list of id lists is taken as is, and must use every id ``0 … N−1``
    exactly once. Every server has at least one client. Errors name
    ``topology.clients_per_server``.

    >>> client_assignment(2, 2), client_assignment(2, [1, 2]), client_assignment(2, [[2], [0, 1]])
    (((0, 1), (2, 3)), ((0,), (1, 2)), ((2,), (0, 1)))
    """
    key = "topology.clients_per_server"
    if isinstance(clients_per_server, Integral) and not isinstance(clients_per_server, bool):
        k = int(clients_per_server)
        if k < 1:
            raise ScenarioError(f"must be >= 1, got {k}", path=key, value=k)
        return tuple(tuple(range(s * k, (s + 1) * k)) for s in range(n_servers))
    entries = list(clients_per_server)
    if len(entries) != n_servers:
        raise ScenarioError(
            f"needs one entry per server ({n_servers}), got {len(entries)}", path=key
        )
    if all(isinstance(e, Integral) and not isinstance(e, bool) for e in entries):
        if any(c < 1 for c in entries):
            s = next(s for s, c in enumerate(entries) if c < 1)
            raise ScenarioError(f"server {s} has {entries[s]} clients (must be >= 1)", path=key)
        starts = np.concatenate([[0], np.cumsum(entries)]).tolist()
        return tuple(tuple(range(starts[s], starts[s + 1])) for s in range(n_servers))
    if not all(isinstance(e, Sequence) and not isinstance(e, str) for e in entries):
        raise ScenarioError("must be a number, a list of counts or a list of id lists", path=key)
    groups = [tuple(sorted(int(c) for c in e)) for e in entries]
    for s, g in enumerate(groups):
        if not g:
            raise ScenarioError(f"server {s} has no clients", path=key)
    ids = [c for g in groups for c in g]
    seen: set[int] = set()
    for s, g in enumerate(groups):
        for c in g:
            if c in seen:
                raise ScenarioError(f"client {c} is listed twice (again for server {s})", path=key)
            seen.add(c)
    missing = sorted(set(range(len(ids))) - seen)
    if missing:
        raise ScenarioError(
            f"client ids must be 0..{len(ids) - 1}; {missing[0]} is missing", path=key
        )
    return tuple(groups)


# ---------------------------------------------------------------------------------------------------
# The bundle used by the simulation


@dataclass(frozen=True)
class Topology:
    """A built topology: the graph, its mixing matrix and gap, and the clients of each server."""

    config: TopologyConfig
    """The section it was built from."""
    graph: nx.Graph
    """The connected server graph (nodes ``0 … servers−1``)."""
    W: np.ndarray
    """The mixing matrix with every link up (read-only)."""
    gap: float
    """Spectral gap of ``W`` (reported in the summary)."""
    assignment: tuple[tuple[int, ...], ...]
    """Client ids of each server."""

    @property
    def servers(self) -> int:
        return self.config.servers

    def neighbours(self, i: int, W: np.ndarray | None = None) -> tuple[int, ...]:
        """Servers whose model server ``i`` mixes in (``W[i, j] > 0``, ``j ≠ i``), in id order."""
        row = (self.W if W is None else W)[i]
        return tuple(int(j) for j in np.flatnonzero(row > 0) if j != i)

    def graph_at(self, t: float) -> nx.Graph:
        """The graph with the links down at time ``t`` removed."""
        return graph_at(self.graph, self.config.failures, t)

    def mixing_at(self, t: float) -> np.ndarray:
        """``W`` at time ``t``: weights between servers that cannot talk moved to the diagonal.

        A pair cannot talk while its link is down or either server is down; this keeps a
        symmetric ``W`` doubly stochastic, and a failed server keeps its own model.
        """
        down = [f for f in self.config.failures if f.active(t)]
        if not down:
            return self.W
        pairs: set[tuple[int, int]] = set()
        for f in down:
            if f.link is not None:
                pairs.add((min(f.link), max(f.link)))
            else:
                assert f.node is not None
                pairs.update((min(f.node, j), max(f.node, j)) for j in range(self.servers))
        return cut_pairs(self.W, sorted((i, j) for i, j in pairs if i != j))

    def link_delay_s(self, nbytes: int) -> float:
        """Simulated seconds for a message of ``nbytes`` between two servers."""
        return link_delay_s(self.config.link, nbytes)

    def summary(self) -> dict[str, Any]:
        """Numbers for ``summary.json``."""
        degrees = [d for _, d in self.graph.degree()]
        return {
            "servers": self.servers,
            "graph": self.config.graph.kind,
            "links": self.graph.number_of_edges(),
            "min_degree": min(degrees),
            "max_degree": max(degrees),
            "mixing": self.config.mixing.kind,
            "spectral_gap": self.gap,
        }


def build_topology(
    config: TopologyConfig,
    rng: np.random.Generator | None = None,
    *,
    base_dir: str | Path | None = None,
) -> Topology:
    """Graph, mixing matrix, gap and client assignment of ``config`` (errors name their key).

    Failed links must be links of the graph (``topology.failures``).
    """
    graph = build_graph(config, rng, base_dir=base_dir)
    W = mixing_matrix(graph, config.mixing, base_dir=base_dir)
    for i, f in enumerate(config.failures):
        if f.link is not None and not graph.has_edge(*f.link):
            raise ScenarioError(
                f"entry {i}: servers {f.link[0]} and {f.link[1]} are not linked in the graph",
                path="topology.failures",
            )
    W.setflags(write=False)
    return Topology(
        config=config,
        graph=graph,
        W=W,
        gap=spectral_gap(W),
        assignment=config.assignment(),
    )


# ---------------------------------------------------------------------------------------------------
# Drawing


def _layout(graph: nx.Graph) -> dict[Any, tuple[float, float]]:
    pos = nx.get_node_attributes(graph, "pos")
    if len(pos) == graph.number_of_nodes():
        return {k: (float(x), float(y)) for k, (x, y) in pos.items()}
    if graph.graph.get("kind") in ("ring", "complete", "small_world"):
        layout = nx.circular_layout(graph)
    else:
        layout = nx.spring_layout(graph, seed=0)
    return {k: (float(v[0]), float(v[1])) for k, v in layout.items()}


def draw_graph(graph: nx.Graph, ax: Axes | None = None, *, title: str | None = None) -> Figure:
    """Draw the server graph (nodes labelled by id) and return the Figure.

    Without ``ax``, a new ``matplotlib.figure.Figure`` is made without pyplot, so this works with
    any backend (Agg included) and leaves no global state behind.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(4, 4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    pos = _layout(graph)
    segments = [(pos[u], pos[v]) for u, v in graph.edges()]
    ax.add_collection(LineCollection(segments, colors="0.55", linewidths=1.2, zorder=1))
    nodes = sorted(graph.nodes)
    xy = np.array([pos[v] for v in nodes]).reshape(-1, 2)
    ax.scatter(xy[:, 0], xy[:, 1], s=300, c="tab:blue", edgecolors="white", zorder=2)
    for v, (x, y) in zip(nodes, xy, strict=True):
        ax.text(x, y, str(v), ha="center", va="center", color="white", fontsize=8, zorder=3)
    ax.set_aspect("equal")
    ax.margins(0.15)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig  # type: ignore[return-value]
