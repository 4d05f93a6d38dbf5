"""Combiner attention: full-support softmax attention factorised over segments in O(T·√T).

Ren, Dai, Dai, Yang, Leskovec, Schuurmans and Dai, "Combiner: Full Attention Transformer with
Sparse Computation Cost", NeurIPS 2021. https://arxiv.org/abs/2107.05768
Official code: google-research/google-research ``combiner/combiner/tf/approx_attention.py``
(``sqrt_fixed_full``, ``axial_rowmajor``) and ``combiner/combiner/jax/model/layer.py``.

Attention is an expectation ``o_i = E_{p(j|i)}[v_j]``. Combiner splits the keys a query sees into
its own segment ``Ω_i^0`` (attended to directly) and spans ``Ω_r`` (attended to through one
summary each), and factorises ``p(j|i) = p(Ω_r|i) · p(j|Ω_r)`` for ``j`` in a span. One softmax
over ``[own-segment keys, span summaries]`` gives ``p(j|i)`` for the direct keys and
``p(Ω_r|i)``; ``p(j|Ω_r)`` is a softmax inside the span. Every allowed pair gets a non-zero
weight and each row sums to 1 (full attention), at ``O(T·(s + T/s)·K)`` cost.

Segments have length ``s`` (``segment``; ``None`` means ``ceil(sqrt(T))`` at each call), token
``j`` is in segment ``j // s``; when ``s`` does not divide ``T`` the last segment is shorter and
every pooled summary over it uses its real tokens only. ``scale`` (``1/sqrt(K)`` by default)
multiplies every logit. Spans are the strictly earlier segments when ``causal``, all the other
segments otherwise. Local logits are ``q_i·k_j`` over the query's own segment (``j <= i`` when
causal).

Variants (the pooling lives here, in the op: both are parameter-free):

- ``fixed`` (Combiner-Fixed, ``sqrt_fixed_full``): span ``r``'s logit is ``q_i·k̄_r`` and its
  value ``v̄_r = sum_{j∈r} softmax_j(q̄_r·k_j) v_j``, with ``q̄_r``, ``k̄_r`` pooled over the span
  (``pool="max"``, the default of both official configs, ``local_summary='identity-max'`` and
  ``jnp.max``; ``"mean"`` is the code's ``identity-mean``). ``q̄_r`` pools the scaled queries,
  as the code does (its ``get_qkv`` scales ``q`` first; the same for any ``scale > 0``).
- ``axial`` (Combiner-Axial, ``axial_rowmajor``): the segments are the rows of an ``s``-wide
  grid; the span of row ``r`` is reached through the token in the query's column,
  ``m = (r, col(i))``: logit ``q_i·k̄_m`` and value ``v̄_m = sum_{j∈row r} softmax_j(q_m·k_j)
  v_j`` (the output of non-causal attention inside row ``r`` at ``m``, shared by every query of
  that column). ``k̄_m`` is ``k_m`` (``row_summary="none"``) or ``sum_j softmax_j(q_m·k_j) k_j``
  (``"wsum"``). Only a non-causal query can face a shorter row lacking its column: it uses that
  row's last token (``col = min(col(i), len_r - 1)``, our choice; the code requires ``s | T``).

Implementations: ``reference`` materialises ``P [B, H, T, T]`` with ``P[i, j] = p(j|i)`` (the
local probability, or ``p(Ω_r|i)·p(j|Ω_r)``) and returns ``P @ v``; ``segments`` works on the
``[n, s]`` segment grid (padded to ``n·s``) without any ``T x T`` tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_impl, check_qkv, expand_kv, resolve_scale

IMPLS = ("auto", "reference", "segments")
VARIANTS = ("fixed", "axial")
POOLS = ("max", "mean")
ROW_SUMMARIES = ("none", "wsum")
OP = "combiner_attention"


def segment_length(T: int, segment: int | None) -> int:
    """The segment length used for ``T`` tokens: ``segment``, or ``ceil(sqrt(T))`` (>= 1)."""
    if segment is None:
        return max(1, math.isqrt(T - 1) + 1) if T > 0 else 1
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
        raise ValueError(f"{OP}: segment must be an int >= 1 or None, got {segment!r}")
    return segment


def _check(
    q: Tensor, k: Tensor, v: Tensor | None, variant: str, pool: str, row_summary: str, causal: bool
) -> int:
    B, T, S, H, _, _ = check_qkv(OP, q, k, k if v is None else v)
    if S != T:
        raise ValueError(f"{OP}: self-attention only: k has S={S} tokens, q has T={T}")
    for name, value, choices in (
        ("variant", variant, VARIANTS),
        ("pool", pool, POOLS),
        ("row_summary", row_summary, ROW_SUMMARIES),
    ):
        if value not in choices:
            raise ValueError(f"{OP}: {name} must be one of {choices}, got {value!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got {causal!r}")
    return H


def combiner_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    variant: str = "fixed",
    segment: int | None = None,
    pool: str = "max",
    row_summary: str = "none",
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Combiner attention over ``[B, T, H, K]`` tensors (self-attention: ``k``, ``v`` have ``T``
    tokens; they may have fewer heads, GQA).

    Args:
        causal: spans are the strictly earlier segments and local keys ``j <= i``.
        variant: ``"fixed"`` or ``"axial"`` (module docstring).
        segment: segment (row) length; ``None`` means ``ceil(sqrt(T))``.
        pool: ``"max"`` or ``"mean"``: the pooled ``q̄_r``, ``k̄_r`` of ``fixed``.
        row_summary: ``"none"`` or ``"wsum"``: the span key of ``axial``.
        scale: logit scale; ``None`` means ``1/sqrt(K)``.
        impl: ``"auto"`` (``segments``), ``"reference"`` or ``"segments"``.

    Shapes:
        q ``[B, T, H, K]``, k ``[B, T, Hkv, K]``, v ``[B, T, Hkv, V]`` -> ``[B, T, H, V]``
    """
    check_impl(OP, impl, IMPLS)
    H = _check(q, k, v, variant, pool, row_summary, causal)
    B, T, _, K = q.shape
    s = segment_length(T, segment)
    sc = resolve_scale(OP, scale, K)
    if T == 0:
        return v.new_zeros(B, 0, H, v.shape[-1])
    k, v = expand_kv(k, H), expand_kv(v, H)
    if impl == "reference":
        p = _weights(q * sc, k, s, causal, variant, pool, row_summary)  # [B, H, T, T]
        return torch.einsum("bhts,bshv->bthv", p, v)
    return _segments(q * sc, k, v, s, causal, variant, pool, row_summary)


