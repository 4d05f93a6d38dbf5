"""Shared pieces of the chunked linear-family paths (linear attention, Lightning, GLA).

The chunked paths do their matmuls on head-first, chunk-major, *contiguous* tensors
``[B·H, N, C, D]``: on CPU a batched matmul over operands with a strided row layout (e.g. a view of
``[B, T, H, D]``) falls back to one small GEMM per matrix, which costs more than the copy.

- :func:`to_chunks` makes that layout in one copy (zero-padding the last chunk).
- :func:`from_chunks` returns a ``[B, T, H, D]`` *view* (no copy): callers reshape anyway.
- :func:`exclusive_scan` computes the state entering each chunk, ``y_0 = 0``,
  ``y_n = d·y_{n-1} + x_{n-1}``, with matmuls against a small triangular decay matrix over groups
  of ``GROUP`` chunks and a short loop across groups (a Python loop over every chunk costs
  ~20 µs a step; ``torch.cumsum`` over a middle dimension is ~4x slower than this on CPU).
  The loop touches only each group's last row; the rest is one broadcast add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GROUP = 16  # chunks per group of exclusive_scan
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


def exclusive_scan(x: Tensor, log_decay: Tensor | None) -> Tensor:
    """States entering each step of ``y_n = exp(log_decay)·y_{n-1} + x_n`` (so ``y_0 = 0``).

    Exponents taken are ``log_decay·j`` with ``j >= 0`` only, so a ``log_decay <= 0`` never
    overflows. Autograd-safe (no in-place writes into tensors autograd saved).

    Shapes: x ``[R, N, F]``, log_decay ``[R]`` or ``None`` (no decay) -> ``[R, N, F]``
    """
    R, N, Fd = x.shape
    Ng = -(-N // GROUP)
    G = min(GROUP, N)
    if Ng * G != N:
        x = F.pad(x, (0, 0, 0, Ng * G - N))
    xg = x.view(R, Ng, G, Fd)
    i = torch.arange(G, device=x.device)
    dist = i[:, None] - i[None, :] - 1  # [G, G]: steps from x_j to the state entering i
    if log_decay is None:
        strict = (dist >= 0).to(x.dtype)  # [G, G]
        carry_w = x.new_ones(1, G, 1)  # [1, G, 1]: no decay
        step_w = x.new_ones(1, 1)
    else:
        lam = log_decay.to(x.dtype)[:, None, None]  # [R, 1, 1]
        strict = torch.where(dist >= 0, decay_exp(lam * dist.clamp(min=0)), 0.0)  # [R, G, G]
        carry_w = decay_exp(lam[:, 0] * i)[:, :, None]  # [R, G, 1]: decay of the entering state
        step_w = decay_exp(lam[:, 0])  # [R, 1]
    # states entering each group: a short loop over each group's last row only
    last_row = strict[..., -1:, :]  # [(R,) 1, G]: weights of a group's x_j in its last state
    lasts = torch.matmul(last_row[:, None] if strict.dim() == 3 else last_row, xg)[:, :, 0]
    entering = [x.new_zeros(R, Fd)]  # lasts [R, Ng, F] excludes the entering state
    for g in range(Ng - 1):
        last = lasts[:, g] + carry_w[:, -1] * entering[-1]  # [R, F]
        entering.append(step_w * last + xg[:, g, -1])
    start = torch.stack(entering, dim=1)[:, :, None]  # [R, Ng, 1, F]
    y = torch.matmul(strict[:, None] if strict.dim() == 3 else strict, xg)  # [R, Ng, G, F]
    # in place: matmul's backward keeps its inputs, not y
    if log_decay is None:
        y.add_(start)
    else:
        y.addcmul_(carry_w[:, None], start)
    return y.view(R, Ng * G, Fd)[:, :N]


def chunk_flops(B: int, H: int, K: int, V: int, T: int, C: int) -> int:
    """FLOPs (2 per multiply-add) the chunked path performs: per token and head, ``C·K`` for
    ``q k^T`` and ``C·V`` for ``scores @ v`` over its whole (padded, half-masked) chunk, ``K·V``
    for the chunk state ``k^T v`` and ``K·V`` for reading it, ``q S``. Elementwise work (decays,
    masks, the scan's additions) is not counted."""
    N = -(-T // C) if T else 0
    return 2 * B * H * N * C * (C * K + C * V + 2 * K * V)
