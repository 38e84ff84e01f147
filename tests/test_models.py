"""Every model is a pure function of a flat vector: vmap(grad(loss)) over clients equals a loop."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.errors import ScenarioError
from fedsim.learning.data import DatasetInfo
from fedsim.learning.models import (
    MLPConfig,
    Model,
    ModelConfig,
    build_model,
    check_functional,
    init_params,
    loss_for,
)

MODEL = TypeAdapter(Model)
DIGITS = DatasetInfo("digits", 64, 10, (1, 8, 8))
MNIST = DatasetInfo("mnist_idx", 784, 10, (1, 28, 28))
CIFAR = DatasetInfo("cifar10", 3072, 10, (3, 32, 32))
MNIST1D = DatasetInfo("mnist1d", 40, 10)
SIGNAL = DatasetInfo("two_channel", 64, 4, (2, 32))
REGRESSION = DatasetInfo("synthetic_regression", 3, 1, task="regression")
TOKENS = DatasetInfo("tokens", 12, 5, vocab_size=30)

CASES = [
    ("mlp", {"hidden": [16]}, DIGITS),
    ("mlp-empty", {"kind": "mlp", "hidden": []}, MNIST1D),
    ("logreg", {"kind": "logreg"}, DIGITS),
    ("linear-regression", {"kind": "linear"}, REGRESSION),
    ("cnn-mnist", {"kind": "cnn", "channels": [4, 8], "hidden": [16]}, MNIST),
    (
        "cnn-cifar-groupnorm",
        {"kind": "cnn", "channels": [4, 8], "norm": "group", "groups": 2},
        CIFAR,
    ),
    ("cnn-digits", {"kind": "cnn", "channels": [4], "kernel_size": 3}, DIGITS),
    ("cnn1d-mnist1d", {"kind": "cnn1d", "channels": [8, 8]}, MNIST1D),
    ("cnn1d-groupnorm", {"kind": "cnn1d", "channels": [8], "norm": "group", "groups": 4}, SIGNAL),
    ("transformer-signal", {"kind": "transformer", "d_model": 16, "ff": 32}, MNIST1D),
    ("transformer-image", {"kind": "transformer", "d_model": 16, "layers": 1}, DIGITS),
    ("transformer-tokens", {"kind": "transformer", "d_model": 16, "heads": 4}, TOKENS),
]


def _inputs(info: DatasetInfo, clients: int, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if info.vocab_size is not None:
        x = torch.randint(0, info.vocab_size, (clients, batch, info.in_features), generator=gen)
    else:
        x = torch.randn(clients, batch, *info.input_shape, generator=gen)
    if info.task == "regression":
        y = torch.randn(clients, batch, generator=gen)
    else:
        y = torch.randint(0, info.n_classes, (clients, batch), generator=gen)
    return x, y


def _setup(config: dict, info: DatasetInfo):
    module, spec = build_model(MODEL.validate_python(config), info)
    loss_fn = loss_for(info)

    def loss(flat, x, y):
        return loss_fn(functional_call(module, spec.views(flat), (x,)), y)

    stacked = torch.stack([init_params(spec, torch.Generator().manual_seed(i)) for i in range(3)])
    return module, spec, loss, stacked


@pytest.mark.parametrize(("config", "info"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_vmapped_grad_matches_a_per_client_loop(config, info):
    module, spec, loss, stacked = _setup(config, info)
    assert stacked.shape == (3, spec.numel) and torch.isfinite(stacked).all()
    x, y = _inputs(info, clients=3, batch=5)
    out = functional_call(module, spec.views(stacked[0]), (x[0],))
    assert out.shape == (5, info.n_classes)
    batched = vmap(grad(loss))(stacked, x, y)
    looped = torch.stack([grad(loss)(stacked[i], x[i], y[i]) for i in range(3)])
    assert batched.shape == stacked.shape
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    assert looped.abs().sum() > 0
    # Per-sample losses (vmap over samples inside vmap over clients, as the batched trainer pads
    # mini-batches) average to the batch loss: no layer couples the samples of a batch.
    per_sample = vmap(lambda w, xs, ys: vmap(lambda xi, yi: loss(w, xi[None], yi[None]))(xs, ys))(
        stacked, x, y
    )
    whole = torch.stack([loss(stacked[i], x[i], y[i]) for i in range(3)])
    torch.testing.assert_close(per_sample.mean(1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("config", "info"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_init_is_a_function_of_the_generator(config, info):
    _module, spec = build_model(MODEL.validate_python(config), info)
    a = init_params(spec, torch.Generator().manual_seed(7))
    b = init_params(spec, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (spec.numel,)


def test_model_section_is_a_union_defaulting_to_mlp():
    untagged = MODEL.validate_python({"hidden": [64]})
    assert isinstance(untagged, MLPConfig) and untagged.hidden == [64]
    assert ModelConfig is MLPConfig and ModelConfig().kind == "mlp"
    assert MODEL.validate_python({"kind": "cnn"}).channels == [16, 32]
    with pytest.raises(ValidationError):
        MODEL.validate_python({"kind": "cnn", "hidden_units": 3})


def test_old_build_model_signature_still_works():
    _module, spec = build_model(ModelConfig(hidden=[8]), 5, 3)
    assert spec.numel == 5 * 8 + 8 + 8 * 3 + 3
    assert list(spec.names) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    _m, cnn = build_model(MODEL.validate_python({"kind": "cnn"}), 784, 10, input_shape=(1, 28, 28))
    assert cnn.numel > 0


@pytest.mark.parametrize("norm", ["batch", "BatchNorm", "bn"])
def test_batchnorm_is_refused_with_a_reason(norm):
    with pytest.raises(
        ValidationError, match=r"batch normalisation \(BatchNorm\) is not supported.*norm: group"
    ):
        MODEL.validate_python({"kind": "cnn", "norm": norm})


def test_modules_with_buffers_or_batchnorm_are_refused():
    with torch.device("meta"):
        bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        drop = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    with pytest.raises(ScenarioError, match="BatchNorm") as info:
        check_functional(bn, "custom")
    assert info.value.path == "model.kind"
    with pytest.raises(ScenarioError, match="dropout"):
        check_functional(drop, "custom")


def test_models_refuse_data_of_the_wrong_shape():
    with pytest.raises(ScenarioError, match="cnn needs image samples") as info:
        build_model(MODEL.validate_python({"kind": "cnn"}), MNIST1D)
    assert info.value.path == "model.kind"
    with pytest.raises(ScenarioError, match="cnn1d needs signals"):
        build_model(MODEL.validate_python({"kind": "cnn1d"}), CIFAR)
    with pytest.raises(ScenarioError, match="too many layers") as info:
        build_model(MODEL.validate_python({"kind": "cnn", "channels": [4, 4, 4, 4]}), DIGITS)
    assert info.value.path == "model.channels"
    with pytest.raises(ValidationError, match="multiple of heads"):
        MODEL.validate_python({"kind": "transformer", "d_model": 10, "heads": 3})
    with pytest.raises(ValidationError, match="must divide"):
        MODEL.validate_python({"kind": "cnn", "channels": [6], "norm": "group", "groups": 4})


def test_loss_for_the_task():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(
        loss_for(DIGITS)(logits, labels), nn.functional.cross_entropy(logits, labels)
    )
    out = torch.tensor([[1.0], [3.0]])
    target = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(loss_for(REGRESSION)(out, target), torch.tensor(2.5))
    torch.testing.assert_close(
        loss_for(REGRESSION)(out, target, reduction="sum"), torch.tensor(5.0)
    )


def test_linear_model_learns_the_dfl_toy_line():
    from fedsim.learning.data import DataConfig, load_federated
    from fedsim.rng import SeedStreams

    data = load_federated(
        DataConfig(dataset="synthetic_regression", partition={"kind": "iid"}),
        5,
        SeedStreams(0),
        torch.device("cpu"),
    )
    _module, _spec, loss, stacked = _setup({"kind": "linear"}, data.info)
    w = stacked[0]
    step = grad(loss)
    for _ in range(300):  # full-batch gradient descent (step below 2 / largest curvature)
        w = w - 0.7 * step(w, data.x_train, data.y_train)
    torch.testing.assert_close(w, torch.tensor([5.0, 2.0]), atol=0.02, rtol=0)
