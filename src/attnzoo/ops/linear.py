"""Linear attention (optionally with a per-head scalar decay): reference, chunked and recurrent paths.

Causal, with ``lambda_h = exp(decay_h)`` (``lambda = 1`` when ``decay`` is ``None``)::

    o_t = scale * sum_{s <= t} lambda_h^(t - s) (q_t . k_s) v_s

Non-causal (``decay`` must be ``None``; ``k``/``v`` may have ``S != T`` keys, i.e. cross)::

    o_t = scale * sum_s (q_t . k_s) v_s

``normalize=True`` divides by the same weighted sum of scores,
``z_t = scale * sum_s lambda^(t-s) (q_t . k_s)``: ``o_t <- o_t / (z_t + eps)`` (Katharopoulos et
al.'s normaliser; ``eps = 1e-6`` as in fast-transformers). It assumes non-negative feature maps
(``elu+1``, ``relu``) so that ``z_t >= 0``; with signed ``q``/``k`` the denominator can cross zero.
Feature maps are applied by the caller, see :func:`feature_map`.

The default ``scale`` is ``1`` (not ``1/sqrt(K)``): Lightning attention has no score scale and
with ``normalize=True`` the scale cancels (up to ``eps``).

- ``reference`` materialises the ``[B, H, T, S]`` decayed score matrix: the spec.
- ``chunk`` (Lightning attention's tiling): chunks of ``chunk_size`` tokens; inside a chunk the
  quadratic form with the mask ``lambda^(i-j)``, across chunks a ``[B, H, K, V]`` state decayed by
  ``lambda^chunk_size``. Only ``exp`` of non-positive log-decays is ever taken. ``T`` need not be
  a multiple of ``chunk_size`` (the last chunk is zero-padded). Time and memory ``O(T·C·(K+V))``.
  The work runs in super-blocks of ``SUPER`` chunks (1024 tokens at ``C = 64``): inside one,
  every chunk's entering state comes from one matmul against a small triangular decay matrix;
  across them, one ``[B, H, K·V]`` state is carried by a short Python loop. Doing everything
  super-block by super-block keeps the intermediates (scores, per-chunk states) cache-sized:
  the whole-sequence version ran every elementwise pass over tensors of ``T·C`` or ``T/C·K·V``
  floats from main memory and was ~1.3x slower at T = 8k on CPU.
- ``compiled`` is the ``chunk`` path compiled by ``torch.compile`` (inductor; one compilation
  per input shape and dtype, a few seconds on first use): it fuses the layout copies and decay
  multiplies that make the eager path memory-bound on CPU. Same numbers as ``chunk`` up to fp32
  rounding; tested against ``reference`` forward and backward.
- ``native`` is one fused C++ kernel per call (:mod:`attnzoo.ops.linear_native`): the chunk
  algorithm with its GEMMs on strided views of the inputs and the decays applied in cache, built
  on first use; its backward is the same kernel run three times. CPU, float32/float64, a constant
  decay. ``auto`` takes it for such inputs when it builds here (and warns once when it does not),
  else ``chunk``.
- ``recurrent`` runs :func:`linear_attention_step` token by token:
  ``S_t = lambda S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``.

Non-causal ``chunk`` and ``recurrent`` both use the global state ``o = scale * q (K^T V)``.
Causal cross attention (``S != T`` with ``causal=True``) is not supported.

Katharopoulos et al., "Transformers are RNNs", 2020, https://arxiv.org/abs/2006.16236
(code: https://github.com/idiap/fast-transformers). Qin et al., "Various Lengths, Constant Speed:
Efficient Language Modeling with Lightning Attention", 2024, https://arxiv.org/abs/2405.17381
(code: https://github.com/OpenNLPLab/lightning-attention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.chunks import decay_exp, from_chunks, to_chunks
from attnzoo.ops.common import check_block, check_impl, check_qkv, expand_kv, resolve_scale
from attnzoo.ops.linear_native import check_native, native_for_auto, native_linear_causal
from attnzoo.text import suggest

IMPLS = ("auto", "reference", "chunk", "native", "compiled", "recurrent")
FEATURE_MAPS = ("elu+1", "relu", "identity")
OP = "linear_attention"
SUPER = 16  # chunks per super-block of the chunk path (see the module docstring)
EPS = 1e-6


def feature_map(x: Tensor, kind: str) -> Tensor:
    """Apply a linear-attention feature map elementwise: ``"elu+1"``, ``"relu"`` or ``"identity"``."""
    if kind == "elu+1":
        return F.elu(x) + 1.0
    if kind == "relu":
        return F.relu(x)
    if kind == "identity":
        return x
    raise ValueError(
        f"feature_map: kind must be one of {', '.join(map(repr, FEATURE_MAPS))}, "
        f"got {kind!r}{suggest(str(kind), FEATURE_MAPS)}"
    )


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    decay: Tensor | None = None,
    scale: float | None = None,
    normalize: bool = False,
    eps: float = EPS,
    impl: str = "auto",
    chunk_size: int = 64,
) -> Tensor:
    """Linear attention over ``[B, T, H, K]`` tensors (see the module docstring for the formulas).

    Args:
        q, k, v: queries, keys, values (feature maps already applied). ``k``/``v`` may have
            fewer heads (grouped-query attention).
        causal: causal self attention (needs ``S == T``) or non-causal (any ``S``).
        decay: per-head log-decay ``log(lambda_h) <= 0``, shape ``[H]``; causal only.
        scale: score scale; ``None`` means ``1``.
        normalize: divide by the summed scores plus ``eps`` (non-negative features assumed).
        eps: the normaliser's epsilon.
        impl: ``"auto"`` (``native`` where it applies, else ``chunk``), ``"reference"``,
            ``"chunk"``, ``"native"`` (the fused C++ kernel), ``"compiled"`` (``chunk`` through
            ``torch.compile``) or ``"recurrent"``.
        chunk_size: tokens per chunk of the ``chunk`` path.

    Shapes:
        q ``[B, T, H, K]``, k ``[B, S, Hkv, K]``, v ``[B, S, Hkv, V]``, decay ``[H]``
        -> ``[B, T, H, V]``
    """
    check_impl(OP, impl, IMPLS)
    B, T, S, H, _, K = check_qkv(OP, q, k, v)
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got {causal!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"{OP}: normalize must be a bool, got {normalize!r}")
    if causal and S != T:
        raise ValueError(
            f"{OP}: causal=True needs as many keys as queries (self attention), got T={T}, S={S}; "
            "causal cross attention is not supported"
        )
    scale = resolve_scale(OP, 1.0 if scale is None else scale, K)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < math.inf):
        raise ValueError(f"{OP}: eps must be a finite float >= 0, got {eps!r}")
    check_block(OP, "chunk_size", chunk_size)
    g = _check_decay(decay, causal, H, q)
    if impl == "native":
        check_native(OP, q, g)
    k, v = expand_kv(k, H), expand_kv(v, H)  # [B, S, H, K], [B, S, H, V]
    if impl == "reference":
        return _reference(q, k, v, g, causal, scale, normalize, eps)
    if impl == "recurrent" and causal:
        return _recurrent(q, k, v, g, scale, normalize, eps)
    V = v.shape[-1]
    if normalize:  # the normaliser is the same attention applied to a column of ones
        v = torch.cat([v, v.new_ones(B, S, H, 1)], dim=-1)  # [B, S, H, V + 1]
    if causal and (impl == "native" or (impl == "auto" and native_for_auto(OP, q, g))):
        o = native_linear_causal(q, k, v, g, scale, chunk_size)
    elif causal:
        chunked = _compiled_chunk_causal() if impl == "compiled" else _chunk_causal
        o = chunked(q, k, v, g, scale, chunk_size)
    else:
        o = _global(q, k, v, scale)
    if normalize:
        return o[..., :V] / (o[..., V:] + eps)
    return o  # [B, T, H, V]


def linear_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv: Tensor,
    z: Tensor | None = None,
    *,
    decay: Tensor | None = None,
    scale: float = 1.0,
    eps: float = EPS,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One causal token: ``kv <- lambda kv + k^T v``, ``z <- lambda z + k``, ``o = scale q kv``
    (divided by ``scale q . z + eps`` when the normaliser state ``z`` is given).

    Shapes:
        q, k ``[B, H, K]``, v ``[B, H, V]``, kv ``[B, H, K, V]``, z ``[B, H, K]`` or ``None``,
        decay ``[H]`` -> o ``[B, H, V]``, kv, z
    """
    kv_new = torch.einsum("bhk,bhv->bhkv", k, v)  # [B, H, K, V]
    if decay is not None:
        lam = torch.exp(decay).to(kv.dtype)  # [H]
        kv = kv * lam[:, None, None] + kv_new
        z = None if z is None else z * lam[:, None] + k
    else:
        kv = kv + kv_new
        z = None if z is None else z + k
    o = torch.einsum("bhk,bhkv->bhv", q, kv) * scale  # [B, H, V]
    if z is not None:
        o = o / ((q * z).sum(-1, keepdim=True) * scale + eps)
    return o, kv, z