def combiner_weights(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool,
    variant: str = "fixed",
    segment: int | None = None,
    pool: str = "max",
    row_summary: str = "none",
    scale: float | None = None,
) -> Tensor:
    """The factorised probabilities ``P[i, j] = p(j|i)`` that ``reference`` multiplies the values
    by (zero exactly where causality forbids the pair).

    Shapes:
        q ``[B, T, H, K]``, k ``[B, T, Hkv, K]`` -> ``[B, H, T, T]``
    """
    H = _check(q, k, None, variant, pool, row_summary, causal)
    T, K = q.shape[1], q.shape[3]
    s = segment_length(T, segment)
    sc = resolve_scale(OP, scale, K)
    return _weights(q * sc, expand_kv(k, H), s, causal, variant, pool, row_summary)


def combiner_flops(
    B: int, H: int, K: int, V: int, T: int, segment: int | None, variant: str, row_summary: str
) -> int:
    """FLOPs (2 per multiply-add) of the ``segments`` path on ``n·s`` padded tokens: local logits
    and values over full ``s x s`` blocks (causal blocks too), span logits and values over all
    ``n`` spans, plus the span summaries (``fixed``: ``q̄_r·k_j`` and ``v̄_r`` per token;
    ``axial``: the row attention's values, and its keys for ``wsum``, as the row logits are the
    local ones). Pooling, masks and softmax are not counted."""
    if T == 0:
        return 0
    s = segment_length(T, segment)
    n = -(-T // s)
    Tp = n * s
    macs = Tp * s * (K + V) + Tp * n * (K + V)  # local block, span logits and mixing
    if variant == "fixed":
        macs += Tp * (K + V)  # v̄_r: n spans of s tokens each
    else:
        macs += Tp * s * V + (Tp * s * K if row_summary == "wsum" else 0)
    return 2 * B * H * macs


# ---- reference: the T x T matrix ------------------------------------------------------------
def _weights(
    q: Tensor, k: Tensor, s: int, causal: bool, variant: str, pool: str, row_summary: str
) -> Tensor:
    """``P [B, H, T, T]`` from scaled ``q`` and ``k`` ``[B, T, H, K]``."""
    T, dev = q.shape[1], q.device
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, K]
    n = -(-T // s)
    i = torch.arange(T, device=dev)
    seg = i // s  # [T] segment (row) of each token
    r = torch.arange(n, device=dev)
    member = seg[None, :] == r[:, None]  # [n, T]: token j lies in segment r
    span_ok = r[None, :] < seg[:, None] if causal else r[None, :] != seg[:, None]  # [T, n]
    same = seg[:, None] == seg[None, :]  # [T, T]: key j in query i's segment
    local_ok = same & (i[None, :] <= i[:, None]) if causal else same
    inf = torch.tensor(float("-inf"), dtype=q.dtype, device=dev)
    scores = qh @ kh.transpose(-1, -2)  # [B, H, T, T] q_i . k_j
    if variant == "fixed":
        if pool == "max":
            qbar = torch.where(member[:, :, None], qh[:, :, None], inf).amax(-2)  # [B, H, n, K]
            kbar = torch.where(member[:, :, None], kh[:, :, None], inf).amax(-2)
        else:
            frac = member.to(q.dtype) / member.sum(-1, keepdim=True)  # [n, T] 1/|r| on r
            qbar, kbar = frac @ qh, frac @ kh
        span_logits = qh @ kbar.transpose(-1, -2)  # [B, H, T, n] q_i . k̄_r
        cond = torch.softmax(torch.where(member, qbar @ kh.transpose(-1, -2), inf), -1)
        # p(j|Ω_r) for r the segment of j: [B, H, 1, T], the same for every query
        in_span = cond[:, :, seg, i][:, :, None]
    else:
        row_p = torch.softmax(torch.where(same, scores, inf), -1)  # [B, H, T, T] row attention
        lens = (T - r * s).clamp(max=s)  # [n] real length of each row
        pos = r[None, :] * s + torch.minimum(i[:, None] % s, lens[None, :] - 1)  # [T, n]
        ksum = kh if row_summary == "none" else row_p @ kh  # [B, H, T, K]
        span_logits = torch.einsum("bhik,bhirk->bhir", qh, ksum[:, :, pos])  # q_i . k̄_(r,col i)
        # p(j|Ω_r) for r the row of j, through the token pos[i, r] of query i's column
        in_span = row_p[:, :, pos[:, seg], i[None, :]]  # [B, H, T, T]
    joint = torch.cat(
        [torch.where(local_ok, scores, inf), torch.where(span_ok, span_logits, inf)], -1
    )
    p = torch.softmax(joint, -1)  # [B, H, T, T + n]
    p_local, p_span = p[..., :T], p[..., T:]  # p(j|i) on the own segment, p(Ω_r|i)
    # P[i, j] = p(j|i) directly, or p(Ω_r|i)·p(j|Ω_r) with r the segment of j (p_span is 0 on
    # the query's own segment, p_local 0 off it)
    return p_local + p_span[..., seg] * in_span


# ---- segments: the O(T·√T) path ---------------------------------------------------------------
def _segments(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: int,
    causal: bool,
    variant: str,
    pool: str,
    row_summary: str,
) -> Tensor:
    """Scaled ``q``, ``k``, ``v`` ``[B, T, H, K]`` on the ``[n, s]`` grid, padded to ``n·s``
    tokens (padded keys are masked out everywhere; padded queries are dropped)."""
    B, T, H, _ = q.shape
    n, dev = -(-T // s), q.device
    pad = n * s - T
    qh, kh, vh = (
        F.pad(t, (0, 0, 0, 0, 0, pad)).unflatten(1, (n, s)).permute(0, 3, 1, 2, 4)
        for t in (q, k, v)
    )  # [B, H, n, s, K]
    valid = (torch.arange(n * s, device=dev) < T).view(n, s)  # [n, s] real tokens
    r = torch.arange(n, device=dev)
    span_ok = r[None, :] < r[:, None] if causal else r[None, :] != r[:, None]  # [n(query), n]
    local_ok = valid[:, None, :].expand(n, s, s)  # [n, s(query), s(key)]
    if causal:
        local_ok = local_ok & torch.ones(s, s, dtype=torch.bool, device=dev).tril()
    inf = torch.tensor(float("-inf"), dtype=q.dtype, device=dev)
    scores = qh @ kh.transpose(-1, -2)  # [B, H, n, s, s] q_i . k_j inside each segment
    if variant == "fixed":
        if pool == "max":
            qbar = torch.where(valid[..., None], qh, inf).amax(-2)  # [B, H, n, K]
            kbar = torch.where(valid[..., None], kh, inf).amax(-2)
        else:
            count = valid.sum(-1, keepdim=True).to(q.dtype)  # [n, 1]; padded rows are zero
            qbar, kbar = qh.sum(-2) / count, kh.sum(-2) / count
        w = torch.einsum("bhnk,bhnsk->bhns", qbar, kh)  # [B, H, n, s] q̄_r . k_j
        w = torch.softmax(torch.where(valid, w, inf), -1)
        vbar = torch.einsum("bhns,bhnsk->bhnk", w, vh)  # [B, H, n, V] span values
        span = (qh.flatten(2, 3) @ kbar.transpose(-1, -2)).unflatten(2, (n, s))  # [B,H,n,s,n]
    else:
        row_p = torch.softmax(torch.where(valid[:, None, :], scores, inf), -1)  # [B,H,n,s,s]
        vbar = row_p @ vh  # [B, H, n, s, V] row attention output at each (row, column)
        kbar = kh if row_summary == "none" else row_p @ kh
        if pad:  # a non-causal query's column may be missing in the short last row
            lens = (T - r * s).clamp(max=s)  # [n]
            col = torch.minimum(torch.arange(s, device=dev)[None, :], lens[:, None] - 1)
            kbar, vbar = kbar[:, :, r[:, None], col], vbar[:, :, r[:, None], col]
        # by column: [B, H, s, n(query row), n(span row)]
        span = (qh.transpose(2, 3) @ kbar.permute(0, 1, 3, 4, 2)).transpose(2, 3)
    joint = torch.cat(
        [torch.where(local_ok, scores, inf), torch.where(span_ok[:, None, :], span, inf)], -1
    )
    p = torch.softmax(joint, -1)  # [B, H, n, s, s + n]
    p_local, p_span = p[..., :s], p[..., s:]
    o = p_local @ vh  # [B, H, n, s, V]
    if variant == "fixed":
        o = o + (p_span.flatten(2, 3) @ vbar).unflatten(2, (n, s))
    else:
        o = o + (p_span.transpose(2, 3) @ vbar.transpose(2, 3)).transpose(2, 3)
    return o.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :T]  # [B, T, H, V]
