"""Stacked execution gives each client the gradient of its own loss, as a per-client loop does."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import grad

from fedsim.learning.models import loss_for
from fedsim.learning.params import ParamSpec
from fedsim.learning.stacked import stack_model, stacked_grads
from tests.test_models import CASES, _inputs, _setup


@pytest.mark.parametrize(("config", "info"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_stacked_grads_match_a_per_client_loop(config, info):
    module, spec, loss, stacked = _setup(config, info)
    model = stack_model(module, spec)
    assert model is not None, "every model that fedsim builds must stack"
    x, y = _inputs(info, clients=3, batch=6, seed=1)
    looped = torch.stack([grad(loss)(stacked[i], x[i], y[i]) for i in range(3)])
    got = stacked_grads(model, loss_for(info), stacked, x, y)
    torch.testing.assert_close(got, looped, atol=1e-5, rtol=1e-5)
    assert looped.abs().sum() > 0
    # Outputs too, not only gradients.
    out = model(stacked, x)
    torch.testing.assert_close(out[1], module_out(module, spec, stacked[1], x[1]))


def module_out(module: nn.Module, spec: ParamSpec, flat: torch.Tensor, x: torch.Tensor):
    return torch.func.functional_call(module, spec.views(flat), (x,))


@pytest.mark.parametrize(("config", "info"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_padded_mini_batches_count_only_their_real_samples(config, info):
    """Client i's loss is the mean over its first b_i samples; the padding gets weight 0."""
    module, spec, loss, stacked = _setup(config, info)
    model = stack_model(module, spec)
    x, y = _inputs(info, clients=3, batch=6, seed=2)
    real = [6, 2, 4]
    weight = torch.zeros(3, 6)
    for i, b in enumerate(real):
        weight[i, :b] = 1.0 / b
    looped = torch.stack(
        [grad(loss)(stacked[i], x[i, : real[i]], y[i, : real[i]]) for i in range(3)]
    )
    got = stacked_grads(model, loss_for(info), stacked, x, y, weight)
    torch.testing.assert_close(got, looped, atol=1e-5, rtol=1e-5)


def test_models_with_other_layers_keep_the_vmap_path():
    odd = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softplus())
    assert stack_model(odd, ParamSpec.from_module(odd)) is None
    dilated_groups = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))
    assert stack_model(dilated_groups, ParamSpec.from_module(dilated_groups)) is None
    assert stack_model(nn.Linear(2, 2), ParamSpec.from_module(nn.Linear(2, 2))) is None
    in_place = nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True))
    assert stack_model(in_place, ParamSpec.from_module(in_place)) is None


def test_elementwise_layers_keep_their_settings():
    """A GELU with the tanh approximation stacks as that GELU, not the default one."""
    module = nn.Sequential(nn.Linear(4, 5), nn.GELU(approximate="tanh"), nn.Linear(5, 2))
    spec = ParamSpec.from_module(module)
    stacked = torch.randn(3, spec.numel)
    x = torch.randn(3, 6, 4)
    got = stack_model(module, spec)(stacked, x)
    for i in range(3):
        want = torch.func.functional_call(module, spec.views(stacked[i]), (x[i],))
        torch.testing.assert_close(got[i], want)


def test_all_finite_is_exact_including_overflowing_sums():
    from fedsim.learning.params import all_finite

    assert all_finite(torch.zeros(5)) and all_finite(torch.empty(0))
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.ones(1000)
        x[637] = bad
        assert not all_finite(x)
    both = torch.tensor([float("inf"), float("-inf")])  # sum NaN
    assert not all_finite(both)
    huge = torch.full((4,), 3e38)  # finite elements whose float32 sum overflows to inf
    assert torch.isinf(huge.sum()) and all_finite(huge)
