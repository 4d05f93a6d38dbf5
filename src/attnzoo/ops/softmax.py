"""Exact softmax (scaled dot-product) attention: reference, SDPA and blocked online-softmax paths.

``o_i = sum_j softmax_j(scale * q_i . k_j + mask_ij) v_j``, with ``scale = 1/sqrt(K)`` by default.
Fully masked rows give ``o_i = 0`` in every path (see :mod:`attnzoo.ops.masks`).

NaN in the inputs never raises. It propagates to the outputs, with one exception inherited from
torch's SDPA kernels: with ``impl="sdpa"`` a query whose *every* score is NaN (a NaN in ``q``)
yields a zero row, as torch treats it like a fully masked row; ``reference`` and ``blocked`` give
NaN. (Screening ``q`` for NaN would cost ~3% of the call at T = 1k; NaN in ``k``/``v`` propagates
in every path, and a NaN token in a mixer's input reaches ``k``/``v`` too.)

- ``reference`` materialises the ``[B, H, T, S]`` scores: the spec, obviously correct.
- ``sdpa`` calls :func:`torch.nn.functional.scaled_dot_product_attention` (plain causal with
  ``S == T`` uses ``is_causal``; other masks pass a dense boolean mask).
- ``blocked`` is a flash-style pure-PyTorch path: tiles of ``block_q x block_k``, an online
  softmax (running max and normaliser) in the forward pass, and a custom backward that recomputes
  each tile from the saved log-sum-exp, so peak memory is ``O(T * block)`` rather than ``O(T * S)``
  in forward and backward.

Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness", 2022,
https://arxiv.org/abs/2205.14135 (the online-softmax tiling used by ``blocked``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from attnzoo.ops.common import (
    expand_kv,
    heads_first,
    heads_last,
    prepare,
    tiles,
)
from attnzoo.ops.masks import Mask

IMPLS = ("auto", "reference", "sdpa", "blocked")
OP = "softmax_attention"


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | str | None = None,
    scale: float | None = None,
    impl: str = "auto",
    block_q: int = 128,
    block_k: int = 256,
) -> Tensor:
    """Softmax attention over ``[B, T, H, K]`` tensors.

    Args:
        q, k, v: queries, keys, values. ``k``/``v`` may have fewer heads (GQA).
        mask: an :class:`attnzoo.Mask`, ``"full"``/``"causal"``, or ``None`` (full).
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        impl: ``"auto"`` (SDPA), ``"reference"``, ``"sdpa"`` or ``"blocked"``.
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
    if impl in ("auto", "sdpa"):
        return _sdpa(q, k, v, p.mask, p.scale)
    if impl == "reference" or p.T == 0 or p.S == 0:
        return _reference(q, k, v, p.mask, p.scale)
    return _Blocked.apply(
        q, expand_kv(k, p.H), expand_kv(v, p.H), p.mask, p.scale, block_q, block_k
    )


def softmax_weights(
    q: Tensor, k: Tensor, *, mask: Mask | str | None = None, scale: float | None = None
) -> Tensor:
    """The attention weights ``softmax(scale * q k^T + mask)`` (rows without a visible key are
    zero): what ``reference`` multiplies the values by.

    Shapes:
        q ``[B, T, H, K]``, k ``[B, S, Hkv, K]`` -> ``[B, H, T, S]``
    """
    p = prepare(OP, q, k, k, mask=mask, scale=scale, impl="reference", impls=IMPLS,
                block_q=1, block_k=1)  # fmt: skip
    return _weights(q, expand_kv(k, p.H), p.mask, p.scale)


def _weights(q: Tensor, k: Tensor, m: Mask, scale: float) -> Tensor:
    T, S = q.shape[1], k.shape[1]
    s = torch.einsum("bthk,bshk->bhts", q, k) * scale  # [B, H, T, S]
    allowed = m.dense(T, S, q.device)  # [T, S]
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    # rows with no allowed key: softmax gives NaN; define their output as zero
    return torch.where(
        allowed.any(-1, keepdim=True), p, torch.zeros((), dtype=p.dtype, device=p.device)
    )


def _reference(q: Tensor, k: Tensor, v: Tensor, m: Mask, scale: float) -> Tensor:
    H = q.shape[2]
    p = _weights(q, expand_kv(k, H), m, scale)  # [B, H, T, S]
    return torch.einsum("bhts,bshv->bthv", p, expand_kv(v, H))  # [B, T, H, V]


