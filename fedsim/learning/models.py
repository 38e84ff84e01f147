"""Model builders, registered by name, and seeded initialisation without global RNG state.

Modules are built on the ``meta`` device (no memory, no RNG draws) and only ever used through
``functional_call`` with a flat parameter vector (or, stacked, by :mod:`fedsim.learning.stacked`),
so one module object serves every client. A model must be a pure function of its parameters: no
buffers (BatchNorm's running statistics), no layer that couples the samples of a mini-batch, no
dropout; then one gradient pass over stacked flat parameters trains many clients at once and
padded mini-batches stay exact.

Every model takes samples of any layout with the dataset's ``input_shape`` number of elements and
reshapes them itself, so a dataset may store samples flat or shaped.

Your own model (``kind: import``, or ``fedsim.run(model=...)``, ``kind: memory``) may be any
``torch.nn.Module``: it is built on the CPU, its parameters *and buffers* become the flat vector
(:class:`~fedsim.learning.params.ParamSpec`), its own initialisation is drawn under a torch seed
from the scenario's seed, and :func:`~fedsim.learning.batched.choose_path` picks how it trains.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from fedsim.config_base import DefaultTag, Section
from fedsim.errors import ScenarioError
from fedsim.imports import describe_error, resolve_target
from fedsim.learning.data import DatasetInfo
from fedsim.learning.params import ParamSpec

# ---------------------------------------------------------------------------------------------------
# Configuration: a tagged union on ``kind`` (``mlp`` when left out)

_BATCHNORM_NAMES = {"batch", "batchnorm", "batch_norm", "bn"}
_BATCHNORM_REFUSED = (
    "batch normalisation (BatchNorm) is not supported: it keeps running statistics in buffers updated in place and "
    "couples the samples of a mini-batch, which breaks vmap training over stacked clients and "
    "padded mini-batches; use norm: group (GroupNorm) or none"
)


class MLPConfig(Section):
    """Fully connected network with ReLU activations."""

    kind: Literal["mlp"] = "mlp"
    """Model family: mlp (fully connected, ReLU)."""
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    """Widths of the hidden layers (empty list = logistic regression)."""


ModelConfig = MLPConfig
"""The name the MLP section had when it was the only model (``ModelConfig(hidden=[8])``)."""


class LogRegConfig(Section):
    """Logistic regression: one linear layer and softmax cross-entropy over the classes."""

    kind: Literal["logreg"] = "logreg"
    """Selects this variant."""


class LinearConfig(Section):
    """One linear layer: linear regression on a regression dataset (mean squared error), else
    the same as logreg."""

    kind: Literal["linear"] = "linear"
    """Selects this variant."""


class _Norm(Section):
    norm: Literal["none", "group"] = "none"
    """Normalisation after each convolution: none or group (GroupNorm); BatchNorm is refused."""
    groups: PositiveInt = 8
    """Groups of GroupNorm (must divide every channel count)."""

    @field_validator("norm", mode="before")
    @classmethod
    def _refuse_batchnorm(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in _BATCHNORM_NAMES:
            raise ValueError(_BATCHNORM_REFUSED)
        return value

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> _Norm:
        if self.norm == "group":
            bad = [c for c in getattr(self, "channels", []) if c % self.groups]
            if bad:
                raise ValueError(
                    f"groups ({self.groups}) must divide every channel count, not {bad}"
                )
        return self


class CNNConfig(_Norm):
    """Small CNN for images (1×28×28, 3×32×32, digits as 1×8×8): per entry of ``channels`` a
    'same' convolution, optional GroupNorm, 2×2 max-pooling and ReLU; then fully connected layers."""

    kind: Literal["cnn"] = "cnn"
    """Selects this variant."""
    channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32], min_length=1)
    """Output channels of the convolution layers (each halves height and width)."""
    kernel_size: PositiveInt = 5
    """Side of the square convolution kernels (odd keeps the size: padding kernel_size // 2)."""
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    """Widths of the fully connected layers after the convolutions."""


class CNN1DConfig(_Norm):
    """1-D CNN for signals such as mnist1d (length L, or channels × L): per entry of ``channels`` a
    strided convolution, optional GroupNorm and ReLU; then fully connected layers."""

    kind: Literal["cnn1d"] = "cnn1d"
    """Selects this variant."""
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 32, 32], min_length=1)
    """Output channels of the convolution layers."""
    kernel_size: PositiveInt = 5
    """Length of the convolution kernels (padding kernel_size // 2)."""
    stride: PositiveInt = 2
    """Stride of every convolution (2 halves the length at each layer)."""
    hidden: list[PositiveInt] = Field(default_factory=list)
    """Widths of the fully connected layers after the convolutions."""


