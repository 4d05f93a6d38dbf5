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
- ``compiled`` is the ``chunk`` path with its super-block compiled by ``torch.compile``
  (inductor, a few seconds on first use): it fuses the layout copies and decay multiplies that
  make the eager path memory-bound on CPU. The tiling is fixed (chunks of ``chunk_size`` even
  when ``T`` is shorter, super-blocks of ``SUPER`` chunks, the last zero-padded to whole chunks)
  and the chunk count and ``B·H`` are dynamic shapes, so one or two compilations serve every
  ``T`` and batch of a dtype, head count and width (per decay kind and grad mode, each compiled
  on a code object of its own). A compilation per ``T`` hit torch._dynamo's ``recompile_limit``
  (8) after 8 lengths, and later lengths silently ran uncompiled. Same numbers as ``chunk`` up
  to fp32 rounding; tested against ``reference`` forward and backward.
- ``native`` is one fused C++ kernel per call (:mod:`attnzoo.ops.linear_native`): the chunk
  algorithm with its GEMMs on strided views of the inputs and the decays applied in cache, built
  on first use; its backward is the same kernel run three times. CPU, float32/float64, a constant
  decay. ``auto`` takes it for such inputs when it builds here (and warns once when it does not),
  else ``chunk``. Under ``torch.export`` ``auto`` takes ``chunk`` (a portable, ONNX-convertible
  program with a static ``T``) and ``native`` exports as the custom op ``attnzoo::linear_chunk``
  (a dynamic ``T`` works; no ONNX): see :mod:`attnzoo.native`.
- ``recurrent`` runs :func:`linear_attention_step` token by token:
  ``S_t = lambda S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``.

Non-causal ``chunk`` and ``recurrent`` both use the global state ``o = scale * q (K^T V)``.
Causal cross attention (``S != T`` with ``causal=True``) is not supported.

Precision: ``float16`` inputs are computed in ``float32`` and the output cast back (every path):
the sums over keys (the state ``K^T V``, the normaliser ``q . sum_s k_s``) pass float16's
largest value, 65504, at about a thousand tokens of ``elu+1`` features, where the normalised
output came out as zeros. ``bfloat16`` has float32's range and runs as is; ``native`` takes
neither (and ``auto`` does not pick it for them).

