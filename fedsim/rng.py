"""Named, independent random streams derived from one scenario seed.

Every component asks for its own stream by name (``streams.generator("timing.noise")``). A stream is
``SeedSequence(seed, spawn_key=(crc32(name),))``, so adding a new stream never shifts the draws of an
existing one: two scenarios that differ only in, say, the attack see the same delays (common random
numbers). No global RNG state is read or written anywhere in fedsim.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class SeedStreams:
    """Factory of seeded generators, one per named purpose."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def sequence(self, name: str, *index: int) -> np.random.SeedSequence:
        """The seed sequence of stream ``name`` (optionally of its ``index``-th child)."""
        return np.random.SeedSequence(self.seed, spawn_key=(_name_key(name), *map(int, index)))

    def generator(self, name: str, *index: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self.sequence(name, *index)))

    def torch_seed(self, name: str, *index: int) -> int:
        """A 63-bit integer seed for a ``torch.Generator``."""
        state = self.sequence(name, *index).generate_state(2, dtype=np.uint32)
        return int(state[0]) << 31 ^ int(state[1])

    def torch_generator(self, name: str, *index: int, device: str | torch.device = "cpu"):
        gen = torch.Generator(device=device)
        gen.manual_seed(self.torch_seed(name, *index))
        return gen


class BlockSampler:
    """Serve scalar draws from a generator in pre-drawn blocks.

    Drawing one scalar from numpy costs about a microsecond; drawing 4096 at once costs about as much as a
    handful. The hot path of a timing-only run draws several scalars per update, so blocks matter. The
    sequence of values is identical to drawing them one by one from the same distribution call with
    ``size=block`` repeatedly, so results do not depend on when values are consumed.
    """

    __slots__ = ("_block", "_buffer", "_draw", "_pos")

    def __init__(self, draw, block: int = 4096) -> None:
        self._draw = draw
        self._block = block
        self._buffer: list[float] = []
        self._pos = 0

    def __call__(self) -> float:
        pos = self._pos
        if pos == len(self._buffer):
            self._buffer = self._draw(self._block).tolist()
            pos = 0
        self._pos = pos + 1
        return self._buffer[pos]
