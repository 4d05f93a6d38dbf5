"""Hand-written reference pieces shared by the vision mixer tests (channels-last tensors)."""

from __future__ import annotations

import torch


def bn_by_hand(
    t: torch.Tensor, bn: torch.nn.Module, batch_stats: bool | None = None
) -> torch.Tensor:
    """BatchNorm on the last axis: running statistics, or the biased statistics of the batch
    (every other axis) when ``batch_stats`` (default: the module's train mode)."""
    if bn.training if batch_stats is None else batch_stats:
        dims = tuple(range(t.dim() - 1))
        mean, var = t.mean(dims), t.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def depthwise_by_hand(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Same-size zero-padded depthwise conv as a sum of shifted copies. v ``[B, h, w, C]``,
    weight ``[C, 1, k, k]``."""
    B, h, w, C = v.shape
    k = weight.shape[-1]
    p = k // 2
    padded = torch.zeros(B, h + 2 * p, w + 2 * p, C, dtype=v.dtype)
    padded[:, p : p + h, p : p + w] = v
    out = torch.zeros_like(v)
    for a in range(k):
        for b in range(k):
            out = out + padded[:, a : a + h, b : b + w] * weight[:, 0, a, b]
    return out
