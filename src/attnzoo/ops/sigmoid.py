"""Sigmoid attention (S-SIGMOID): reference and blocked paths.

``o_i = sum_j sigmoid(scale * q_i . k_j + b) v_j`` over allowed keys, with no row normalisation.
The default bias is ``b = -log(S)`` (the paper's recommendation, ``n`` = number of keys): it keeps
the output norm at initialisation comparable to softmax attention, where ``b = 0`` lets it grow
like ``S / 2``. Masked pairs contribute nothing.

Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid Self-Attention", 2024,
https://arxiv.org/abs/2409.04431  Code: https://github.com/apple/ml-sigmoid-attention
(``attention_simulator/.../activations.py`` and the FlashSigmoid kernels; read for the math).

- ``reference`` materialises the ``[B, H, T, S]`` weights.
- ``blocked`` sums tile by tile (no online rescaling is needed without normalisation) and has a
  custom backward that recomputes each tile, so peak memory is ``O(T * block)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnzoo.ops.common import (
    expand_kv,
    heads_first,
    heads_last,
    prepare,
    tiles,
)
from attnzoo.ops.masks import Mask

IMPLS = ("auto", "reference", "blocked")
OP = "sigmoid_attention"
# auto uses the reference path while the score tensor stays below this many elements
AUTO_REFERENCE_MAX_SCORES = 1 << 24


def default_bias(S: int) -> float:
    """The paper's ``b = -log(n)`` with ``n`` the number of keys (``0`` when ``S <= 1``)."""
    return -math.log(S) if S > 1 else 0.0


def sigmoid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | str | None = None,
    scale: float | None = None,
    bias: float | None = None,
    impl: str = "auto",
    block_q: int = 128,
    block_k: int = 256,
) -> Tensor:
    """Sigmoid attention over ``[B, T, H, K]`` tensors.

    Args:
        q, k, v: queries, keys, values; ``k``/``v`` may have fewer heads (GQA).
        mask: an :class:`attnzoo.Mask`, ``"full"``/``"causal"`` or ``None`` (full).
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        bias: the additive bias ``b``; ``None`` means ``-log(S)``.
        impl: ``"auto"``, ``"reference"`` or ``"blocked"``. ``auto`` takes ``reference`` while
            ``B*H*T*S`` is at most 2**24 scores and ``blocked`` above.
        block_q, block_k: tile sizes of the blocked path.

    Shapes:
        q ``[B, T, H, K]``, k ``[B, S, Hkv, K]``, v ``[B, S, Hkv, V]`` -> ``[B, T, H, V]``
    """
    p = prepare(
        OP,
        q,
        k,
        v,
        mask=mask,
        scale=scale,
        impl=impl,
        impls=IMPLS,
        block_q=block_q,
        block_k=block_k,
    )
    b = default_bias(p.S) if bias is None else _check_bias(bias)
    if impl == "auto":
        impl = "reference" if p.B * p.H * p.T * p.S <= AUTO_REFERENCE_MAX_SCORES else "blocked"
    if impl == "reference" or p.T == 0 or p.S == 0:
        return _reference(q, k, v, p.mask, p.scale, b)
    return _Blocked.apply(
        q, expand_kv(k, p.H), expand_kv(v, p.H), p.mask, p.scale, b, block_q, block_k
    )


def _check_bias(bias: object) -> float:
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
        raise ValueError(f"{OP}: bias must be a finite float or None, got {bias!r}")
    return float(bias)


def sigmoid_weights(
    q: Tensor,
    k: Tensor,
    *,
    mask: Mask | str | None = None,
    scale: float | None = None,
    bias: float | None = None,
) -> Tensor:
    """The weights ``sigmoid(scale * q k^T + bias)`` on visible pairs, zero elsewhere: what
    ``reference`` multiplies the values by (``bias=None`` means ``-log(S)``).

    Shapes:
        q ``[B, T, H, K]``, k ``[B, S, Hkv, K]`` -> ``[B, H, T, S]``
    """
    p = prepare(OP, q, k, k, mask=mask, scale=scale, impl="reference", impls=IMPLS,
                block_q=1, block_k=1)  # fmt: skip
    b = default_bias(p.S) if bias is None else _check_bias(bias)
    return _dense_weights(q, expand_kv(k, p.H), p.mask, p.scale, b)


def _dense_weights(q: Tensor, k: Tensor, m: Mask, scale: float, bias: float) -> Tensor:
    T, S = q.shape[1], k.shape[1]
    s = torch.einsum("bthk,bshk->bhts", q, k) * scale + bias  # [B, H, T, S]
    # where, not multiply: a masked NaN score must not leak into the output (NaN * 0 = NaN)
    return torch.where(
        m.dense(T, S, q.device), torch.sigmoid(s), torch.zeros((), dtype=s.dtype, device=s.device)
    )


def _reference(q: Tensor, k: Tensor, v: Tensor, m: Mask, scale: float, bias: float) -> Tensor:
    H = q.shape[2]
    a = _dense_weights(q, expand_kv(k, H), m, scale, bias)  # [B, H, T, S]
    return torch.einsum("bhts,bshv->bthv", a, expand_kv(v, H))  # [B, T, H, V]


class _Blocked(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        m: Mask,
        scale: float,
        bias: float,
        bq: int,
        bk: int,
    ) -> Tensor:
        B, T, H, _ = q.shape
        S, V = k.shape[1], v.shape[3]
        qh, kh, vh = (heads_first(t) for t in (q, k, v))
        out = q.new_zeros(B, H, T, V)
        for tile in tiles(m, T, S, bq, bk, q.device):
            qs, ks = slice(tile.q0, tile.q1), slice(tile.k0, tile.k1)
            a = _weights(qh[:, :, qs], kh[:, :, ks], tile.mask, scale, bias)
            out[:, :, qs] += a @ vh[:, :, ks]
        ctx.save_for_backward(q, k, v)
        ctx.cfg = (m, scale, bias, bq, bk)
        return heads_last(out)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v = ctx.saved_tensors
        m, scale, bias, bq, bk = ctx.cfg
        T, S = q.shape[1], k.shape[1]
        qh, kh, vh = (heads_first(t) for t in (q, k, v))
        do = heads_first(grad_out)
        dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
        for tile in tiles(m, T, S, bq, bk, q.device):
            qs, ks = slice(tile.q0, tile.q1), slice(tile.k0, tile.k1)
            a = _weights(qh[:, :, qs], kh[:, :, ks], tile.mask, scale, bias)  # [B, H, bq, bk]
            dv[:, :, ks] += a.transpose(-1, -2) @ do[:, :, qs]
            # d sigmoid = a (1 - a); masked entries have a = 0 and so get no gradient
            ds = (do[:, :, qs] @ vh[:, :, ks].transpose(-1, -2)) * a * (1.0 - a) * scale
            dq[:, :, qs] += ds @ kh[:, :, ks]
            dk[:, :, ks] += ds.transpose(-1, -2) @ qh[:, :, qs]
        return heads_last(dq), heads_last(dk), heads_last(dv), None, None, None, None, None


def _weights(q: Tensor, k: Tensor, mask: Tensor | None, scale: float, bias: float) -> Tensor:
    """Masked sigmoid weights of one tile. Shapes: q ``[B, H, bq, K]``, k ``[B, H, bk, K]``."""
    a = torch.sigmoid(q @ k.transpose(-1, -2) * scale + bias)  # [B, H, bq, bk]
    if mask is None:
        return a
    return torch.where(mask, a, torch.zeros((), dtype=a.dtype, device=a.device))
