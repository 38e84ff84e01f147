"""Stacked execution: ``n`` clients' copies of one model in a single forward and backward pass.

``vmap(grad(loss))`` trains many clients at once for any model, but on a CPU it pays for it twice:
per-call overhead for every batched operator, and layouts that the vmap batching rules pick for
convolutions and pooling (``[b, n·C, H, W]`` in the contiguous format, where max-pooling over small
feature maps is 10–16× slower than in channels-last). For the layer types our builders use, this
module runs the same function directly on stacked parameters ``W [n, d]``:

- convolutions as one *grouped* convolution (``groups = n``), activations ``[b, n·C, …]``, 2-D
  feature maps in channels-last;
- linear layers as one batched matrix product (``baddbmm``), activations ``[n, b, F]``;
- GroupNorm as one GroupNorm over ``n·G`` groups, LayerNorm with per-client scale and shift,
  element-wise layers as they are;
- the transformer's token embedding (a per-client table lookup or linear map), encoder layers
  (attention batched over clients, samples and heads) and mean over tokens.

Client ``i``'s outputs depend only on ``W[i]`` and its own samples, so the gradient of the *sum* of
the clients' losses with respect to ``W`` is, row by row, each client's own gradient: plain
autograd gives all ``n`` gradients, with no vmap. Every model fedsim builds stacks; a module with
another layer makes :func:`stack_model` return ``None``, and the batched trainer uses vmap for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fedsim.learning.models import EncoderLayer, MeanTokens, Reshape, SelfAttention, Tokens
from fedsim.learning.params import ParamSpec

ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity)
"""Parameter-free layers that act on each element alone: the layer itself runs on any layout."""


Apply = Callable[[nn.Module, "Activations", dict[str, torch.Tensor]], None]
"""How a layer acts on stacked activations, given its own parameters by local name (``weight``)."""


class Activations:
    """One stack's activations in one of two layouts, converted only when a layer needs the other.

    ``rows``: ``[n, b, *features]`` (client first; for linear layers and the loss).
    ``grouped``: ``[b, n·C, *spatial]`` (clients' channels side by side; for convolutions, pooling
    and GroupNorm, which then see one wide sample batch).
    """

    __slots__ = ("grouped", "n", "tensor")

    def __init__(self, tensor: torch.Tensor, n: int, grouped: bool = False) -> None:
        self.tensor, self.n, self.grouped = tensor, n, grouped

    def as_rows(self) -> torch.Tensor:
        if self.grouped:
            h = self.tensor
            b, spatial = h.shape[0], h.shape[2:]
            h = h.reshape(b, self.n, -1, *spatial).transpose(0, 1)
            self.tensor, self.grouped = h, False
        return self.tensor

    def as_grouped(self) -> torch.Tensor:
        if not self.grouped:
            h = self.tensor  # [n, b, C, *spatial]
            n, b, c, spatial = h.shape[0], h.shape[1], h.shape[2], h.shape[3:]
            h = h.transpose(0, 1).reshape(b, n * c, *spatial)
            if h.dim() == 4:
                h = h.contiguous(memory_format=torch.channels_last)
            self.tensor, self.grouped = h, True
        return self.tensor


def _elementwise(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    h.tensor = layer(h.tensor)


def _reshape(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    rows = h.as_rows()
    h.tensor = rows.reshape(rows.shape[0], rows.shape[1], *layer.shape)


def _flatten(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    rows = h.as_rows()
    h.tensor = rows.reshape(rows.shape[0], rows.shape[1], -1)


def linear_rows(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Client i's linear layer on its rows: ``rows [n, ..., F]``, ``weight [n, out, F]``."""
    n, lead = rows.shape[0], rows.shape[1:-1]
    flat = rows.reshape(n, -1, rows.shape[-1])
    weight_t = weight.transpose(1, 2)  # [n, F, out]
    if bias is not None:
        out = torch.baddbmm(bias.unsqueeze(1), flat, weight_t)
    else:
        out = torch.bmm(flat, weight_t)
    return out.reshape(n, *lead, out.shape[-1])


