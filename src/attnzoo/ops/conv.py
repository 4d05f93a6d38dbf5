"""Depthwise convolution on channels-last grids: ``reference`` (shift-and-add) and ``conv``.

``y[p, c] = b[c] + sum_o w[c, o] x[p + dilation * (o - k // 2), c]`` over the kernel offsets
``o``, with zeros outside the grid (same-size output; every kernel side odd). Used by the vision
blocks whose official code runs ``nn.Conv2d(C, C, k, padding=k // 2, groups=C)`` on
channels-first maps; here the blocks stay channels-last.

- ``reference``: one shifted copy of the zero-padded input per kernel offset, weighted and
  summed: the definition, obviously correct (``prod(k)`` passes over the grid).
- ``conv``: ``F.conv{1,2,3}d`` with ``groups=C`` on a channels-first view.
"""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from torch import Tensor

IMPLS = ("auto", "reference", "conv")
OP = "depthwise_conv"


def depthwise_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, dilation: int = 1, impl: str = "auto"
) -> Tensor:
    """Same-size zero-padded depthwise convolution.

    Shapes:
        x ``[B, *S, C]``, weight ``[C, 1, *k]`` (``torch.nn.ConvNd``'s layout), bias ``[C]`` ->
        ``[B, *S, C]``
    """
    if impl not in IMPLS:
        raise ValueError(f"{OP}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    d = x.dim() - 2
    C, kernel = x.shape[-1], tuple(weight.shape[2:])
    if weight.shape[:2] != (C, 1) or len(kernel) != d or any(k % 2 == 0 for k in kernel):
        raise ValueError(
            f"{OP}: weight must be [C={C}, 1, *k] with {d} odd kernel sides, got {tuple(weight.shape)}"
        )
    if impl == "reference":
        return _reference(x, weight, bias, dilation)
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    pad = tuple(dilation * (k // 2) for k in kernel)
    y = conv(x.movedim(-1, 1), weight, bias, padding=pad, dilation=dilation, groups=C)
    return y.movedim(1, -1)


def _reference(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
    kernel = weight.shape[2:]
    half = [dilation * (k // 2) for k in kernel]
    pad: list[int] = [0, 0]  # F.pad: last axis first (channels), then the grid axes reversed
    for h in reversed(half):
        pad += [h, h]
    xp = F.pad(x, pad)
    sizes = x.shape[1:-1]
    out = x.new_zeros(x.shape) if bias is None else bias.expand(x.shape).clone()
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(o * dilation, o * dilation + s) for o, s in zip(offset, sizes, strict=True)
        )
        out = out + xp[(slice(None), *window)] * weight[(slice(None), 0, *offset)]
    return out