def linear_attention_flops(B: int, H: int, K: int, V: int, T: int, S: int, normalize: bool) -> int:
    """FLOPs of the state form: every key adds ``k^T v`` once, every query reads ``q S`` once.

    (The causal ``chunk`` path additionally spends ``~2·B·H·T·C·(K+V)/2`` on its intra-chunk
    quadratic blocks; this count is the algorithm's, not one path's.)
    """
    width = V + (1 if normalize else 0)
    return 2 * B * H * (T + S) * K * width


# ---- checks ---------------------------------------------------------------------------------
def _check_decay(decay: Tensor | None, causal: bool, H: int, q: Tensor) -> Tensor | None:
    if decay is None:
        return None
    if not isinstance(decay, Tensor):
        raise TypeError(f"{OP}: decay must be a torch.Tensor of shape [H] or None, got {decay!r}")
    if not causal:
        raise ValueError(
            f"{OP}: decay requires causal=True (a decay lambda^(t-s) needs an order), "
            "got causal=False with a decay"
        )
    if tuple(decay.shape) != (H,):
        raise ValueError(f"{OP}: decay must have shape [H]=[{H}], got {tuple(decay.shape)}")
    if not decay.is_floating_point():
        raise TypeError(f"{OP}: decay must be floating point, got dtype {decay.dtype}")
    if not torch.compiler.is_compiling() and bool((decay > 0).any()):
        raise ValueError(
            f"{OP}: decay is log(lambda) and must be <= 0 (0 < lambda <= 1), "
            f"got max {float(decay.max()):.4g}"
        )
    return decay.to(device=q.device, dtype=q.dtype)


