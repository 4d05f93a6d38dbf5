"""The portable ``chunk`` path of gated linear attention (see :mod:`attnzoo.ops.gla`, whose
module docstring states the algorithm and its numerics): its own module so that the native
kernels' double backward (:mod:`attnzoo.ops.gla_native`) and the op itself both import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from attnzoo.ops.chunks import decay_exp, from_chunks, to_chunks

SUB = 16  # sub-chunk length inside a chunk (see _intra_scores)
SPAN_LIMIT = 30.0  # largest within-chunk log decay the one-GEMM intra form takes (e^30 ~ 1e13)


def _chunk(q: Tensor, k: Tensor, v: Tensor, gk: Tensor, scale: float, C: int) -> Tensor:
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(C, T)
    # zero keys/values and zero gates after the end change nothing before it
    qc, kc, vc, gc = (to_chunks(t, C) for t in (q, k, v, gk))  # [B·H, N, C, D] contiguous
    R, N = qc.shape[:2]
    b = gc.cumsum(dim=2)  # [B·H, N, C, K] log decay from the chunk start to each position
    total = b[:, :, -1:]  # [B·H, N, 1, K] whole-chunk log decay
    q_in = qc * (decay_exp(b) * scale)  # [B·H, N, C, K]: q_t e^{b_t} (b <= 0)
    scores = _intra_fast(qc, q_in, kc, b, total, scale)  # [B·H, N, C, C]
    o = torch.matmul(scores, vc)  # [B·H, N, C, V]
    if N == 1:
        return from_chunks(o, B, T)
    # each chunk's own contribution to the state at its end, then a scan over chunks
    k_end = kc * decay_exp(total - b)  # [B·H, N, C, K]  (total - b <= 0)
    local = torch.bmm(k_end.view(R * N, C, K).transpose(1, 2), vc.view(R * N, C, V))
    carry = decay_exp(total)[:, :, 0, :, None]  # [B·H, N, K, 1]
    local = local.view(R, N, K, V)
    state = q.new_zeros(R, K, V)
    before = []  # state entering each chunk
    for carry_n, local_n in zip(carry.unbind(1), local.unbind(1), strict=True):
        before.append(state)
        state = carry_n * state + local_n
    entering = torch.stack(before, dim=1)  # [B·H, N, K, V]
    # inter-chunk part, accumulated in place (matmul's backward keeps its inputs, not o)
    o.view(R * N, C, V).baddbmm_(q_in.view(R * N, C, K), entering.view(R * N, K, V))
    return from_chunks(o, B, T)  # [B, T, H, V] (a view)


def _intra_fast(
    q: Tensor, q_in: Tensor, k: Tensor, b: Tensor, total: Tensor, scale: float
) -> Tensor:
    """Intra-chunk scores ``(q_t e^{b_t}) . (k_s e^{-b_s})`` for ``s <= t``: one GEMM per chunk.

    ``e^{-b_s}`` grows with the chunk's total decay, so chunks whose decay span (the most negative
    channel of ``total``) exceeds ``SPAN_LIMIT`` are recomputed with the sub-chunk form
    (:func:`_intra_scores`, only non-positive exponents). Typical gates (``logsigmoid / 16``) stay
    far below the limit; very strong gates take the exact slow form chunk by chunk. Under
    ``torch.compile`` the check would be a data-dependent branch, so every chunk takes the
    sub-chunk form there.

    Shapes: q (unscaled), q_in (``scale·q·e^b``), k, b ``[R, N, C, K]``, total ``[R, N, 1, K]``
        -> ``[R, N, C(t), C(s)]``
    """
    C = k.shape[-2]
    if torch.compiler.is_compiling():
        return _intra_scores(q * scale, k, b)
    k_in = k * torch.exp((-b).clamp(max=SPAN_LIMIT))  # [R, N, C, K]
    scores = torch.matmul(q_in, k_in.transpose(-1, -2))  # [R, N, C, C]
    upper = torch.ones(C, C, dtype=torch.bool, device=k.device).triu(1)
    scores.masked_fill_(upper, 0.0)  # in place: matmul keeps its inputs for backward
    span = -total.amin(dim=-1)[..., 0]  # [R, N]
    slow = span > SPAN_LIMIT
    if bool(slow.any()):  # recompute those chunks with only non-positive exponents
        idx = slow.nonzero(as_tuple=True)
        scores = scores.index_put(idx, _intra_scores(q[idx] * scale, k[idx], b[idx]))
    return scores


def _pairwise_scores(q: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """``sum_k q_t k_s exp(b_t - b_s)`` for ``s <= t`` (else 0); exponents masked before ``exp``.

    Shapes: q, k, b ``[..., c, K]`` -> ``[..., c(t), c(s)]``
    """
    c = q.shape[-2]
    visible = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()  # [c(t), c(s)]
    diff = b[..., :, None, :] - b[..., None, :, :]  # [..., c(t), c(s), K]
    decay = torch.exp(diff.masked_fill(~visible[:, :, None], float("-inf")))
    return torch.einsum("...tk,...tsk->...ts", q, decay * k[..., None, :, :])


def _intra_scores(q: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """Masked decayed scores inside each chunk, ``exp(b_t - b_s)`` with ``b`` the within-chunk
    cumulative log gate. Sub-chunks of ``SUB`` positions: the diagonal sub-chunk blocks use the
    pairwise form; a query sub-chunk ``i`` reads keys of earlier sub-chunks through its reference
    point ``r_i`` (``b`` just before the sub-chunk) as ``(q_t e^{b_t - r_i}) . (k_s e^{r_i - b_s})``:
    a matmul, with both exponents ``<= 0`` (keys at or after ``r_i`` are masked before ``exp``).
    Memory O(C/SUB + SUB) per position and channel instead of O(C).

    Shapes: q, k, b ``[B, H, N, C, K]`` -> ``[B, H, N, C(t), C(s)]``
    """
    C = q.shape[-2]
    if C <= SUB or C % SUB:
        return _pairwise_scores(q, k, b)
    M = C // SUB
    qs, ks, bs = (rearrange(t, "... (m c) d -> ... m c d", c=SUB) for t in (q, k, b))
    diag = _pairwise_scores(qs, ks, bs)  # [B, H, N, M, SUB, SUB]
    ref = F.pad(bs[..., :-1, -1, :], (0, 0, 1, 0))  # [B, H, N, M, K]: b before each sub-chunk
    q_ref = qs * torch.exp(bs - ref[..., None, :])  # [B, H, N, M, SUB, K]
    pos = torch.arange(C, device=q.device)
    earlier = pos[None, :] < (torch.arange(M, device=q.device) * SUB)[:, None]  # [M, C]
    to_ref = (ref[..., :, None, :] - b[..., None, :, :]).masked_fill(
        ~earlier[:, :, None], float("-inf")
    )  # [B, H, N, M, C, K]
    k_ref = k[..., None, :, :] * torch.exp(to_ref)  # [B, H, N, M, C, K]
    off = q_ref @ k_ref.transpose(-1, -2)  # [B, H, N, M, SUB, C]: keys of earlier sub-chunks
    eye = torch.eye(M, dtype=q.dtype, device=q.device)
    on = torch.einsum("...mts,mn->...mtns", diag, eye)  # [B, H, N, M, SUB, M, SUB]
    scores = off + rearrange(on, "... m t n s -> ... m t (n s)")
    return rearrange(scores, "... m t s -> ... (m t) s")
