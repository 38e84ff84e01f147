"""Model builders, registered by name, and seeded initialisation without global RNG state.

Modules are built on the ``meta`` device (no memory, no RNG draws) and only ever used through
``functional_call`` with a flat parameter vector, so one module object serves every client.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from fedsim.config_base import Section
from fedsim.learning.params import ParamSpec


class ModelConfig(Section):
    """The model every client trains."""

    kind: Literal["mlp"] = "mlp"
    """Model family: mlp (fully connected, ReLU)."""
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    """Widths of the hidden layers (empty list = logistic regression)."""


def _mlp(config: ModelConfig, in_features: int, n_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for h in config.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(nn.Flatten(), *layers)


MODELS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {"mlp": _mlp}


def build_model(
    config: ModelConfig, in_features: int, n_classes: int
) -> tuple[nn.Module, ParamSpec]:
    """The module (on the meta device: a pure function of its parameters) and its ParamSpec."""
    with torch.device("meta"):
        module = MODELS[config.kind](config, in_features, n_classes)
    return module, ParamSpec.from_module(module)


def init_params(spec: ParamSpec, generator: torch.Generator) -> torch.Tensor:
    """Initial flat parameters, drawn from ``generator`` (PyTorch's default Linear/Conv scheme).

    Weights and their biases are uniform on ±1/sqrt(fan_in); 1-D weights of normalisation layers are 1.
    """
    chunks = []
    fan_in_of: dict[str, int] = {}
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        prefix = name.rsplit(".", 1)[0]
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            fan_in_of[prefix] = fan_in
            bound = 1.0 / math.sqrt(fan_in)
            values = torch.empty(shape).uniform_(-bound, bound, generator=generator)
        elif name.endswith("bias") and prefix in fan_in_of:
            bound = 1.0 / math.sqrt(fan_in_of[prefix])
            values = torch.empty(shape).uniform_(-bound, bound, generator=generator)
        elif name.endswith("weight"):
            values = torch.ones(shape)
        else:
            values = torch.zeros(shape)
        chunks.append(values.reshape(-1))
    return torch.cat(chunks)