# ---- paths ----------------------------------------------------------------------------------
def linear_weights(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool,
    decay: Tensor | None = None,
    scale: float | None = None,
    normalize: bool = False,
    eps: float = EPS,
) -> Tensor:
    """The implicit attention weights of :func:`linear_attention`, materialised:
    ``scale * (q_t . k_s) * lambda^(t - s)`` on visible pairs (``s <= t`` when causal), each row
    divided by its sum plus ``eps`` when normalising. ``weights @ v`` is the output.

    Shapes:
        q ``[B, T, H, K]``, k ``[B, S, Hkv, K]``, decay ``[H]`` -> ``[B, H, T, S]``
    """
    _, T, S, H, _, K = check_qkv(OP, q, k, k)
    if causal and S != T:
        raise ValueError(f"{OP}: causal=True needs S == T, got T={T}, S={S}")
    scale = resolve_scale(OP, 1.0 if scale is None else scale, K)
    g = _check_decay(decay, causal, H, q)
    return _weights(q, expand_kv(k, H), g, causal, scale, normalize, eps)


def _weights(
    q: Tensor, k: Tensor, g: Tensor | None, causal: bool, scale: float, normalize: bool, eps: float
) -> Tensor:
    T = q.shape[1]
    a = torch.einsum("bthk,bshk->bhts", q, k) * scale  # [B, H, T, S]
    if causal:
        t = torch.arange(T, device=q.device)
        dist = t[:, None] - t[None, :]  # [T, T] = t - s
        if g is None:
            w = (dist >= 0).to(q.dtype)  # [T, T]
        else:
            w = torch.exp(g[:, None, None] * dist.clamp(min=0))  # [H, T, T]
            w = torch.where(dist >= 0, w, torch.zeros_like(w))
        a = a * w
    if normalize:
        a = a / (a.sum(-1, keepdim=True) + eps)
    return a


def _reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    causal: bool,
    scale: float,
    normalize: bool,
    eps: float,
) -> Tensor:
    a = _weights(q, k, g, causal, scale, normalize, eps)  # [B, H, T, S]
    return torch.einsum("bhts,bshv->bthv", a, v)  # [B, T, H, V]


