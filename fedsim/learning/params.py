"""A model's parameters as one flat vector plus the map back to named tensors.

Global models, client deltas, buffers and aggregators all work on flat 1-D tensors (or stacked
``[n, d]`` tensors); :class:`ParamSpec` gives named views for ``torch.func.functional_call``. A new
model version is always a new tensor (never mutated in place), so a job may hold a reference to the
version it started from for as long as it needs it, at no copying cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of a module's parameters inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamSpec:
        names, shapes, offsets = [], [], []
        total = 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(total)
            total += math.prod(p.shape)
        return cls(tuple(names), tuple(shapes), tuple(offsets), total)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into ``flat`` (no copy); differentiable with respect to ``flat``."""
        return {
            name: flat[off : off + math.prod(shape)].view(shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets, strict=True)
        }

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The flat vector of named tensors (inverse of :meth:`views`)."""
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def nbytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of one model transfer."""
        return self.numel * torch.empty((), dtype=dtype).element_size()


def all_finite(x: torch.Tensor) -> bool:
    """True when no element of ``x`` is NaN or ±inf.

    Fast path: a NaN or an infinity makes the sum non-finite, so a finite sum proves the tensor
    finite with one reduction and no boolean temporary (the check runs on every arriving update).
    A non-finite sum can also be an overflow of finite values; the exact elementwise test decides.
    """
    if x.numel() == 0:
        return True
    if math.isfinite(float(x.sum())):
        return True
    return bool(torch.isfinite(x).all())