def _sdpa(q: Tensor, k: Tensor, v: Tensor, m: Mask, scale: float) -> Tensor:
    T, S, H, Hkv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    qh, kh, vh = (rearrange(t, "b t h k -> b h t k") for t in (q, k, v))
    kwargs: dict[str, Any] = {"scale": scale, "enable_gqa": H != Hkv}
    empty_rows: Tensor | None = None
    if m.is_full:
        pass
    elif m.is_plain_causal and T == S:
        kwargs["is_causal"] = True
    else:
        allowed = m.dense(T, S, q.device)  # [T, S]
        has_key = allowed.any(-1)  # [T]
        # traced (torch.compile / torch.export): always, as a branch on values cannot be traced
        # and with no empty row both steps change nothing
        if torch.compiler.is_compiling() or not bool(has_key.all()):
            # give empty rows every key, then zero them: finite values, zero gradients
            empty_rows = ~has_key
            allowed = allowed | empty_rows[:, None]
        kwargs["attn_mask"] = allowed
    o = F.scaled_dot_product_attention(qh, kh, vh, **kwargs)  # [B, H, T, V]
    if empty_rows is not None:
        o = o.masked_fill(empty_rows[None, None, :, None], 0.0)
    return rearrange(o, "b h t v -> b t h v")


class _Blocked(torch.autograd.Function):
    """Online-softmax tiles forward; recompute-from-LSE backward (FlashAttention-2 style)."""

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, m: Mask, scale: float, bq: int, bk: int
    ) -> Tensor:
        B, T, H, _ = q.shape
        S, V = k.shape[1], v.shape[3]
        qh, kh, vh = (heads_first(t) for t in (q, k, v))
        out = q.new_zeros(B, H, T, V)
        lse = q.new_full((B, H, T), float("-inf"))
        current = -1
        acc = row_max = row_sum = None
        for tile in tiles(m, T, S, bq, bk, q.device):
            if tile.q0 != current:
                if acc is not None:
                    _finish(out, lse, acc, row_max, row_sum, current)
                current = tile.q0
                n = tile.q1 - tile.q0
                acc = q.new_zeros(B, H, n, V)
                row_max = q.new_full((B, H, n), float("-inf"))
                row_sum = q.new_zeros(B, H, n)
            s = qh[:, :, tile.q0 : tile.q1] @ kh[:, :, tile.k0 : tile.k1].transpose(-1, -2) * scale
            if tile.mask is not None:
                s = s.masked_fill(~tile.mask, float("-inf"))  # [B, H, bq, bk]
            new_max = torch.maximum(row_max, s.amax(-1))
            # rows still without any key keep max -inf: shift by 0 to avoid inf - inf
            safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
            p = torch.exp(s - safe_max[..., None])
            correction = torch.exp(row_max - safe_max)
            row_sum = row_sum * correction + p.sum(-1)
            acc = acc * correction[..., None] + p @ vh[:, :, tile.k0 : tile.k1]
            row_max = new_max
        if acc is not None:
            _finish(out, lse, acc, row_max, row_sum, current)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.cfg = (m, scale, bq, bk)
        return heads_last(out)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors  # out [B, H, T, V], lse [B, H, T]
        m, scale, bq, bk = ctx.cfg
        T, S = q.shape[1], k.shape[1]
        qh, kh, vh = (heads_first(t) for t in (q, k, v))
        do = heads_first(grad_out)
        delta = (do * out).sum(-1)  # [B, H, T]
        safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
        for tile in tiles(m, T, S, bq, bk, q.device):
            qs, ks = slice(tile.q0, tile.q1), slice(tile.k0, tile.k1)
            s = qh[:, :, qs] @ kh[:, :, ks].transpose(-1, -2) * scale
            if tile.mask is not None:
                s = s.masked_fill(~tile.mask, float("-inf"))
            p = torch.exp(s - safe_lse[:, :, qs, None])  # [B, H, bq, bk]
            dv[:, :, ks] += p.transpose(-1, -2) @ do[:, :, qs]
            dp = do[:, :, qs] @ vh[:, :, ks].transpose(-1, -2)
            ds = p * (dp - delta[:, :, qs, None]) * scale
            dq[:, :, qs] += ds @ kh[:, :, ks]
            dk[:, :, ks] += ds.transpose(-1, -2) @ qh[:, :, qs]
        return heads_last(dq), heads_last(dk), heads_last(dv), None, None, None, None


def _finish(
    out: Tensor, lse: Tensor, acc: Tensor, row_max: Tensor, row_sum: Tensor, q0: int
) -> None:
    n = acc.shape[2]
    has = row_sum > 0
    denom = torch.where(has, row_sum, torch.ones_like(row_sum))
    out[:, :, q0 : q0 + n] = acc / denom[..., None]
    lse[:, :, q0 : q0 + n] = torch.where(
        has, row_max + torch.log(denom), torch.full_like(row_max, float("-inf"))
    )