class TransformerConfig(Section):
    """Tiny pre-norm transformer encoder classifier over a sequence of tokens, mean-pooled.

    Tokens are token ids (datasets with a vocabulary, embedded) or feature vectors: a sample of
    shape (L,) is L tokens of one feature, (C, L) L tokens of C features, (C, H, W) H tokens (rows)
    of C·W features. Positions are learned. No dropout (training must be a pure function).
    """

    kind: Literal["transformer"] = "transformer"
    """Selects this variant."""
    d_model: PositiveInt = 32
    """Width of the token representations (a multiple of heads)."""
    heads: PositiveInt = 2
    """Attention heads per layer."""
    layers: PositiveInt = 2
    """Encoder layers (attention + feed-forward, each residual)."""
    ff: PositiveInt = 64
    """Hidden width of each feed-forward block (GELU)."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


class ImportModelConfig(Section):
    """Your own torch.nn.Module: a class or a factory function, built with ``kwargs`` (and
    ``input_shape`` and ``n_outputs`` when its signature names them). Any module trains; buffers
    (BatchNorm's running statistics) travel with the parameters and are averaged with them."""

    kind: Literal["import"] = "import"
    """Selects this variant."""
    target: str | None = None
    """The class or factory: module.path:name (importable) or path/to/file.py:name (a relative
    file is relative to the scenario file's folder)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the class or factory."""


class MemoryModelConfig(Section):
    """The module or factory passed to ``fedsim.run(scenario, model=...)`` (fedsim.run sets it)."""

    kind: Literal["memory"] = "memory"
    """Selects this variant."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the factory passed (none for a module instance)."""


USER_MODELS = ("import", "memory")
"""Model kinds that are the user's own module."""

AnyModelConfig = (
    MLPConfig
    | LogRegConfig
    | LinearConfig
    | CNNConfig
    | CNN1DConfig
    | TransformerConfig
    | ImportModelConfig
    | MemoryModelConfig
)
Model = Annotated[AnyModelConfig, Field(discriminator="kind"), DefaultTag("kind", "mlp")]
"""The scenario's ``model`` section: one of the configs above, chosen by ``kind``."""


# ---------------------------------------------------------------------------------------------------
# Building blocks (all pure functions of their parameters)


class Reshape(nn.Module):
    """``[b, ...] -> [b, *shape]``: lets a model read flat or shaped samples alike."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (no fused kernels, no dropout)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(mixed)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class Tokens(nn.Module):
    """Samples → ``[b, L, d_model]`` token vectors plus learned positions."""

    def __init__(self, info: DatasetInfo, d_model: int) -> None:
        super().__init__()
        shape = tuple(info.input_shape)
        self.shape = shape
        if info.vocab_size is not None:
            self.embed: nn.Module = nn.Embedding(info.vocab_size, d_model)
            length = info.in_features
        else:
            if len(shape) == 1:
                length, features = shape[0], 1
            elif len(shape) == 2:
                features, length = shape
            elif len(shape) == 3:
                features, length = shape[0] * shape[2], shape[1]
            else:
                raise ScenarioError(
                    f"model transformer reads samples of shape (L,), (C, L) or (C, H, W), "
                    f"not {shape}",
                    path="model.kind",
                    value="transformer",
                )
            self.embed = nn.Linear(features, d_model)
        self.vocab = info.vocab_size is not None
        self.pos = nn.Parameter(torch.zeros(length, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.vocab:
            return self.embed(x.reshape(b, -1)) + self.pos
        shape = self.shape
        if len(shape) == 1:
            seq = x.reshape(b, shape[0], 1)
        elif len(shape) == 2:
            seq = x.reshape(b, *shape).transpose(1, 2)
        else:
            c, h, w = shape
            seq = x.reshape(b, c, h, w).permute(0, 2, 1, 3).reshape(b, h, c * w)
        return self.embed(seq) + self.pos


class MeanTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _dense(width: int, hidden: list[int], n_out: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return layers


def _flat_size(features: nn.Module, shape: tuple[int, ...], path: str, value: Any) -> int:
    try:
        out = features(torch.empty(1, *shape, device="meta"))
    except RuntimeError as exc:
        raise ScenarioError(
            f"the layers do not fit samples of shape {shape} (too many layers): "
            f"{str(exc).splitlines()[0]}",
            path=path,
            value=value,
        ) from None
    if out.numel() == 0:
        raise ScenarioError(
            f"too many layers for samples of shape {shape} (nothing is left after them)",
            path=path,
            value=value,
        )
    return out.numel()


# ---------------------------------------------------------------------------------------------------
# Builders: (config, dataset info) -> module


def _mlp(config: MLPConfig, info: DatasetInfo) -> nn.Module:
    return nn.Sequential(nn.Flatten(), *_dense(info.in_features, config.hidden, info.n_classes))


def _linear(config: LogRegConfig | LinearConfig, info: DatasetInfo) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(info.in_features, info.n_classes))


def _norm(config: _Norm, channels: int) -> list[nn.Module]:
    return [nn.GroupNorm(config.groups, channels)] if config.norm == "group" else []


def _cnn(config: CNNConfig, info: DatasetInfo) -> nn.Module:
    shape = tuple(info.input_shape)
    if len(shape) != 3:
        raise ScenarioError(
            f"model cnn needs image samples (C, H, W); dataset {info.name} has shape {shape} "
            "(use cnn1d, mlp or transformer)",
            path="model.kind",
            value="cnn",
        )
    layers: list[nn.Module] = [Reshape(shape)]
    width = shape[0]
    for c in config.channels:
        layers += [nn.Conv2d(width, c, config.kernel_size, padding=config.kernel_size // 2)]
        # Pooling before the ReLU is the same function (max commutes with a monotone map) on a
        # quarter of the elements.
        layers += [*_norm(config, c), nn.MaxPool2d(2), nn.ReLU()]
        width = c
    layers.append(nn.Flatten())
    features = nn.Sequential(*layers)
    flat = _flat_size(features, shape, "model.channels", config.channels)
    return nn.Sequential(*features, *_dense(flat, config.hidden, info.n_classes))


def _cnn1d(config: CNN1DConfig, info: DatasetInfo) -> nn.Module:
    shape = tuple(info.input_shape)
    if len(shape) == 1:
        shape = (1, shape[0])
    if len(shape) != 2:
        raise ScenarioError(
            f"model cnn1d needs signals of shape (L,) or (C, L); dataset {info.name} has "
            f"shape {tuple(info.input_shape)} (use cnn for images)",
            path="model.kind",
            value="cnn1d",
        )
    layers: list[nn.Module] = [Reshape(shape)]
    width = shape[0]
    k = config.kernel_size
    for c in config.channels:
        layers += [nn.Conv1d(width, c, k, stride=config.stride, padding=k // 2)]
        layers += [*_norm(config, c), nn.ReLU()]
        width = c
    layers.append(nn.Flatten())
    features = nn.Sequential(*layers)
    flat = _flat_size(features, shape, "model.channels", config.channels)
    return nn.Sequential(*features, *_dense(flat, config.hidden, info.n_classes))


def _transformer(config: TransformerConfig, info: DatasetInfo) -> nn.Module:
    return nn.Sequential(
        Tokens(info, config.d_model),
        *(EncoderLayer(config.d_model, config.heads, config.ff) for _ in range(config.layers)),
        nn.LayerNorm(config.d_model),
        MeanTokens(),
        nn.Linear(config.d_model, info.n_classes),
    )


MODELS: dict[str, Callable[[Any, DatasetInfo], nn.Module]] = {
    "mlp": _mlp,
    "logreg": _linear,
    "linear": _linear,
    "cnn": _cnn,
    "cnn1d": _cnn1d,
    "transformer": _transformer,
}
"""Model kind → builder ``(config, dataset info) -> module``."""


def check_functional(module: nn.Module, kind: str) -> None:
    """Refuse modules that are not pure functions of their parameters (buffers, BatchNorm, dropout)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            raise ScenarioError(
                f"{_BATCHNORM_REFUSED} (layer {name})", path="model.kind", value=kind
            )
        if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0:
            raise ScenarioError(
                f"dropout (layer {name}) is not supported: training must be a pure function of "
                "the parameters and the job's mini-batches",
                path="model.kind",
                value=kind,
            )
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise ScenarioError(
            f"the model has buffers ({', '.join(buffers)}); only parameters travel in the flat "
            "vector, so a model must not keep state of its own",
            path="model.kind",
            value=kind,
        )


# ---------------------------------------------------------------------------------------------------
# Your own module: imported (kind import) or passed to fedsim.run (kind memory)

ModelSource = nn.Module | Callable[..., nn.Module]
"""What ``fedsim.run(model=...)`` takes: a module instance, a module class or a factory."""

_IN_MEMORY: ContextVar[ModelSource | None] = ContextVar("fedsim_in_memory_model", default=None)


@contextmanager
def using_model(model: ModelSource | None) -> Iterator[ModelSource | None]:
    """Within the block, ``model: {kind: memory}`` means ``model`` (what ``fedsim.run(model=...)``
    was given: an ``nn.Module`` instance, class or factory). None: no change."""
    if model is None:
        yield None
        return
    if not (isinstance(model, nn.Module) or callable(model)):
        raise ScenarioError(
            f"fedsim.run(model=...) takes a torch.nn.Module, a module class or a factory, not "
            f"{type(model).__name__}",
            path="model",
        )
    token = _IN_MEMORY.set(model)
    try:
        yield model
    finally:
        _IN_MEMORY.reset(token)


def in_memory_model() -> ModelSource | None:
    """The model of the enclosing :func:`using_model` block, or None."""
    return _IN_MEMORY.get()


def _source(config: ImportModelConfig | MemoryModelConfig, module: ModelSource | None, base_dir):
    """``(object, key, name)``: the class, factory or instance a user model is built from, the
    scenario key it came from, and how errors name it."""
    if module is None and config.kind == "import":
        if config.target is None:  # not a schema rule: the reference builds every default
            raise ScenarioError(
                "model kind import builds your module: set model.target to module.path:name or "
                "path/to/file.py:name",
                path="model.target",
            )
        obj = resolve_target(config.target, key="model.target", base_dir=base_dir)
        return obj, "model.target", repr(config.target)
    obj = module if module is not None else in_memory_model()
    if obj is None:
        raise ScenarioError(
            "model kind memory is the module passed to fedsim.run(model=...); none was passed "
            "(a saved scenario of such a run needs it again)",
            path="model.kind",
            value="memory",
        )
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return obj, "model", f"fedsim.run(model={name})"


def _arguments(factory: Callable, kwargs: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """``kwargs`` plus ``input_shape`` and ``n_outputs`` where the signature names them."""
    args = dict(kwargs)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: kwargs only
        return args
    offered = {"input_shape": tuple(info.input_shape), "n_outputs": info.n_classes}
    for name, value in offered.items():
        if name in parameters and name not in args:
            args[name] = value
    return args


def _make(factory: Callable, args: dict[str, Any], seed: int) -> Any:
    """Call ``factory(**args)`` with torch's global RNG seeded (and restored afterwards), on the
    CPU, outside any ``meta`` device context."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        return factory(**args)


def _build_user(
    config: ImportModelConfig | MemoryModelConfig,
    info: DatasetInfo,
    module: ModelSource | None,
    base_dir: str | Path | None,
) -> tuple[nn.Module, ParamSpec]:
    obj, key, name = _source(config, module, base_dir)
    value = getattr(config, "target", "memory")

    def fail(cause: str) -> ScenarioError:
        return ScenarioError(f"{name}: {cause}", path=key, value=value)

    if isinstance(obj, nn.Module):
        if config.kwargs:
            raise fail(
                f"is a module instance ({type(obj).__name__}), so model.kwargs "
                f"({', '.join(config.kwargs)}) cannot apply; name its class or a factory"
            )
        built = copy.deepcopy(obj)  # never change the caller's module (train/eval mode)
        initial = ParamSpec.flat_state(built)

        def init(_generator: torch.Generator) -> torch.Tensor:
            return initial.clone()
    elif callable(obj):
        args = _arguments(obj, config.kwargs, info)
        try:
            built = _make(obj, args, 0)
        except Exception as exc:
            raise fail(f"building the model raised {describe_error(exc)}") from None
        if not isinstance(built, nn.Module):
            raise fail(f"returned {type(built).__name__}, not a torch.nn.Module")

        def init(generator: torch.Generator) -> torch.Tensor:
            # The module's own initialisation, drawn under a torch seed from the run's stream.
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            return ParamSpec.flat_state(_make(obj, args, seed))
    else:
        shown = repr(obj) if len(repr(obj)) <= 40 else f"{repr(obj)[:37]}..."
        raise fail(f"is {type(obj).__name__} {shown}, not a torch.nn.Module class or factory")
    if next(iter(built.parameters()), None) is None:
        raise fail("the module has no parameters, so there is nothing to train")
    for tensor in (*built.parameters(), *built.buffers()):
        if tensor.is_complex():
            raise fail("complex parameters or buffers are not supported (the vector is real)")
    _probe_output(built, info, fail)
    built.train()
    return built, ParamSpec.from_module(built, init)


def _probe_output(module: nn.Module, info: DatasetInfo, fail: Callable[[str], Exception]) -> None:
    """A forward pass on one sample (zeros, eval mode): the output must be ``[1, n_outputs]``
    (``[1]`` also for a regression model's one output)."""
    shape = tuple(info.input_shape)
    dtype = torch.long if info.vocab_size is not None else torch.float32
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.device("cpu"):
            out = module(torch.zeros((1, *shape), dtype=dtype))
    except Exception as exc:
        raise fail(
            f"a forward pass on one sample of shape {list(shape)} raised {describe_error(exc)}"
        ) from None
    finally:
        module.train(was)
    if not isinstance(out, torch.Tensor):
        raise fail(f"the forward pass returned {type(out).__name__}, not a tensor")
    n = info.n_classes
    fits = tuple(out.shape) == (1, n) or (info.task == "regression" and tuple(out.shape) == (1,))
    if not fits:
        what = f"{n} class scores" if info.task == "classification" else "1 regression output"
        raise fail(
            f"the output on one sample has shape {list(out.shape)}, expected [1, {n}] ({what} "
            f"for dataset {info.name})"
        )
    if not out.dtype.is_floating_point:
        raise fail(f"the output has dtype {out.dtype}, expected floating point scores")


def build_model(
    config: AnyModelConfig,
    in_features: int | DatasetInfo,
    n_classes: int | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    module: ModelSource | None = None,
    base_dir: str | Path | None = None,
) -> tuple[nn.Module, ParamSpec]:
    """The module and its ParamSpec.

    Pass the dataset's :class:`DatasetInfo` (``build_model(config, info)``), or, as before,
    ``in_features`` and ``n_classes`` (and ``input_shape`` for the CNNs and the transformer).
    A built-in model is on the meta device (a pure function of its parameters). Your own model
    (``kind: import`` or ``memory``; ``module`` is what ``fedsim.run(model=...)`` was given, else
    the enclosing :func:`using_model`'s) is a CPU copy, checked by a forward pass on one sample;
    its spec holds its buffers and its own initialisation (``spec.init``).
    """
    if isinstance(in_features, DatasetInfo):
        info = in_features
    else:
        if n_classes is None:
            raise TypeError("build_model needs n_classes when given in_features")
        info = DatasetInfo("custom", in_features, n_classes, tuple(input_shape or ()))
    if config.kind in USER_MODELS:
        return _build_user(config, info, module, base_dir)  # type: ignore[arg-type]
    with torch.device("meta"):
        built = MODELS[config.kind](config, info)
    check_functional(built, config.kind)
    return built, ParamSpec.from_module(built)


def init_params(spec: ParamSpec, generator: torch.Generator) -> torch.Tensor:
    """Initial flat parameters, drawn from ``generator`` (PyTorch's default Linear/Conv scheme).

    Weights and their biases are uniform on ±1/sqrt(fan_in); 1-D weights of normalisation layers are 1.
    Other parameters of two or more dimensions (embeddings, positions) are uniform on
    ±1/sqrt(size of their last dimensions). Your own model (``spec.init``) keeps its own
    initialisation: it is built again with torch's RNG seeded from ``generator``.
    """
    if spec.init is not None:
        return spec.init(generator)
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


# ---------------------------------------------------------------------------------------------------
# The loss a dataset's task calls for


def regression_loss(
    outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Mean squared error of a one-output model (outputs ``[b, 1]`` or ``[b]``, targets ``[b]``)."""
    return F.mse_loss(outputs.reshape(targets.shape), targets, reduction=reduction)


def loss_for(info: DatasetInfo) -> Callable[..., torch.Tensor]:
    """``loss(outputs, targets, reduction="mean")`` for the dataset's task.

    Cross-entropy over logits for classification, mean squared error for regression.
    """
    if info.task == "regression":
        return regression_loss
    return F.cross_entropy