Katharopoulos et al., "Transformers are RNNs", 2020, https://arxiv.org/abs/2006.16236
(code: https://github.com/idiap/fast-transformers). Qin et al., "Various Lengths, Constant Speed:
Efficient Language Modeling with Lightning Attention", 2024, https://arxiv.org/abs/2405.17381
(code: https://github.com/OpenNLPLab/lightning-attention).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import NamedTuple

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

    float16 inputs are computed in float32 and the output cast back (its range, see the module
    docstring).

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
    native = causal and (impl == "native" or (impl == "auto" and native_for_auto(OP, q, g)))
    k, v = expand_kv(k, H), expand_kv(v, H)  # [B, S, H, K], [B, S, H, V]
    if q.dtype == torch.float16:  # in float32: the sums pass float16's range (module docstring)
        q, k, v = q.float(), k.float(), v.float()
        g = None if g is None else g.float()
        return _paths(q, k, v, g, causal, scale, normalize, eps, impl, native, chunk_size).half()
    return _paths(q, k, v, g, causal, scale, normalize, eps, impl, native, chunk_size)


def _paths(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    causal: bool,
    scale: float,
    normalize: bool,
    eps: float,
    impl: str,
    native: bool,
    chunk_size: int,
) -> Tensor:
    """The path ``impl`` on checked inputs (``native``: the fused kernel's turn, decided by
    :func:`linear_attention`). Shapes: q ``[B, T, H, K]``, k ``[B, S, H, K]``, v ``[B, S, H, V]``
    -> ``[B, T, H, V]``."""
    if impl == "reference":
        return _reference(q, k, v, g, causal, scale, normalize, eps)
    if impl == "recurrent" and causal:
        return _recurrent(q, k, v, g, scale, normalize, eps)
    B, S, H, V = v.shape
    if normalize:  # the normaliser is the same attention applied to a column of ones
        v = torch.cat([v, v.new_ones(B, S, H, 1)], dim=-1)  # [B, S, H, V + 1]
    if native:
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


class _Decays(NamedTuple):
    """The decay factors of a tiling in chunks of ``C`` tokens and super-blocks of ``G`` chunks
    (scale folded in): :func:`_decays` makes them, :func:`_super_block` uses them."""

    intra: Tensor  # [B·H, C, C] scale * lambda^(i-j) on and below the diagonal
    across: Tensor  # [B·H, G, G] lambda^(C·(n-1-m)) for m < n
    carry: Tensor  # [B·H, G, 1] lambda^(C·n): the super-block's entering state to chunk n
    step_c: Tensor  # [B·H, 1, 1] lambda^C
    k_decay: Tensor | None  # [B·H, 1, C, 1] lambda^(C-1-j) (None without a decay)
    q_decay: Tensor | None  # [B·H, 1, C, 1] scale * lambda^(i+1) (None without a decay)
    alpha: float  # the scale of the inter-chunk term (1 when q_decay carries it)


def _decays(g: Tensor | None, B: int, H: int, C: int, G: int, scale: float, q: Tensor) -> _Decays:
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
    if g is None:
        return _Decays(intra, across, carry, step_c, None, None, scale)
    k_decay = decay_exp(gr[:, None] * (C - 1 - i))[:, None, :, None]  # [B·H, 1, C, 1]
    q_decay = decay_exp(gr[:, None] * (i + 1))[:, None, :, None] * scale  # lambda^(i+1)
    return _Decays(intra, across, carry, step_c, k_decay, q_decay, 1.0)


def _super_block(
    q: Tensor, k: Tensor, v: Tensor, state: Tensor, d: _Decays, C: int
) -> tuple[Tensor, Tensor]:
    """One super-block of at most ``G`` chunks and the state leaving it.

    Shapes: q, k ``[B, L, H, K]``, v ``[B, L, H, V]`` (``L <= G·C``), state ``[B·H, 1, K·V]``
        (entering) -> o ``[B·H, ceil(L/C), C, V]``, state ``[B·H, 1, K·V]``"""
    K, V = q.shape[-1], v.shape[-1]
    qc, kc, vc = (to_chunks(x, C) for x in (q, k, v))  # [B·H, n, C, D]
    R, N = qc.shape[:2]
    a = torch.matmul(qc, kc.transpose(-1, -2))  # [B·H, n, C, C]
    a.mul_(d.intra[:, None])  # in place: matmul's backward keeps q and k, not a
    o = torch.matmul(a, vc)  # [B·H, n, C, V]
    # S_n = lambda^C S_{n-1} + sum_j lambda^(C-1-j) k_j^T v_j, state entering chunk n
    kd = kc if d.k_decay is None else kc * d.k_decay
    kv = torch.matmul(kd.transpose(-1, -2), vc).view(R, N, K * V)  # [B·H, n, K·V]
    entering = torch.matmul(d.across[:, :N, :N], kv)  # [B·H, n, K·V]
    entering.addcmul_(d.carry[:, :N], state)  # in place: not saved by matmul's backward
    qd = qc if d.q_decay is None else qc * d.q_decay
    o.view(R * N, C, V).baddbmm_(qd.view(R * N, C, K), entering.view(R * N, K, V), alpha=d.alpha)
    return o, d.step_c * entering[:, -1:] + kv[:, -1:]  # state: [B·H, 1, K·V]


def _chunk_causal(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, C: int
) -> Tensor:
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T == 0:
        return q.new_zeros(B, 0, H, V)
    C = min(C, T)
    G = min(SUPER, -(-T // C))  # chunks per super-block
    d = _decays(g, B, H, C, G, scale, q)
    state = q.new_zeros(B * H, 1, K * V)  # state entering the super-block
    outs = []
    for t0 in range(0, T, G * C):
        o, state = _super_block(*(x[:, t0 : t0 + G * C] for x in (q, k, v)), state, d, C)
        outs.append(o)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # [B·H, N, C, V]
    return from_chunks(out, B, T)  # [B, T, H, V] (a view)


_COMPILED: dict[tuple[bool, bool], Callable[..., tuple[Tensor, Tensor]]] = {}


def _compiled_chunk_causal():  # noqa: ANN202  (a callable like _chunk_causal)
    """:func:`_chunk_causal` with its super-block compiled by ``torch.compile`` (built on first
    use). The tiling does not follow ``T`` (chunks of ``C`` even when ``T < C``, super-blocks of
    ``SUPER`` chunks) and the last super-block is zero-padded to whole chunks, so the blocks'
    inputs differ only in their chunk count, which is marked dynamic (as is ``B·H``): a few
    compilations serve every length (see the module docstring), not one per ``T``."""
    return _compiled_chunk


def _compiled_block(decayed: bool, grad: bool) -> Callable[..., tuple[Tensor, Tensor]]:
    """The compiled :func:`_super_block` for a decay kind and grad mode, each on a code object of
    its own: torch._dynamo counts a function's compilations (``recompile_limit``, 8) per code
    object, and blocks with and without a decay, run with and without grad (a benchmark does all
    four), never share a compiled graph."""
    key = (decayed, grad)
    if key not in _COMPILED:
        name = f"_super_block_{'decayed' if decayed else 'plain'}_{'grad' if grad else 'nograd'}"
        code = _super_block.__code__.replace(co_name=name)
        fn = types.FunctionType(code, _super_block.__globals__, name)
        _COMPILED[key] = torch.compile(fn)
    return _COMPILED[key]


def _compiled_chunk(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, C: int
) -> Tensor:
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T == 0:
        return q.new_zeros(B, 0, H, V)
    d = _decays(g, B, H, C, SUPER, scale, q)
    # every call sees the same kinds of inputs: contiguous, with strides that follow their own
    # sizes (a view's would name T), and a state that requires grad whenever a later one will
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, d.intra))
    state = q.new_zeros(B * H, 1, K * V).requires_grad_(grad)  # entering the super-block
    block = _compiled_block(g is not None, torch.is_grad_enabled())
    outs = []
    for t0 in range(0, T, SUPER * C):
        xs = [_whole_chunks(x[:, t0 : t0 + SUPER * C], C) for x in (q, k, v)]
        N = xs[0].shape[1] // C
        # the decays of N chunks, contiguous (a slice's strides would name SUPER)
        dn = d._replace(across=d.across[:, :N, :N].contiguous(), carry=d.carry[:, :N].contiguous())
        for x in (*xs, state, *(t for t in dn if isinstance(t, Tensor))):
            torch._dynamo.maybe_mark_dynamic(x, 0)  # B·H (q, k, v: B)
        for x in (*xs, dn.across, dn.carry):
            torch._dynamo.maybe_mark_dynamic(x, 1)  # the chunks (q, k, v: their tokens)
        torch._dynamo.maybe_mark_dynamic(dn.across, 2)
        o, state = block(*xs, state, dn, C)
        outs.append(o)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # [B·H, N, C, V]
    return from_chunks(out, B, T)  # [B, T, H, V] (a view)


def _whole_chunks(x: Tensor, C: int) -> Tensor:
    """``x [B, L, H, D]`` zero-padded to whole chunks (zero tokens after the end change nothing
    before it), in a tensor of its own: contiguous, with strides that follow its own sizes (a
    slice's would name ``T``, and a batch of one keeps the slice's batch stride)."""
    pad = -x.shape[1] % C
    if pad:
        return F.pad(x, (0, 0, 0, 0, 0, pad))
    x = x.contiguous()
    return x[0][None] if x.shape[0] == 1 else x