def _per_client(param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``param [n, *s]`` viewed to broadcast over ``like [n, ..., *s]``."""
    extra = like.dim() - param.dim()
    return param.reshape(param.shape[0], *([1] * extra), *param.shape[1:])


def layer_norm_rows(
    rows: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Client i's LayerNorm over the last dimension of its rows."""
    out = F.layer_norm(rows, rows.shape[-1:], None, None, eps)
    if weight is not None:
        out = out * _per_client(weight, out)
    if bias is not None:
        out = out + _per_client(bias, out)
    return out


def _linear(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    h.tensor = linear_rows(h.as_rows(), p["weight"], p.get("bias"))


def _layer_norm(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    h.tensor = layer_norm_rows(h.as_rows(), p.get("weight"), p.get("bias"), layer.eps)


def _tokens(layer: Tokens, h: Activations, p: dict[str, torch.Tensor]) -> None:
    """Token vectors ``[n, b, L, d_model]`` plus each client's learned positions."""
    x = h.as_rows()
    n, b = x.shape[0], x.shape[1]
    if layer.vocab:
        table = p["embed.weight"]  # [n, V, d]
        vocab = table.shape[1]
        ids = x.reshape(n, b, -1) + vocab * torch.arange(n, device=x.device).view(n, 1, 1)
        seq = table.reshape(n * vocab, -1)[ids]
    else:
        shape = layer.shape
        if len(shape) == 1:
            seq = x.reshape(n, b, shape[0], 1)
        elif len(shape) == 2:
            seq = x.reshape(n, b, *shape).transpose(2, 3)
        else:
            c, height, width = shape
            seq = x.reshape(n, b, c, height, width).permute(0, 1, 3, 2, 4)
            seq = seq.reshape(n, b, height, c * width)
        seq = linear_rows(seq, p["embed.weight"], p.get("embed.bias"))
    h.tensor = seq + _per_client(p["pos"], seq)


def _encoder_layer(layer: EncoderLayer, h: Activations, p: dict[str, torch.Tensor]) -> None:
    """Pre-norm self-attention and feed-forward blocks, each residual (as ``EncoderLayer``)."""
    x = h.as_rows()  # [n, b, L, d]
    n, b, length, width = x.shape
    heads = layer.attn.heads
    y = layer_norm_rows(x, p["norm1.weight"], p["norm1.bias"], layer.norm1.eps)
    qkv = linear_rows(y, p["attn.qkv.weight"], p["attn.qkv.bias"])
    qkv = qkv.reshape(n, b, length, 3, heads, width // heads).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [n, b, heads, L, d_head]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(width // heads)
    mixed = (scores.softmax(dim=-1) @ v).transpose(2, 3).reshape(n, b, length, width)
    x = x + linear_rows(mixed, p["attn.out.weight"], p["attn.out.bias"])
    y = layer_norm_rows(x, p["norm2.weight"], p["norm2.bias"], layer.norm2.eps)
    y = F.gelu(linear_rows(y, p["ff.0.weight"], p["ff.0.bias"]))
    h.tensor = x + linear_rows(y, p["ff.2.weight"], p["ff.2.bias"])


def _mean_tokens(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    h.tensor = h.as_rows().mean(dim=2)  # [n, b, L, d] -> [n, b, d]


def _conv(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    x = h.as_grouped()
    weight = p["weight"]  # [n, out, in, *k]
    bias = p["bias"].reshape(-1) if "bias" in p else None
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
    h.tensor = conv(
        x,
        weight.reshape(-1, *weight.shape[2:]),
        bias,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=h.n,
    )


def _max_pool(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    x = h.as_grouped()
    h.tensor = F.max_pool2d(
        x, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode
    )


def _group_norm(layer: nn.Module, h: Activations, p: dict[str, torch.Tensor]) -> None:
    x = h.as_grouped()
    weight = p["weight"].reshape(-1) if "weight" in p else None
    bias = p["bias"].reshape(-1) if "bias" in p else None
    h.tensor = F.group_norm(x, layer.num_groups * h.n, weight, bias, layer.eps)


def _supported(layer: nn.Module) -> Apply | None:
    if type(layer) in ELEMENTWISE and not getattr(layer, "inplace", False):
        return _elementwise
    if isinstance(layer, Reshape):
        return _reshape
    if type(layer) is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1:
        return _flatten
    if type(layer) is nn.Linear:
        return _linear
    if type(layer) in (nn.Conv2d, nn.Conv1d):
        if (
            layer.groups == 1
            and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)
        ):
            return _conv
        return None
    if type(layer) is nn.MaxPool2d and not layer.return_indices:
        return _max_pool
    if type(layer) is nn.GroupNorm:
        return _group_norm
    if type(layer) is nn.LayerNorm and len(layer.normalized_shape) == 1:
        return _layer_norm
    if type(layer) is Tokens:
        return _tokens
    if type(layer) is EncoderLayer and _is_standard_encoder(layer):
        return _encoder_layer
    if type(layer) is MeanTokens:
        return _mean_tokens
    return None


def _is_standard_encoder(layer: EncoderLayer) -> bool:
    """The layout :func:`_encoder_layer` assumes (what ``models._transformer`` builds)."""
    ff = layer.ff
    return (
        isinstance(ff, nn.Sequential)
        and len(ff) == 3
        and type(ff[1]) is nn.GELU
        and ff[1].approximate == "none"
        and type(layer.attn) is SelfAttention
    )


class StackedModel:
    """A sequential model run for ``n`` clients at once on stacked parameters ``W [n, d]``."""

    def __init__(self, module: nn.Sequential, appliers: list[Apply], spec: ParamSpec) -> None:
        self.spec = spec
        self._sizes = [math.prod(s) for s in spec.shapes]
        self.steps: list[tuple[nn.Module, Apply, list[tuple[str, str]]]] = []
        for (name, layer), apply in zip(module.named_children(), appliers, strict=True):
            own = [(local, f"{name}.{local}") for local, _ in layer.named_parameters()]
            self.steps.append((layer, apply, own))

    def views(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named ``[n, *shape]`` views of the rows of ``stacked`` (differentiable)."""
        n = stacked.shape[0]
        parts = stacked.split(self._sizes, dim=1)
        return {
            name: part.reshape(n, *shape)
            for name, shape, part in zip(self.spec.names, self.spec.shapes, parts, strict=True)
        }

    def __call__(self, stacked: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``[n, b, *out]`` of client ``i``'s model on its samples ``x[i]``."""
        params = self.views(stacked)
        h = Activations(x, stacked.shape[0])
        for layer, apply, own in self.steps:
            apply(layer, h, {local: params[full] for local, full in own})
        return h.as_rows()


def stack_model(module: nn.Module, spec: ParamSpec) -> StackedModel | None:
    """The stacked version of ``module``, or ``None`` when it has a layer this module cannot stack
    (then the batched trainer uses vmap)."""
    if not isinstance(module, nn.Sequential):
        return None
    appliers = [_supported(layer) for layer in module.children()]
    if any(apply is None for apply in appliers):
        return None
    return StackedModel(module, appliers, spec)


def stacked_grads(
    model: StackedModel,
    loss_fn: Callable[..., torch.Tensor],
    stacked: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each client's gradient ``[n, d]`` of its mean loss on its mini-batch ``x[i], y[i]``.

    ``weight [n, b]``: per-sample weights (``1/b_i`` on a padded mini-batch's real samples, 0 on the
    padding); ``None``: a plain mean over the ``b`` samples.
    """
    n, b = y.shape[0], y.shape[1]
    w = stacked.detach().requires_grad_()
    with torch.enable_grad():
        out = model(w, x)
        losses = loss_fn(out.reshape(n * b, *out.shape[2:]), y.reshape(n * b), reduction="none")
        total = losses.sum() / b if weight is None else (losses.reshape(n, b) * weight).sum()
        (g,) = torch.autograd.grad(total, w)
    return g