def _global(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    kv = torch.einsum("bshk,bshv->bhkv", k, v)  # [B, H, K, V]
    return torch.einsum("bthk,bhkv->bthv", q, kv) * scale  # [B, T, H, V]


def _recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, normalize: bool, eps: float
) -> Tensor:
    B, T, H, K = q.shape
    kv = q.new_zeros(B, H, K, v.shape[-1])  # [B, H, K, V]
    z = q.new_zeros(B, H, K) if normalize else None  # [B, H, K]
    outs = []
    for t in range(T):
        o_t, kv, z = linear_attention_step(
            q[:, t], k[:, t], v[:, t], kv, z, decay=g, scale=scale, eps=eps
        )
        outs.append(o_t)
    if not outs:
        return q.new_zeros(B, 0, H, v.shape[-1])
    return torch.stack(outs, dim=1)  # [B, T, H, V]


def _chunk_causal(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, C: int
) -> Tensor:
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T == 0:
        return q.new_zeros(B, 0, H, V)
    C = min(C, T)
    G = min(SUPER, -(-T // C))  # chunks per super-block
    gr = (g if g is not None else q.new_zeros(H)).repeat(B)  # [B·H] log-decay, <= 0
    i = torch.arange(C, device=q.device)
    dist = i[:, None] - i[None, :]  # [C, C] = i - j
    # intra-chunk: scale * lambda^(i-j) on and below the diagonal (scale folded into the mask)
    intra = torch.where(dist >= 0, decay_exp(gr[:, None, None] * dist.clamp(min=0)) * scale, 0.0)
    # across the chunks of a super-block: chunk m's state reaches chunk n's entry decayed
    # lambda^(C·(n-1-m)) for m < n; the super-block's entering state is decayed lambda^(C·n)
    n = torch.arange(G, device=q.device)
    steps = n[:, None] - n[None, :] - 1  # [G, G]
    across = torch.where(steps >= 0, decay_exp(gr[:, None, None] * C * steps.clamp(min=0)), 0.0)
    carry = decay_exp(gr[:, None] * C * n)[:, :, None]  # [B·H, G, 1]
    step_c = decay_exp(gr * C)[:, None, None]  # [B·H, 1, 1] = lambda^C
    if g is not None:
        k_decay = decay_exp(gr[:, None] * (C - 1 - i))[:, None, :, None]  # [B·H, 1, C, 1]
        q_decay = decay_exp(gr[:, None] * (i + 1))[:, None, :, None] * scale  # lambda^(i+1)
    state = q.new_zeros(B * H, 1, K * V)  # state entering the super-block
    outs = []
    for t0 in range(0, T, G * C):
        qc, kc, vc = (to_chunks(x[:, t0 : t0 + G * C], C) for x in (q, k, v))  # [B·H, n, C, D]
        R, N = qc.shape[:2]
        a = torch.matmul(qc, kc.transpose(-1, -2))  # [B·H, n, C, C]
        a.mul_(intra[:, None])  # in place: matmul's backward keeps q and k, not a
        o = torch.matmul(a, vc)  # [B·H, n, C, V]
        # S_n = lambda^C S_{n-1} + sum_j lambda^(C-1-j) k_j^T v_j, state entering chunk n
        kd = kc if g is None else kc * k_decay
        kv = torch.matmul(kd.transpose(-1, -2), vc).view(R, N, K * V)  # [B·H, n, K·V]
        entering = torch.matmul(across[:, :N, :N], kv)  # [B·H, n, K·V]
        entering.addcmul_(carry[:, :N], state)  # in place: not saved by matmul's backward
        if g is None:
            qd, alpha = qc, scale
        else:
            qd, alpha = qc * q_decay, 1.0
        o.view(R * N, C, V).baddbmm_(qd.view(R * N, C, K), entering.view(R * N, K, V), alpha=alpha)
        state = step_c * entering[:, -1:] + kv[:, -1:]  # [B·H, 1, K·V]
        outs.append(o)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # [B·H, N, C, V]
    return from_chunks(out, B, T)  # [B, T, H, V] (a view)


_COMPILED: list = []


def _compiled_chunk_causal():  # noqa: ANN202  (a compiled callable)
    """:func:`_chunk_causal` through ``torch.compile``, built on first use (shapes static)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_chunk_causal, dynamic=False))
    return _COMPILED[0]
