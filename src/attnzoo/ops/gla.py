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
  Under ``torch.export`` ``auto`` takes ``chunk`` (a portable, ONNX-convertible program with a
  static ``T``; its intra-chunk scores take the sub-chunk form, as under ``torch.compile``) and
  ``native`` exports as the custom op ``attnzoo::gla_chunk`` (a dynamic ``T`` works; no ONNX):
  see :mod:`attnzoo.native`.
- ``recurrent`` is the step loop (:func:`gla_step`), O(T) sequential steps.

Precision: ``float16`` inputs are computed in ``float32`` and the output cast back (every path;
``auto`` then takes ``chunk``): the ``chunk`` path's one-GEMM intra-chunk form scales keys by
``e^{-b}`` up to ``e^SPAN_LIMIT``, past float16's largest value (65504, ``e^11``) once a chunk's
gates sum below -11, which gave NaN. ``bfloat16`` has float32's range and runs as is; ``native``
takes neither.

Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training", 2023.
https://arxiv.org/abs/2312.06635  Code: https://github.com/fla-org/flash-linear-attention
(``fla.ops.gla``; its pure-PyTorch ``naive_recurrent_gla`` is the peer in the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

import attnzoo.native as native
from attnzoo.ops.common import check_block, check_impl, check_qkv, resolve_scale
from attnzoo.ops.gla_chunk import _chunk
from attnzoo.ops.gla_native import gla_chunk

IMPLS = ("auto", "reference", "chunk", "native", "recurrent")
OP = "gated_linear_attention"


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

    float16 inputs are computed in float32 and the output cast back (see the module docstring).

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
    if q.dtype == torch.float16:  # in float32: e^{-b} passes float16's range (module docstring)
        if impl == "native":
            native.check_inputs(OP, q)
        wide = (t.float() for t in (q, k, v, gk))
        return _dispatch(*wide, scale, "chunk" if impl == "auto" else impl, chunk_size).half()
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
