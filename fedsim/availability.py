"""Client availability (``clients.availability``): when each client is online.

A model answers two questions per client, lazily and in time order: its state at time 0 with the
time of its first switch (:meth:`Availability.initial`), and, given a switch at ``t`` into a state,
the time of the next switch (:meth:`Availability.next_switch`); ``inf`` means never. The client
pool (:class:`fedsim.clients.ClientPool`) keeps one pending switch per client and applies
the semantics: an offline client is not idle (never sampled, never dispatched), a client going
offline loses its running job at that instant (status ``dropped``, reason ``offline``), and a
client coming online is idle again and the algorithm is told (``Algorithm.on_client_online``).

- ``always``: every client online all the time (the default; the simulator's historical
  behaviour, byte-identical traces: no pool state, no event, no draw).
- ``diurnal``: client ``i`` is online on ``[φ_i + kP, φ_i + kP + fP)`` for every integer ``k``
  (``P = period_s``, ``f = on_fraction``). ``phase: same`` gives every client ``φ_i = offset_s``
  (one time zone; with the default ``offset_s: 0`` everyone starts online); ``phase: spread``
  gives ``φ_i = offset_s + U_i · P`` with ``U_i`` uniform on [0, 1) from the seed stream
  ``availability.phase``.
- ``markov``: an on/off renewal process per client: online spells drawn from ``online`` and
  offline spells from ``offline`` (delay laws; exponential by default, which makes it a
  two-state Markov chain). Each client starts online with the stationary probability
  ``E[on] / (E[on] + E[off])`` (stream ``availability.markov``); its first spell is a full
  draw (exact for exponential spells, memoryless; an approximation for other laws). Spells come
  from the streams ``availability.markov.online`` / ``.offline`` in event order.
- ``trace``: a file of online intervals, either

  - a CSV ``client,online_s,offline_s``, one row per online interval (an optional header line,
    ``#`` comments and blank lines are skipped); a client is offline outside its intervals
    (also after its last one); or
  - FedScale's client behaviour trace (a pickle, told apart by its first byte; see
    :mod:`fedsim.fedscale` for the format and why reading it runs no code): client ``c`` is
    online on ``[active[k], inactive[k])`` repeated with period ``finish_time``, as FedScale
    replays it (intervals clipped to ``[0, finish_time]``; one that ends at ``finish_time``
    runs on into the next cycle's interval starting at 0).

  Overlapping or touching intervals of one client are merged. Simulated client ``i`` follows
  the trace of the ``(i mod m)``-th distinct client id of the file in increasing order (``m``
  ids): round-robin when there are more clients than traces.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from fedsim.config_base import DefaultTag, Period, Section
from fedsim.errors import ScenarioError
from fedsim.fedscale import (
    behaviour_trace,
    client_csv_rows,
    decode_text,
    is_pickle,
    load_plain_pickle,
    merge_intervals,
    read_bytes,
)
from fedsim.rng import BlockSampler, SeedStreams
from fedsim.timing import DelayLaw, ExponentialDelay

INF = math.inf

# ---------------------------------------------------------------------------------------------------
# Configuration


class AlwaysAvailable(Section):
    """Every client is online all the time (the default)."""

    kind: Literal["always"] = "always"
    """Selects this variant."""


class DiurnalAvailability(Section):
    """Each client online for one window of every period (a day by default)."""

    kind: Literal["diurnal"] = "diurnal"
    """Selects this variant."""
    period_s: Period = 86400.0
    """Length of the cycle, in simulated seconds."""
    on_fraction: float = Field(0.5, gt=0, le=1)
    """Share of each period a client is online (1: always online)."""
    phase: Literal["same", "spread"] = "same"
    """Start of each client's window: ``same`` (all at offset_s: one time zone) or ``spread``
    (offset_s plus a uniform share of the period per client, seed stream availability.phase)."""
    offset_s: float = Field(0.0, ge=0)
    """Start of the first window (of every client with phase same), in simulated seconds."""


class MarkovAvailability(Section):
    """Alternating online and offline spells (exponential spells: a two-state Markov chain)."""

    kind: Literal["markov"] = "markov"
    """Selects this variant."""
    online: DelayLaw = Field(default_factory=lambda: ExponentialDelay(mean_s=3600.0))
    """Law of an online spell, in seconds (a delay law; exponential by default)."""
    offline: DelayLaw = Field(default_factory=lambda: ExponentialDelay(mean_s=3600.0))
    """Law of an offline spell, in seconds (a delay law; exponential by default)."""


class TraceAvailability(Section):
    """Online intervals read from a file: a CSV ``client,online_s,offline_s`` or FedScale's
    client behaviour trace (pickle; repeated with each client's period ``finish_time``)."""

    kind: Literal["trace"] = "trace"
    """Selects this variant."""
    path: str = Field("availability.csv", min_length=1)
    """The file (relative: to the scenario file's folder): a CSV with one row per online interval,
    or FedScale's client_behave_trace pickle (read with an unpickler that runs no code; see
    docs/concepts.md). Simulated client i follows the (i mod m)-th client id of the file in
    increasing order (m ids): round-robin when there are more clients than traces."""

    def check(self) -> None:
        """Read the file: a bad one raises a one-line ScenarioError naming the file and line."""
        read_trace(self.path)


AvailabilityConfig = Annotated[
    AlwaysAvailable | DiurnalAvailability | MarkovAvailability | TraceAvailability,
    Field(discriminator="kind"),
    DefaultTag("kind", "always"),
]

# ---------------------------------------------------------------------------------------------------
# Models


class Availability:
    """Per-client on/off schedule, generated lazily in time order."""

    def initial(self, client: int) -> tuple[bool, float]:
        """Whether ``client`` is online at time 0, and the time of its first switch."""
        raise NotImplementedError

    def next_switch(self, client: int, t: float, online: bool) -> float:
        """The time of the switch after the one at ``t`` into state ``online``."""
        raise NotImplementedError

    def initial_all(self, n_clients: int) -> tuple[list[bool], list[float]]:
        """:meth:`initial` of every client, in client order: (states, first switches)."""
        pairs = [self.initial(client) for client in range(n_clients)]
        return [state for state, _ in pairs], [at for _, at in pairs]

    def online_fraction(self) -> float:
        """The long-run share of time a client is online (expected)."""
        raise NotImplementedError

    def shortest_spell_s(self) -> float:
        """A lower bound on the time between two switches of one client; 0 (no bound) keeps the
        pool on its heap calendar, one next switch at a time (models drawing spells in time order)."""
        return 0.0

    def next_switch_all(self, times: np.ndarray, online: np.ndarray) -> np.ndarray:
        """:meth:`next_switch` of many clients at once (models with a :meth:`shortest_spell_s`)."""
        raise NotImplementedError


class Diurnal(Availability):
    def __init__(self, config: DiurnalAvailability, n_clients: int, streams: SeedStreams) -> None:
        self.period = config.period_s
        self.on_s = config.on_fraction * config.period_s
        self.off_s = self.period - self.on_s
        self.fraction = config.on_fraction
        if config.phase == "spread":
            u = streams.generator("availability.phase").random(n_clients)
            self.phase = (config.offset_s + u * self.period).tolist()
        else:
            self.phase = [float(config.offset_s)] * n_clients

    def initial(self, client: int) -> tuple[bool, float]:
        if self.fraction >= 1.0:
            return True, INF
        x = (-self.phase[client]) % self.period  # time since the start of the current window
        if x < self.on_s:
            return True, self.on_s - x
        return False, self.period - x

    def next_switch(self, client: int, t: float, online: bool) -> float:
        return t + (self.on_s if online else self.off_s)

    def shortest_spell_s(self) -> float:
        """A lower bound on the time between two switches of one client (the pool's batched
        calendar: within a window this long, each client switches at most once)."""
        return min(self.on_s, self.off_s) if self.fraction < 1.0 else math.inf

    def next_switch_all(self, times: np.ndarray, online: np.ndarray) -> np.ndarray:
        """:meth:`next_switch` of many clients at once (the same float additions)."""
        return times + np.where(online, self.on_s, self.off_s)

    def initial_all(self, n_clients: int) -> tuple[list[bool], list[float]]:
        if self.fraction >= 1.0:
            return [True] * n_clients, [INF] * n_clients
        x = np.mod(-np.asarray(self.phase[:n_clients], dtype=np.float64), self.period)
        online = x < self.on_s
        return online.tolist(), np.where(online, self.on_s - x, self.period - x).tolist()

    def online_fraction(self) -> float:
        return self.fraction


class Markov(Availability):
    def __init__(self, config: MarkovAvailability, n_clients: int, streams: SeedStreams) -> None:
        on, off = config.online, config.offline
        self.fraction = on.mean / (on.mean + off.mean)
        u = streams.generator("availability.markov").random(n_clients)
        self.state0 = (u < self.fraction).tolist()
        self._on = BlockSampler(partial(on.sample, streams.generator("availability.markov.online")))
        self._off = BlockSampler(
            partial(off.sample, streams.generator("availability.markov.offline"))
        )

    def initial(self, client: int) -> tuple[bool, float]:
        online = self.state0[client]
        return online, self.next_switch(client, 0.0, online)

    def next_switch(self, client: int, t: float, online: bool) -> float:
        return t + (self._on() if online else self._off())

    def online_fraction(self) -> float:
        return self.fraction


class Trace(Availability):
    """Online intervals from a file. A periodic trace (FedScale's, period ``finish_time``) keeps a
    cursor per client, (cycle, interval), advanced at each switch: the pool asks for the next
    switch of a client in time order, so the schedule is exact, with no float cycle arithmetic."""

    def __init__(self, config: TraceAvailability, n_clients: int) -> None:
        table = read_trace(config.path)
        ids = sorted(table)
        traces = [table[ids[i % len(ids)]] for i in range(n_clients)]  # shared, not copies
        self.starts = [t[0] for t in traces]
        self.ends = [t[1] for t in traces]
        self.period = [t[2] for t in traces]
        self.horizon = max((e[-1] for e in self.ends if e), default=0.0)
        self._cycle = [0] * n_clients
        self._k = [0] * n_clients  # the interval the client is in (online) or left last

    def initial(self, client: int) -> tuple[bool, float]:
        starts, ends, period = self.starts[client], self.ends[client], self.period[client]
        if period is not None:
            if not starts:
                return False, INF
            self._cycle[client], self._k[client] = 0, -1
            if starts[0] == 0.0:
                self._k[client] = 0
                return True, self._end_of_spell(client)
            return False, starts[0]
        i = bisect_right(starts, 0.0) - 1
        if i >= 0 and ends[i] > 0.0:
            return True, ends[i]
        return False, starts[i + 1] if i + 1 < len(starts) else INF

    def next_switch(self, client: int, t: float, online: bool) -> float:
        starts, ends, period = self.starts[client], self.ends[client], self.period[client]
        if period is not None:
            if online:  # the next interval starts now
                k = self._k[client] + 1
                if k == len(starts):
                    k = 0
                    self._cycle[client] += 1
                self._k[client] = k
                return self._end_of_spell(client)
            k = self._k[client] + 1  # offline now: the next interval's start
            cycle = self._cycle[client] + (k == len(starts))
            return cycle * period + starts[k % len(starts)]
        i = bisect_right(starts, t)
        if online:
            return ends[i - 1]
        return starts[i] if i < len(starts) else INF

    def _end_of_spell(self, client: int) -> float:
        """End of the online spell in the cursor's interval; an interval ending at the period
        joins the next cycle's first one when that starts at 0 (the cursor moves there)."""
        starts, ends, period = self.starts[client], self.ends[client], self.period[client]
        k = self._k[client]
        if ends[k] == period and starts[0] == 0.0:
            if len(starts) == 1:
                return INF  # online for the whole period: always
            self._cycle[client] += 1
            self._k[client] = k = 0
        return self._cycle[client] * period + ends[k]

    def online_fraction(self) -> float:
        shares = []
        for starts, ends, period in zip(self.starts, self.ends, self.period, strict=True):
            online = sum(e - s for s, e in zip(starts, ends, strict=True))
            shares.append(online / (period if period is not None else self.horizon))
        return sum(shares) / len(shares)


def build_availability(
    config: AvailabilityConfig | None, n_clients: int, streams: SeedStreams
) -> Availability | None:
    """The model of ``clients.availability``; None for ``always`` (nothing to simulate)."""
    if config is None or isinstance(config, AlwaysAvailable):
        return None
    if isinstance(config, DiurnalAvailability):
        return Diurnal(config, n_clients, streams)
    if isinstance(config, MarkovAvailability):
        return Markov(config, n_clients, streams)
    if isinstance(config, TraceAvailability):
        return Trace(config, n_clients)
    raise TypeError(f"unknown availability {config!r}")


# ---------------------------------------------------------------------------------------------------
# The trace file

_KEY = "clients.availability.path"


def read_trace(path: str | Path) -> dict[int, tuple[list[float], list[float], float | None]]:
    """``{client: (starts, ends, period)}`` from a trace file: FedScale's behaviour trace (a pickle:
    periodic, ``period`` its ``finish_time``) or a CSV ``client,online_s,offline_s`` (``period``
    None). A bad file raises a one-line :class:`ScenarioError` naming the file (and line)."""
    file, data = read_bytes(path, _KEY)
    if is_pickle(data):
        return behaviour_trace(load_plain_pickle(data, file, _KEY), file, _KEY)
    table = _parse_csv(decode_text(data, file, _KEY), file, str(path))
    return {client: (starts, ends, None) for client, (starts, ends) in table.items()}


def read_trace_csv(path: str | Path) -> dict[int, tuple[list[float], list[float]]]:
    """``{client: (starts, ends)}`` from a CSV ``client,online_s,offline_s`` (intervals sorted,
    overlapping or touching ones merged). A bad file raises a one-line :class:`ScenarioError`
    naming the file and the line."""
    file, data = read_bytes(path, _KEY)
    return _parse_csv(decode_text(data, file, _KEY), file, str(path))


def _parse_csv(text: str, file: Path, value: str) -> dict[int, tuple[list[float], list[float]]]:
    rows: dict[int, list[tuple[float, float]]] = {}
    for bad, client, on, off in client_csv_rows(text, file, _KEY, value, ("online_s", "offline_s")):
        if on < 0:
            raise bad(f"online_s must be >= 0, got {on:g}")
        if off <= on:
            raise bad(f"offline_s must be > online_s, got {on:g},{off:g}")
        rows.setdefault(client, []).append((on, off))
    if not rows:
        raise ScenarioError(f"{file} holds no intervals", path=_KEY, value=value)
    return {client: merge_intervals(spans) for client, spans in rows.items()}


__all__ = [
    "AlwaysAvailable",
    "Availability",
    "AvailabilityConfig",
    "DiurnalAvailability",
    "MarkovAvailability",
    "TraceAvailability",
    "build_availability",
    "read_trace",
    "read_trace_csv",
]
