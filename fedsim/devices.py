"""Client devices (``clients.devices``): each client's compute speed and bandwidth.

- ``builtin`` (the default): speeds from ``clients.heterogeneity`` (and stragglers), bandwidth
  from ``clients.network``, as always.
- ``profile``: a device-profile file, either FedScale's client device capacity (a pickle: client
  id -> ``{'computation': ms per sample, 'communication': kbit/s}``; read with an unpickler that
  runs no code, see :mod:`fedsim.fedscale`) or a CSV ``client,compute_ms_per_sample,bandwidth_kbps``.
  Simulated client ``i`` gets the device of the ``(i mod m)``-th client id of the file in increasing
  order (``m`` ids): round-robin, as for availability traces.

How a profile's numbers become job times (:class:`fedsim.timing.ClientTiming`): with
``clients.compute.per_sample`` the client's mean compute time per sample is its
``compute_ms_per_sample`` (the compute law's draw divided by its mean is the per-job noise: a
``constant`` law gives the profile's times exactly); without it, the profile sets the client's
speed relative to the file's mean device (multiplier ``ms_i / mean ms``) and the compute law the
mean job time. Each transfer takes ``clients.network.latency_s + bytes · 8 / (1000 · kbps)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from fedsim.config_base import DefaultTag, Section
from fedsim.errors import ScenarioError
from fedsim.fedscale import (
    client_csv_rows,
    decode_text,
    device_capacity,
    is_pickle,
    load_plain_pickle,
    read_bytes,
)


class BuiltinDevices(Section):
    """Speeds from clients.heterogeneity, bandwidth from clients.network (the default)."""

    kind: Literal["builtin"] = "builtin"
    """Selects this variant."""


class ProfileDevices(Section):
    """Each client's compute speed and bandwidth from a device-profile file."""

    kind: Literal["profile"] = "profile"
    """Selects this variant."""
    path: str = Field("devices.csv", min_length=1)
    """The file (relative: to the scenario file's folder): a CSV
    client,compute_ms_per_sample,bandwidth_kbps or FedScale's client_device_capacity pickle (read
    with an unpickler that runs no code). Simulated client i gets the (i mod m)-th device of the
    file in increasing client-id order (m ids): round-robin."""

    def check(self) -> None:
        """Read the file: a bad one raises a one-line ScenarioError naming the file (and line)."""
        read_device_profile(self.path)


DevicesConfig = Annotated[
    BuiltinDevices | ProfileDevices,
    Field(discriminator="kind"),
    DefaultTag("kind", "builtin"),
]

_KEY = "clients.devices.path"


class DeviceProfile:
    """Per simulated client: compute ms per sample and bandwidth in kbit/s (round-robin)."""

    def __init__(self, table: dict[int, tuple[float, float]], n_clients: int) -> None:
        ids = sorted(table)
        self.file_mean_ms = sum(table[i][0] for i in ids) / len(ids)
        """Mean compute ms per sample over the file's devices (the reference speed)."""
        self.compute_ms = [table[ids[c % len(ids)]][0] for c in range(n_clients)]
        self.bandwidth_kbps = [table[ids[c % len(ids)]][1] for c in range(n_clients)]


def build_device_profile(config: DevicesConfig | None, n_clients: int) -> DeviceProfile | None:
    """The devices of ``clients.devices``; None for ``builtin``."""
    if config is None or isinstance(config, BuiltinDevices):
        return None
    return DeviceProfile(read_device_profile(config.path), n_clients)


def read_device_profile(path: str | Path) -> dict[int, tuple[float, float]]:
    """``{client: (compute ms per sample, bandwidth kbit/s)}`` from a FedScale device-capacity
    pickle or a CSV ``client,compute_ms_per_sample,bandwidth_kbps`` (an optional header line,
    ``#`` comments and blank lines skipped). A bad file is a one-line :class:`ScenarioError`."""
    file, data = read_bytes(path, _KEY)
    if is_pickle(data):
        return device_capacity(load_plain_pickle(data, file, _KEY), file, _KEY)
    text = decode_text(data, file, _KEY)
    table: dict[int, tuple[float, float]] = {}
    columns = ("compute_ms_per_sample", "bandwidth_kbps")
    for bad, client, compute, bandwidth in client_csv_rows(text, file, _KEY, str(path), columns):
        if client in table:
            raise bad(f"client {client} appears twice")
        if compute <= 0:
            raise bad(f"compute_ms_per_sample must be > 0, got {compute:g}")
        if bandwidth <= 0:
            raise bad(f"bandwidth_kbps must be > 0, got {bandwidth:g}")
        table[client] = (compute, bandwidth)
    if not table:
        raise ScenarioError(f"{file} holds no devices", path=_KEY, value=str(path))
    return table


__all__ = [
    "BuiltinDevices",
    "DeviceProfile",
    "DevicesConfig",
    "ProfileDevices",
    "build_device_profile",
    "read_device_profile",
]
