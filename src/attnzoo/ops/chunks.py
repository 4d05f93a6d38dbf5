"""Shared pieces of the chunked linear-family paths (linear attention, Lightning, GLA).

The chunked paths do their matmuls on head-first, chunk-major, *contiguous* tensors
``[B·H, N, C, D]``: on CPU a batched matmul over operands with a strided row layout (e.g. a view of
``[B, T, H, D]``) falls back to one small GEMM per matrix, which costs more than the copy.

- :func:`to_chunks` makes that layout in one copy (zero-padding the last chunk).
- :func:`from_chunks` returns a ``[B, T, H, D]`` *view* (no copy): callers reshape anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FLUSH = -60.0  # log-weights below this become exact zeros (see decay_exp)


def decay_exp(log_w: Tensor) -> Tensor:
    """``exp(log_w)`` for log-weights ``<= 0``, with weights below ``e^FLUSH`` (~1e-26) set to 0.

    Strong decays make ``exp`` land in fp32's subnormal range (below ~1e-38), and x86 CPUs run
    arithmetic on subnormals ~100x slower: a GEMM against such a decay matrix went from 2 ms to
    8 ms. A flushed weight's term is below fp32 resolution next to the weight-1 term every decayed
    sum here also has (unless the summed values span 26 orders of magnitude).
    """
    return torch.where(log_w > FLUSH, torch.exp(log_w), 0.0)


def to_chunks(x: Tensor, C: int) -> Tensor:
    """``[B, T, H, D]`` -> contiguous ``[B·H, N, C, D]``, ``N = ceil(T / C)``, zero-padded tail."""
    B, T, H, D = x.shape
    N = -(-T // C)
    xt = x.transpose(1, 2)  # [B, H, T, D] (a view)
    if N * C != T:
        xt = F.pad(xt, (0, 0, 0, N * C - T))
    return xt.contiguous().view(B * H, N, C, D)


def from_chunks(o: Tensor, B: int, T: int) -> Tensor:
    """``[B·H, N, C, D]`` -> ``[B, T, H, D]`` view, dropping the padded tail."""
    R, N, C, D = o.shape
    return o.view(B, R // B, N * C, D)[:, :, :T].transpose(1, 2)


def chunk_flops(B: int, H: int, K: int, V: int, T: int, C: int) -> int:
    """FLOPs (2 per multiply-add) the chunked path performs: per token and head, ``C·K`` for
    ``q k^T`` and ``C·V`` for ``scores @ v`` over its whole (padded, half-masked) chunk, ``K·V``
    for the chunk state ``k^T v`` and ``K·V`` for reading it, ``q S``. Elementwise work (decays,
    masks, the scan's additions) is not counted."""
    N = -(-T // C) if T else 0
    return 2 * B * H * N * C * (C * K + C * V + 2 * K * V)
