"""Gated linear attention (GLA): linear attention with a data-dependent, per-channel forget gate.

With log forget gates ``gk_t <= 0`` (one per key channel) the state ``S_t [K, V]`` of a head is

    S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t,        o_t = (scale * q_t) S_t,

so ``o_t = sum_{s<=t} (scale * q_t * exp(G_t - G_s)) . k_s  v_s`` with ``G`` the cumulative sum of
``gk`` along time. ``scale`` defaults to ``K^-0.5`` (fla's convention). ``reverse=True`` runs the
same recurrence right to left (``S_t = diag(exp(gk_t)) S_{t+1} + k_t^T v_t``): the backward half
of ViG's bidirectional form, see :func:`bidirectional_gla`.

- ``reference`` is the quadratic form. The log decay from key ``s`` to query ``t`` is built as a
  cumulative sum of the gates strictly after ``s`` (no difference of two large cumulative sums,
  so no cancellation) and masked to ``s <= t`` *before* ``exp``: every exponent is ``<= 0``.
  Memory O(B·H·T²·K): a spec for tests, not for long sequences.
- ``chunk`` splits time into chunks of ``chunk_size``. Inside a chunk, exponents are differences
  of within-chunk cumulative gates, always ``<= 0``: the pairwise masked form on sub-chunks of
  16 positions, and, between sub-chunks of one chunk, a matmul of ``q_t e^{b_t - r}`` with
  ``k_s e^{r - b_s}`` around a reference point ``r`` between them (both factors ``<= 1``).
  Across chunks a ``[K, V]`` state is carried and decayed by the chunk's total gate. Only
  non-positive numbers are exponentiated, so long sequences with strong gates stay finite.
  fp32 note: a difference of two within-chunk cumulative gates is off by about
  ``eps * |cumulative gate|``, so very strong gates and large chunks cost precision (~3e-5 at
  gates of -5 per step and ``chunk_size=128``); the step loop has no such cancellation.
  Time O(B·H·T·(C·K + K·V)), memory O(B·H·T·(16·K + C)) with ``C = chunk_size``.
- ``native`` is fused C++ forward and backward kernels with the same stabilisation
  (:mod:`attnzoo.ops.gla_native`; a double backward recomputes through ``chunk``). ``auto``
  takes it on CPU for float32/float64 when it builds here (and warns once when it does not).
- ``recurrent`` is the step loop (:func:`gla_step`), O(T) sequential steps.

Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training", 2023.
https://arxiv.org/abs/2312.06635  Code: https://github.com/fla-org/flash-linear-attention
(``fla.ops.gla``; its pure-PyTorch ``naive_recurrent_gla`` is the peer in the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from attnzoo import native
from attnzoo.ops.chunks import decay_exp, from_chunks, to_chunks
from attnzoo.ops.common import check_block, check_impl, check_qkv, resolve_scale
from attnzoo.ops.gla_native import gla_chunk

IMPLS = ("auto", "reference", "chunk", "native", "recurrent")
OP = "gated_linear_attention"
SUB = 16  # sub-chunk length inside a chunk (see _intra_scores)
SPAN_LIMIT = 30.0  # largest within-chunk log decay the one-GEMM intra form takes (e^30 ~ 1e13)


def gated_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor,
    *,
    scale: float | None = None,
    reverse: bool = False,
    impl: str = "auto",
    chunk_size: int = 64,
) -> Tensor:
    """Gated linear attention over ``[B, T, H, K]`` tensors (causal, or anti-causal if ``reverse``).

    Args:
        q, k, v: queries, keys, values (one sequence: keys and queries share ``T`` and heads).
        gk: log forget gates, same shape as ``k``; meant to be ``<= 0`` (e.g. ``logsigmoid``).
            Values are not checked (that would sync); positive gates grow the state and the
            ``chunk`` path may then overflow.
        scale: query scale; ``None`` means ``1/sqrt(K)``.
        reverse: run the recurrence from the last token to the first.
        impl: ``"auto"`` (``native`` on CPU float32/float64 when it builds, else ``chunk``),
            ``"reference"``, ``"chunk"``, ``"native"`` (fused C++ kernels) or ``"recurrent"``.
        chunk_size: chunk length of the chunk path (need not divide ``T``).

    Shapes:
        q ``[B, T, H, K]``, k ``[B, T, H, K]``, v ``[B, T, H, V]``, gk ``[B, T, H, K]``
        -> ``[B, T, H, V]``
    """
    scale_ = _check(q, k, v, gk, scale=scale, reverse=reverse, impl=impl, chunk_size=chunk_size)
    if reverse:
        q, k, v, gk = (t.flip(1) for t in (q, k, v, gk))
    o = _dispatch(q, k, v, gk, scale_, impl, chunk_size)
    return o.flip(1) if reverse else o


def bidirectional_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk_fwd: Tensor,
    gk_bwd: Tensor,
    *,
    scale: float | None = None,
    impl: str = "auto",
    chunk_size: int = 64,
) -> Tensor:
    """ViG's bidirectional GLA: ``(forward scan with gk_fwd + reverse scan with gk_bwd) / 2``.

    q, k, v are shared by both directions; each direction has its own gates ("direction-wise
    gating"). Like ViG, both scans run as one batched causal call on ``[x, flip(x)]``.

    Shapes:
        q, k, gk_fwd, gk_bwd ``[B, T, H, K]``, v ``[B, T, H, V]`` -> ``[B, T, H, V]``
    """
    scale_ = _check(q, k, v, gk_fwd, scale=scale, reverse=False, impl=impl, chunk_size=chunk_size)
    _check_gate("gk_bwd", gk_bwd, k)
    qq, kk, vv = (torch.cat([t, t.flip(1)], dim=0) for t in (q, k, v))  # [2B, T, H, *]
    gg = torch.cat([gk_fwd, gk_bwd.flip(1)], dim=0)  # [2B, T, H, K]
    o_f, o_b = _dispatch(qq, kk, vv, gg, scale_, impl, chunk_size).chunk(2, dim=0)
    return (o_f + o_b.flip(1)) / 2


def gla_step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, gk_t: Tensor, state: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """One recurrence step (no checks: the inner loop of ``recurrent`` and of mixers' ``step``).

    Shapes:
        q_t, k_t, gk_t ``[B, H, K]``, v_t ``[B, H, V]``, state ``[B, H, K, V]``
        -> o_t ``[B, H, V]``, new state ``[B, H, K, V]``
    """
    state = torch.exp(gk_t)[..., None] * state + k_t[..., :, None] * v_t[..., None, :]
    o_t = torch.einsum("bhk,bhkv->bhv", q_t * scale, state)
    return o_t, state


def gla_flops(B: int, T: int, H: int, K: int, V: int) -> int:
    """FLOPs of the recurrent form (2 per multiply-add): decay K·V, outer product 2·K·V and
    read-out 2·K·V per token and head. The chunk path does about as many plus O(T·C·K)."""
    return 5 * B * T * H * K * V


# ---- checks ---------------------------------------------------------------------------------
def _check_gate(name: str, gk: Tensor, k: Tensor) -> None:
    if not isinstance(gk, Tensor):
        raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(gk).__name__}")
    if gk.shape != k.shape:
        raise ValueError(
            f"{OP}: {name} must have the shape of k {tuple(k.shape)} (one log gate per key "
            f"channel), got {tuple(gk.shape)}"
        )
    if gk.dtype != k.dtype or gk.device != k.device:
        raise TypeError(
            f"{OP}: {name} must share k's dtype and device ({k.dtype}, {k.device}), "
            f"got {gk.dtype}, {gk.device}"
        )


def _check(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor,
    *,
    scale: float | None,
    reverse: bool,
    impl: str,
    chunk_size: int,
) -> float:
    check_impl(OP, impl, IMPLS)
    _, T, S, H, Hkv, K = check_qkv(OP, q, k, v)
    if S != T:
        raise ValueError(
            f"{OP}: k/v length S={S} must equal the q length T={T} (a recurrence over one sequence)"
        )
    if Hkv != H:
        raise ValueError(f"{OP}: k/v heads {Hkv} must equal q heads {H} (no grouped-query form)")
    _check_gate("gk", gk, k)
    if not isinstance(reverse, bool):
        raise TypeError(f"{OP}: reverse must be a bool, got {reverse!r}")
    check_block(OP, "chunk_size", chunk_size)
    return resolve_scale(OP, scale, K)


def _dispatch(
    q: Tensor, k: Tensor, v: Tensor, gk: Tensor, scale: float, impl: str, chunk_size: int
) -> Tensor:
    if q.shape[1] == 0:
        return v.new_zeros(v.shape)
    if impl == "reference":
        return _reference(q, k, v, gk, scale)
    if impl == "recurrent":
        return _recurrent(q, k, v, gk, scale)
    if impl == "native":
        native.check_inputs(OP, q)
    if impl == "native" or (impl == "auto" and native.use_for_auto(OP, q)):
        return gla_chunk(q, k, v, gk, float(scale), int(chunk_size))
    return _chunk(q, k, v, gk, scale, chunk_size)


# ---- implementations ------------------------------------------------------------------------
def gla_weights(
    q: Tensor, k: Tensor, gk: Tensor, *, scale: float | None = None, reverse: bool = False
) -> Tensor:
    """The implicit attention weights of :func:`gated_linear_attention`, materialised:
    ``(q_t * scale) . (exp(sum_{s < i <= t} gk_i) * k_s)`` for ``s <= t`` (``s >= t`` when
    ``reverse``), zero elsewhere. ``weights @ v`` is the output.

    Shapes:
        q, k, gk ``[B, T, H, K]`` -> ``[B, H, T, T]``
    """
    scale_ = _check(q, k, k, gk, scale=scale, reverse=reverse, impl="reference", chunk_size=1)
    if reverse:
        return _weights(*(t.flip(1) for t in (q, k, gk)), scale_).flip(-1, -2)
    return _weights(q, k, gk, scale_)


def _weights(q: Tensor, k: Tensor, gk: Tensor, scale: float) -> Tensor:
    T = q.shape[1]
    later = torch.ones(T, T, dtype=torch.bool, device=q.device).tril(-1)  # [T(t), T(s)]: t > s
    # log decay from s to t: sum of gk_i for s < i <= t (a cumsum over t of the gates after s)
    after_s = torch.where(later[None, :, :, None, None], gk[:, :, None], 0.0)  # [B, T, T, H, K]
    log_decay = after_s.cumsum(dim=1)  # [B, T(t), T(s), H, K]
    visible = later | torch.eye(T, dtype=torch.bool, device=q.device)  # s <= t
    decay = torch.exp(log_decay.masked_fill(~visible[None, :, :, None, None], float("-inf")))
    return torch.einsum("bthk,bshk,btshk->bhts", q * scale, k, decay)  # [B, H, T, T]


def _reference(q: Tensor, k: Tensor, v: Tensor, gk: Tensor, scale: float) -> Tensor:
    scores = _weights(q, k, gk, scale)  # [B, H, T, T]
    return torch.einsum("bhts,bshv->bthv", scores, v)  # [B, T, H, V]


def _recurrent(q: Tensor, k: Tensor, v: Tensor, gk: Tensor, scale: float) -> Tensor:
    B, _, H, K = q.shape
    state = q.new_zeros(B, H, K, v.shape[-1])  # [B, H, K, V]
    outs = []
    # unbind once: indexing x[:, t] per step would make the backward O(T^2) (a full-size
    # gradient per step)
    for q_t, k_t, v_t, g_t in zip(*(t.unbind(1) for t in (q, k, v, gk)), strict=True):
        o_t, state = gla_step(q_t, k_t, v_t, g_t, state, scale)
        outs.append(o_t)
    return torch.stack(outs, dim=1)  # [B, T, H, V]


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
