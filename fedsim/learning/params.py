"""A model's parameters as one flat vector plus the map back to named tensors.

Global models, client deltas, buffers and aggregators all work on flat 1-D tensors (or stacked
``[n, d]`` tensors); :class:`ParamSpec` gives named views for ``torch.func.functional_call``. A new
model version is always a new tensor (never mutated in place), so a job may hold a reference to the
version it started from for as long as it needs it, at no copying cost.

A module's buffers (BatchNorm's running statistics) are part of the vector too, after the
parameters: ``vector = [parameters (n_params) | buffers]``. They travel to and from clients and are
combined by the server like the parameters, but no gradient step touches them (the forward pass in
train mode updates them). Integer and boolean buffers (``num_batches_tracked``, masks) are carried as
float32 (exact up to 2**24) and rounded back to their own dtype whenever the model runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of a module's parameters (then buffers) inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int
    buffers: tuple[str, ...] = ()
    """The names (the last ones of ``names``) that are buffers, not parameters."""
    buffer_numel: int = 0
    """Elements of the vector that are buffers (its tail)."""
    integer_buffers: tuple[tuple[str, torch.dtype], ...] = ()
    """Buffers of an integer or boolean dtype, with that dtype (carried as float32)."""
    init: Callable[[torch.Generator], torch.Tensor] | None = field(
        default=None, compare=False, repr=False
    )
    """The initial vector of an imported model (its own initialisation), drawn from a generator;
    None: :func:`~fedsim.learning.models.init_params`'s scheme for the built-in models."""

    @classmethod
    def from_module(cls, module: nn.Module, init: Callable | None = None) -> ParamSpec:
        names, shapes, offsets = [], [], []
        total = 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(total)
            total += math.prod(p.shape)
        n_params = total
        buffers, integers = [], []
        for name, b in module.named_buffers():
            names.append(name)
            buffers.append(name)
            shapes.append(tuple(b.shape))
            offsets.append(total)
            total += math.prod(b.shape)
            if not (b.dtype.is_floating_point or b.dtype.is_complex):
                integers.append((name, b.dtype))
        return cls(
            tuple(names),
            tuple(shapes),
            tuple(offsets),
            total,
            tuple(buffers),
            total - n_params,
            tuple(integers),
            init,
        )

    @property
    def n_params(self) -> int:
        """Elements of the vector that are trainable parameters (its head)."""
        return self.numel - self.buffer_numel

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into ``flat`` (no copy); differentiable with respect to ``flat``.

        Integer buffers are copies rounded to their dtype (a layer may index or mask with them).
        """
        views = {
            name: flat[off : off + math.prod(shape)].view(shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets, strict=True)
        }
        for name, dtype in self.integer_buffers:
            views[name] = views[name].detach().round().to(dtype)
        return views

    def param_views(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of a parameter vector ``params`` (``[n_params]``, the vector's head)."""
        count = len(self.names) - len(self.buffers)
        return {
            name: params[off : off + math.prod(shape)].view(shape)
            for name, shape, off in zip(
                self.names[:count], self.shapes[:count], self.offsets[:count], strict=True
            )
        }

    def buffer_views(self, buffers: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of a buffer vector ``buffers`` (``[buffer_numel]``, the vector's tail).

        Float buffers are views, so a forward pass in train mode updates ``buffers`` in place;
        integer buffers are rounded copies of their own dtype, to be written back with
        :meth:`write_integer_buffers` once the forward passes are done.
        """
        count, head = len(self.names) - len(self.buffers), self.n_params
        views = {
            name: buffers[off - head : off - head + math.prod(shape)].view(shape)
            for name, shape, off in zip(
                self.names[count:], self.shapes[count:], self.offsets[count:], strict=True
            )
        }
        for name, dtype in self.integer_buffers:
            views[name] = views[name].round().to(dtype)
        return views

    def write_integer_buffers(self, views: dict[str, torch.Tensor], buffers: torch.Tensor) -> None:
        """Copy the integer buffers of ``views`` (updated by forward passes) back into the float
        buffer vector ``buffers``."""
        head = self.n_params
        for name, _dtype in self.integer_buffers:
            i = self.names.index(name)
            off, size = self.offsets[i] - head, math.prod(self.shapes[i])
            buffers[off : off + size] = views[name].reshape(-1).to(buffers.dtype)

    def state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The vector as a module's ``state_dict`` (copies; integer buffers rounded to their dtype):
        ``module.load_state_dict(spec.state_dict(flat))``."""
        views = self.views(flat.detach())
        return {name: tensor.clone() for name, tensor in views.items()}

    @staticmethod
    def flat_state(module: nn.Module) -> torch.Tensor:
        """A module's parameters then buffers as one float32 vector (the layout of
        :meth:`from_module`)."""
        tensors = [p for _n, p in module.named_parameters()]
        tensors += [b for _n, b in module.named_buffers()]
        if not tensors:
            return torch.zeros(0)
        return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors])

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
