"""BatchNorm helpers for channels-last 2-D mixers whose official code ends convolutions in
``BatchNorm2d`` (svga, area, ffnified).

In train mode a BatchNorm normalises with the statistics of the batch; in eval mode it is the
per-channel affine map ``y = (x - mu) * gamma / sqrt(var + eps) + beta`` with running statistics,
which folds into the preceding linear map or convolution (the re-parameterisation of
RepVGG-style deployment). :func:`linear_bn` and :func:`conv_bn` fold on the fly in eval mode (one
matmul or convolution instead of a matmul plus a normalisation pass; gradients still reach every
parameter) and normalise with batch statistics in train mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d


def channels_last_bn(bn: BatchNorm, t: Tensor) -> Tensor:
    """BatchNorm over every axis but the last, as ``BatchNorm2d`` on ``[B, C, h, w]``.

    Shapes: t ``[..., C]`` -> ``[..., C]``."""
    return bn(t.reshape(-1, t.shape[-1])).view(t.shape)


def bn_reference(bn: BatchNorm, t: Tensor) -> Tensor:
    """BatchNorm written out on the last axis of ``t [..., C]``: the running statistics in eval
    mode, the biased statistics of every other axis in train mode (which is what ``bn`` uses to
    normalise; the running statistics are not updated here).

    float16 and bfloat16 ``t`` are normalised in float32 and cast back, as ``nn.BatchNorm2d``
    does: in float16 the backward of ``1/sqrt(var + eps)`` (about ``eps^-1.5``, 3e7 at the
    default eps) overflowed to inf and made every gradient before it NaN."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return bn_reference(bn, t.float()).to(t.dtype)
    if bn.training:
        dims = tuple(range(t.dim() - 1))
        mean, var = t.mean(dims), t.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def fold_bn(weight: Tensor, bias: Tensor | None, bn: BatchNorm) -> tuple[Tensor, Tensor]:
    """``(w', b')`` with ``BN(conv_w(x) + b) == conv_{w'}(x) + b'`` under running statistics.

    The first axis of ``weight`` is the output channel (``nn.Linear`` and ``nn.Conv2d``)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: the BatchNorm must track running statistics")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C]
    shift = bn.bias - bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.view((-1,) + (1,) * (weight.dim() - 1)), shift


def linear_bn(x: Tensor, weight: Tensor, bias: Tensor | None, bn: BatchNorm) -> Tensor:
    """``BN(x W^T + b)`` on channels-last ``x [..., C_in] -> [..., C_out]`` (a 1x1 convolution
    and ``BatchNorm2d``); eval mode folds the normalisation into the weights."""
    if bn.training:
        return channels_last_bn(bn, F.linear(x, weight, bias))
    return F.linear(x, *fold_bn(weight, bias, bn))


def conv_bn(x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tensor:
    """``BN(conv(x))`` on ``[B, C, h, w]`` (any memory format); eval mode folds the
    normalisation into the kernel."""
    if bn.training:
        return bn(conv(x))
    w, b = fold_bn(conv.weight, conv.bias, bn)
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
