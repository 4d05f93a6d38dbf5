"""Routing attention (Routing Transformer): online k-means routing, attention inside clusters.

Roy, Saffar, Vaswani and Grangier, "Efficient Content-Based Sparse Attention with Routing
Transformers", TACL 2021. https://arxiv.org/abs/2003.05997
Official code: google-research ``routing_transformer/utils.py`` (``cluster_items``,
``online_kmeans``, ``gather_cluster_attention_items``, ``scatter_cluster_items``).

Per head, with routing vectors ``x̂ = norm(x)`` (``norm="layer"``: layer norm without scale or
bias, eps 1e-6, as the official code; ``"l2"``: unit length, as the routing-transformer
package; ``"none"``: already normalised) and centroids ``mu [H, C, K]``, the similarity of
token ``t`` to cluster ``c`` is ``s_tc = x̂_t . mu_c``. Routing is *balanced*: cluster ``c``
takes the ``w`` tokens with the largest ``s_tc`` (ties: the earlier token), queries ranked by
``q̂`` and keys by ``k̂`` separately. ``w = window`` (at most ``T``), or ``ceil(T / C)`` when
``window is None``: when ``C`` does not divide ``T`` every cluster still takes exactly ``w``
tokens (``C·w - T`` spare slots). A token can be taken by several clusters or by none; its
output is the *mean* of its clusters' outputs, and ``0`` if no cluster took it (the official
``scatter_cluster_items`` divides by ``count + 1e-2`` and the package's ``scatter_mean`` by
``count + 1e-5``: both give 0 for an unrouted token and shrink the others slightly; we divide by
the exact count). Inside cluster ``c`` a query attends its cluster's keys (``causal``: those at
an original position ``<= `` its own) with ``softmax(scale · q . k)``; a query without a visible
key gets 0 from that cluster (still counted in the mean) unless ``null_kv`` gives every cluster
an always-visible key and value (the package's ``mem_key``/``mem_value``).

Causality: ``routing="balanced"`` ranks the *whole* sequence, so a future token can push a past
token out of a cluster and change past outputs, even with the causal mask (the official
training forward and the package do this). ``routing="prefix"`` is the official decoder's rule
(``cluster_items(blank_future=True)``: at step ``t`` positions after ``t`` are ranked last):
query ``t`` is routed to ``c`` if it is among the ``w`` most similar queries of ``0..t``, and then
attends the ``w`` most similar keys of ``0..t``. It computes every decoding step's output at once
and is exactly causal. A key stays in a cluster from its position until ``w`` better keys have
arrived, so each cluster routes about ``w·(1 + ln(T/w))`` queries to as many keys for tokens in
random order (``T`` of each at worst); finding them costs ``O(C·T²)`` comparisons (no ``K``
factor), the attention ``O(C·w²·(1 + ln C)²·K)``.

- ``reference``: per cluster, membership from its definition (rank counts), dense masked
  ``[T, T]`` softmax weights, explicit loop over clusters.
- ``gather`` (``auto``): balanced: a stable sort per cluster, one batched gather of the
  ``[C, w]`` windows, one masked attention, a scatter-add of outputs and counts. Prefix: per
  cluster, each key's exit time (a cumulative count over the rank order), the queries the
  cluster ever routes and the keys it ever takes (padded to the most over the sequences), one
  masked attention between them (key ``j`` visible from ``t`` while ``j <= t < exit_j``).

Low precision: the routing norms and similarities run in (at least) float32 and the norms are
cast back; with bfloat16 ones, near-tied choices flip and a flipped token's output moves by O(1).

Also here: :func:`local_attention`, the Routing Transformer's local heads (blocked: each block of
``block`` queries attends its own block and the previous one, and the next one when not
causal), and the k-means pieces: :func:`similarity`, :func:`nearest_centroid`,
:func:`commitment_loss` (``mean((x̂ - sg(mu_nearest))²)``) and the exponential moving average
(:func:`cluster_means`, :func:`ema_update_`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from attnzoo.ops.common import check_impl, check_qkv, resolve_scale

IMPLS = ("auto", "reference", "gather")
ROUTINGS = ("balanced", "prefix")
NORMS = ("layer", "l2", "none")
OP = "routing_attention"
LAYER_NORM_EPS = 1e-6  # the official layer_norm's epsilon
ROWS = 1 << 20  # elements per chunk of the prefix path's comparisons and sorts


# ---- k-means pieces --------------------------------------------------------------------------
def route_norm(x: Tensor, norm: str = "layer") -> Tensor:
    """Routing vectors: ``layer`` (mean 0, variance 1 over ``K``, no scale or bias), ``l2`` (unit
    length) or ``none``. Shapes: ``[..., K] -> [..., K]``."""
    wide = _wide(x)
    if norm == "layer":
        return F.layer_norm(wide, x.shape[-1:], eps=LAYER_NORM_EPS).to(x.dtype)
    if norm == "l2":
        return F.normalize(wide, dim=-1).to(x.dtype)
    if norm == "none":
        return x
    raise ValueError(f"route_norm: norm must be one of {NORMS}, got {norm!r}")


def similarity(x: Tensor, centroids: Tensor) -> Tensor:
    """``x_t . mu_c`` per head, in at least float32. Shapes: x ``[B, T, H, K]``, centroids
    ``[H, C, K]`` -> ``[B, H, C, T]``."""
    return torch.einsum("bthk,hck->bhct", _wide(x), _wide(centroids))


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32 if it is a narrower float: routing decides by comparing numbers, and
    bfloat16 rounding of the norm and the similarities flips near-tied choices."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def nearest_centroid(x: Tensor, centroids: Tensor) -> Tensor:
    """The most similar centroid (``argmax_c x . mu_c``, the official ``nearest_neighbor``).
    Shapes: ``[B, T, H, K]``, ``[H, C, K]`` -> ``[B, H, T]`` (int64)."""
    return similarity(x, centroids).argmax(dim=2)


def commitment_loss(x: Tensor, centroids: Tensor) -> Tensor:
    """``mean((x - sg(mu_nearest(x)))²)`` over every element (the official ``e_loss``; gradients
    reach ``x`` only). Shapes: ``[B, T, H, K]``, ``[H, C, K]`` -> scalar."""
    idx = nearest_centroid(x, centroids.detach())  # [B, H, T]
    heads = torch.arange(centroids.shape[0], device=x.device)[None, :, None]
    mu = centroids.detach()[heads, idx]  # [B, H, T, K]
    return F.mse_loss(x, rearrange(mu, "b h t k -> b t h k"))


@torch.no_grad()
def cluster_means(xs: Sequence[Tensor], centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and count of the vectors (of every tensor in ``xs``, all batches and tokens) whose
    nearest centroid is ``c``, per head. Shapes: each x ``[B, T, H, K]`` -> ``[H, C, K]``,
    ``[H, C]`` (a cluster with count 0 has mean 0)."""
    H, C, K = centroids.shape
    sums = centroids.new_zeros(H, C, K)
    counts = centroids.new_zeros(H, C)
    for x in xs:
        hot = F.one_hot(nearest_centroid(x, centroids), C).to(x.dtype)  # [B, H, T, C]
        sums += torch.einsum("bhtc,bthk->hck", hot, x).to(sums.dtype)
        counts += hot.sum(dim=(0, 2)).to(counts.dtype)
    return sums / counts.clamp_min(1)[..., None], counts


@torch.no_grad()
def ema_update_(centroids: Tensor, means: Tensor, counts: Tensor, decay: float) -> Tensor:
    """``mu_c <- decay·mu_c + (1 - decay)·mean_c`` in place for clusters with ``counts > 0``
    (the paper's update with the batch sum replaced by its mean; the others keep their mean).
    Shapes: ``[H, C, K]``, ``[H, C, K]``, ``[H, C]`` -> ``centroids``."""
    moved = torch.lerp(centroids, means.to(centroids.dtype), 1.0 - decay)
    return centroids.copy_(torch.where(counts[..., None] > 0, moved, centroids))


def cluster_window(T: int, num_clusters: int, window: int | None) -> int:
    """Tokens per cluster: ``min(window, T)``, or ``ceil(T / C)`` when ``window is None``."""
    if window is None:
        return max(1, -(-T // num_clusters))
    return max(1, min(window, T))


def balanced_routes(s: Tensor, w: int) -> Tensor:
    """The ``w`` most similar tokens of each cluster (ties: the earlier token first).
    Shapes: ``[..., C, T]`` -> ``[..., C, w]`` token indices."""
    return torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :w]


# ---- routing attention -------------------------------------------------------------------------
def routing_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    centroids: Tensor,
    *,
    causal: bool = False,
    routing: str = "balanced",
    window: int | None = None,
    scale: float | None = None,
    norm: str = "layer",
    null_kv: tuple[Tensor, Tensor] | None = None,
    impl: str = "auto",
) -> Tensor:
    """Routing attention over ``[B, T, H, K]`` tensors (self-attention: ``k``, ``v`` have ``T``
    tokens and ``H`` heads).

    Args:
        q, k, v: queries, keys, values; attention uses them as given.
        centroids: k-means centroids per head, compared with ``route_norm(q)``/``route_norm(k)``.
        causal: a query attends keys at positions ``<=`` its own only.
        routing: ``balanced`` (top-``w`` over the sequence) or ``prefix`` (over ``0..t``;
            needs ``causal``): see the module docstring.
        window: tokens per cluster ``w``; ``None`` means ``ceil(T / C)``.
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        norm: routing vectors: ``layer`` | ``l2`` | ``none`` (:func:`route_norm`).
        null_kv: ``(key [H, C, K], value [H, C, V])``, one always-visible pair per cluster.
        impl: ``auto`` (``gather``) | ``reference`` | ``gather``.

    Shapes:
        q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, centroids ``[H, C, K]`` -> ``[B, T, H, V]``
    """
    w, s = _check(q, k, v, centroids, causal, routing, window, scale, norm, null_kv, impl)
    sq = similarity(route_norm(q, norm), centroids).detach()  # [B, H, C, T]
    sk = similarity(route_norm(k, norm), centroids).detach()
    if impl == "reference":
        return _reference(q, k, v, sq, sk, w, s, causal, routing == "prefix", null_kv)
    if routing == "prefix":
        return _prefix(q, k, v, sq, sk, w, s, null_kv)
    return _balanced(q, k, v, sq, sk, w, s, causal, null_kv)


def routing_weights(
    q: Tensor,
    k: Tensor,
    centroids: Tensor,
    *,
    causal: bool = False,
    routing: str = "balanced",
    window: int | None = None,
    scale: float | None = None,
    norm: str = "layer",
) -> Tensor:
    """The reference's weights averaged over each query's clusters: ``output = weights @ v``
    (no ``null_kv``). Shapes: q, k ``[B, T, H, K]`` -> ``[B, H, T, T]``."""
    w, s = _check(q, k, k, centroids, causal, routing, window, scale, norm, None, "reference")
    sq = similarity(route_norm(q, norm), centroids).detach()
    sk = similarity(route_norm(k, norm), centroids).detach()
    a, count, _ = _dense(q, k, sq, sk, w, s, causal, routing == "prefix", None)
    return a / count.clamp_min(1)[..., None]


def _check(
    q: Tensor, k: Tensor, v: Tensor, centroids: Tensor, causal: bool, routing: str,
    window: int | None, scale: float | None, norm: str, null_kv: tuple[Tensor, Tensor] | None,
    impl: str,
) -> tuple[int, float]:  # fmt: skip
    check_impl(OP, impl, IMPLS)
    B, T, S, H, Hkv, K = check_qkv(OP, q, k, v)
    if S != T or Hkv != H:
        raise ValueError(f"{OP}: self-attention only: k and v need q's T={T} and H={H}, got "
                         f"S={S} and {Hkv} heads")  # fmt: skip
    if routing not in ROUTINGS:
        raise ValueError(f"{OP}: routing must be one of {ROUTINGS}, got {routing!r}")
    if routing == "prefix" and not causal:
        raise ValueError(f"{OP}: routing='prefix' ranks each query's past and needs causal=True")
    if norm not in NORMS:
        raise ValueError(f"{OP}: norm must be one of {NORMS}, got {norm!r}")
    if not isinstance(centroids, Tensor) or centroids.dim() != 3 or centroids.shape[0] != H \
            or centroids.shape[2] != K or centroids.shape[1] < 1:  # fmt: skip
        got = tuple(centroids.shape) if isinstance(centroids, Tensor) else type(centroids).__name__
        raise ValueError(f"{OP}: centroids must have shape [H={H}, C>=1, K={K}], got {got}")
    if centroids.dtype != q.dtype or centroids.device != q.device:
        raise TypeError(f"{OP}: centroids must match q's dtype {q.dtype} and device {q.device}, "
                        f"got {centroids.dtype} on {centroids.device}")  # fmt: skip
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):  # fmt: skip
        raise ValueError(f"{OP}: window must be a positive int or None, got {window!r}")
    if null_kv is not None:
        C, V = centroids.shape[1], v.shape[3]
        nk, nv = null_kv
        if tuple(nk.shape) != (H, C, K) or tuple(nv.shape) != (H, C, V):
            raise ValueError(f"{OP}: null_kv must be ([H, C, K]={(H, C, K)}, [H, C, V]="
                             f"{(H, C, V)}), got {tuple(nk.shape)}, {tuple(nv.shape)}")  # fmt: skip
    return cluster_window(T, centroids.shape[1], window), resolve_scale(OP, scale, K)


def _beats(s: Tensor) -> Tensor:
    """``[..., i, j]``: token ``i`` ranks before token ``j`` (more similar, or as similar and
    earlier). Shapes: ``[..., T]`` -> ``[..., T, T]``."""
    T = s.shape[-1]
    pos = torch.arange(T, device=s.device)
    earlier = pos[:, None] < pos[None, :]
    return (s[..., :, None] > s[..., None, :]) | ((s[..., :, None] == s[..., None, :]) & earlier)


def _masked_softmax(logits: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the allowed entries of the last axis; rows with none are 0."""
    logits = logits.masked_fill(~allowed, float("-inf"))
    has = allowed.any(-1, keepdim=True)
    p = torch.softmax(torch.where(has, logits, torch.zeros_like(logits)), dim=-1)
    return p.masked_fill(~allowed, 0.0)


def _dense(
    q: Tensor, k: Tensor, sq: Tensor, sk: Tensor, w: int, scale: float, causal: bool,
    prefix: bool, null_k: Tensor | None,
) -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """Per cluster, the definition: weights summed over clusters ``[B, H, T, T]``, routed
    counts ``[B, H, T]`` and each cluster's null-key weight ``[B, H, T]`` (if ``null_k``)."""
    B, T, H, _ = q.shape
    upto = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # [t, j]: j <= t
    logits = torch.einsum("bthk,bshk->bhts", q, k) * scale  # [B, H, T, T]
    total = logits.new_zeros(B, H, T, T)
    count = logits.new_zeros(B, H, T)
    nulls = []
    for c in range(sq.shape[2]):
        beat_q, beat_k = _beats(sq[:, :, c]), _beats(sk[:, :, c])  # [B, H, i, j]
        if prefix:  # ranks among positions 0..t only
            in_q = (beat_q & upto.T).sum(-2) < w  # i < t beating t (i == t never beats t)
            in_k = upto & (beat_k.cumsum(-2) < w)  # [B, H, t, j]
        else:
            in_q = beat_q.sum(-2) < w  # [B, H, T]
            in_k = (beat_k.sum(-2) < w)[..., None, :]  # [B, H, 1, j]
            in_k = in_k & upto if causal else in_k
        allowed = in_q[..., :, None] & in_k  # [B, H, T, T]
        if null_k is None:
            p = _masked_softmax(logits, allowed)
        else:
            null = torch.einsum("bthk,hk->bht", q, null_k[:, c]) * scale  # [B, H, T]
            p = _masked_softmax(torch.cat([null[..., None], logits], -1),
                                F.pad(allowed, (1, 0), value=True))  # fmt: skip
            nulls.append(p[..., 0] * in_q)
            p = p[..., 1:]
        total = total + p * in_q[..., None]
        count = count + in_q
    return total, count, nulls


def _reference(
    q: Tensor, k: Tensor, v: Tensor, sq: Tensor, sk: Tensor, w: int, scale: float,
    causal: bool, prefix: bool, null_kv: tuple[Tensor, Tensor] | None,
) -> Tensor:  # fmt: skip
    null_k = None if null_kv is None else null_kv[0]
    a, count, nulls = _dense(q, k, sq, sk, w, scale, causal, prefix, null_k)
    o = torch.einsum("bhts,bshv->bhtv", a, v)  # [B, H, T, V]
    for c, p0 in enumerate(nulls):
        o = o + p0[..., None] * null_kv[1][None, :, None, c]  # type: ignore[index]
    return rearrange(o / count.clamp_min(1)[..., None], "b h t v -> b t h v")


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of ``x``. Shapes: ``[N, T, D]``, ``[N, *I]`` -> ``[N, *I, D]``."""
    flat = idx.reshape(idx.shape[0], -1, 1).expand(-1, -1, x.shape[-1])
    return x.gather(1, flat).reshape(*idx.shape, x.shape[-1])


def _balanced(
    q: Tensor, k: Tensor, v: Tensor, sq: Tensor, sk: Tensor, w: int, scale: float,
    causal: bool, null_kv: tuple[Tensor, Tensor] | None,
) -> Tensor:  # fmt: skip
    B, T, H, _ = q.shape
    C, V = sq.shape[2], v.shape[3]
    qf, kf, vf = (rearrange(t, "b t h k -> (b h) t k") for t in (q, k, v))
    qi = balanced_routes(rearrange(sq, "b h c t -> (b h) c t"), w)  # [N, C, w]
    ki = balanced_routes(rearrange(sk, "b h c t -> (b h) c t"), w)
    qg, kg, vg = _take(qf, qi), _take(kf, ki), _take(vf, ki)  # [N, C, w, K|V]
    logits = torch.einsum("ncik,ncjk->ncij", qg, kg) * scale  # [N, C, w, w]
    allowed = qi[..., :, None] >= ki[..., None, :] if causal else torch.ones_like(logits).bool()
    if null_kv is not None:
        nk, nv = (t.repeat(B, 1, 1) for t in null_kv)  # [N, C, K|V]
        null = torch.einsum("ncik,nck->nci", qg, nk)[..., None] * scale
        p = _masked_softmax(torch.cat([null, logits], -1), F.pad(allowed, (1, 0), value=True))
        o = p[..., 1:] @ vg + p[..., :1] * nv[:, :, None]  # [N, C, w, V]
    else:
        o = _masked_softmax(logits, allowed) @ vg
    flat = qi.reshape(B * H, C * w)
    out = o.new_zeros(B * H, T, V).scatter_add(1, flat[..., None].expand(-1, -1, V),
                                               o.reshape(B * H, C * w, V))  # fmt: skip
    count = o.new_zeros(B * H, T).scatter_add(1, flat, o.new_ones(flat.shape))
    out = out / count.clamp_min(1)[..., None]
    return rearrange(out, "(b h) t v -> b t h v", b=B)


def _prefix(
    q: Tensor, k: Tensor, v: Tensor, sq: Tensor, sk: Tensor, w: int, scale: float,
    null_kv: tuple[Tensor, Tensor] | None,
) -> Tensor:  # fmt: skip
    """Per cluster: the queries it ever routes and the keys it ever takes, padded to the most
    over the sequences, one masked attention between them (a key is visible from ``t`` while it
    is among the cluster's ``w`` best of ``0..t``: positions ``j <= t < exit_j``)."""
    B, T, H, _ = q.shape
    C, V, N = sq.shape[2], v.shape[3], B * H
    qf, kf, vf = (rearrange(t, "b t h k -> (b h) t k") for t in (q, k, v))
    sq, sk = (rearrange(t, "b h c t -> (b h) c t") for t in (sq, sk))
    pos = torch.arange(T, device=q.device)
    out, count = q.new_zeros(N, T, V), q.new_zeros(N, T)
    for c in range(C):
        exit_q, exit_k = _exits(sq[:, c], w), _exits(sk[:, c], w)  # [N, T]
        ri, r_ok = _compact(exit_q > pos)  # routed queries [N, R]
        ki, k_ok = _compact(exit_k > pos)  # keys the cluster ever takes [N, U]
        qg, kg, vg = _take(qf, ri), _take(kf, ki), _take(vf, ki)  # [N, R|U, K|V]
        ends = exit_k.gather(1, ki)[:, None, :]  # [N, 1, U]
        allowed = k_ok[:, None, :] & (ki[:, None, :] <= ri[..., None]) & (ends > ri[..., None])
        logits = qg @ kg.transpose(1, 2) * scale  # [N, R, U]
        if null_kv is not None:
            nk, nv = (t[:, c].repeat(B, 1) for t in null_kv)  # [N, K|V]: sequence n has head n % H
            null = qg @ nk[:, :, None] * scale  # [N, R, 1]
            p = _masked_softmax(torch.cat([null, logits], -1), F.pad(allowed, (1, 0), value=True))
            o = p[..., 1:] @ vg + p[..., :1] * nv[:, None, :]
        else:
            o = _masked_softmax(logits, allowed) @ vg  # [N, R, V]
        o = o * r_ok[..., None]
        out = out.scatter_add(1, ri[..., None].expand(-1, -1, V), o)
        count = count.scatter_add(1, ri, r_ok.to(count.dtype))
    out = out / count.clamp_min(1)[..., None]
    return rearrange(out, "(b h) t v -> b t h v", b=B)


def _exits(s: Tensor, w: int) -> Tensor:
    """Token ``j`` is among the ``w`` best (most similar; ties: earlier) of positions ``0..t``
    exactly for ``j <= t < exit_j``: ``exit_j`` is where the ``w``-th token ranked before ``j``
    sits (``T`` if there are fewer). Shapes: ``[N, T]`` -> ``[N, T]`` (int64)."""
    N, T = s.shape
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices  # positions by rank
    ranks = torch.arange(T, device=s.device)
    rank = torch.empty_like(order).scatter_(1, order, ranks.expand(N, T))
    by_rank = []
    for a, b in _spans(T, N * T):
        before = rank[:, None, :] < ranks[None, a:b, None]  # [N, L, T]: p ranks before rank r
        arrived = before.cumsum(-1, dtype=torch.int32)  # of them, at positions <= p
        # the first position where w have arrived (arrived grows along p)
        by_rank.append(torch.searchsorted(arrived, arrived.new_full((N, b - a, 1), w))[..., 0])
    return torch.cat(by_rank, dim=1).gather(1, rank)


def _compact(mask: Tensor) -> tuple[Tensor, Tensor]:
    """The ``True`` positions of each row first (in order), padded to the longest row.
    Shapes: ``[N, T]`` -> indices ``[N, M]``, valid ``[N, M]``."""
    M = max(int(mask.sum(-1).max()), 1)
    idx = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[:, :M]
    return idx, mask.gather(1, idx)


def _spans(n: int, width: int) -> list[tuple[int, int]]:
    """Consecutive ``[a, b)`` covering ``range(n)`` with about ``ROWS / width`` rows each."""
    step = max(1, ROWS // max(width, 1))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


# ---- local heads -------------------------------------------------------------------------------
def local_attention(
    q: Tensor, k: Tensor, v: Tensor, *, block: int, causal: bool = False,
    scale: float | None = None, impl: str = "auto",
) -> Tensor:  # fmt: skip
    """Blocked local attention (the Routing Transformer's local heads): query ``i`` in block
    ``b = i // block`` attends keys of blocks ``b - 1`` and ``b`` (and ``b + 1`` when not
    causal; ``causal``: positions ``<= i`` only). ``T`` need not be a multiple of ``block``.

    Shapes:
        q, k ``[B, T, H, K]``, v ``[B, T, H, V]`` -> ``[B, T, H, V]``
    """
    check_impl("local_attention", impl, IMPLS)
    B, T, S, H, Hkv, K = check_qkv("local_attention", q, k, v)
    if S != T or Hkv != H:
        raise ValueError(f"local_attention: self-attention only: k and v need q's T={T} and "
                         f"H={H}, got S={S} and {Hkv} heads")  # fmt: skip
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"local_attention: block must be a positive int, got {block!r}")
    s = resolve_scale("local_attention", scale, K)
    if impl == "reference":
        p = local_weights(q, k, block=block, causal=causal, scale=s)
        return torch.einsum("bhts,bshv->bthv", p, v)
    n, look = -(-T // block), (1 if causal else 2)
    pad = n * block - T
    qb, kb, vb = (rearrange(F.pad(t, (0, 0, 0, 0, 0, pad)), "b (n i) h k -> b h n i k", i=block)
                  for t in (q, k, v))  # fmt: skip
    pos = F.pad(torch.arange(T, device=q.device), (0, pad), value=-1).view(n, block)

    kw, vw = _around(kb, 2, look, 0.0), _around(vb, 2, look, 0.0)  # [B, H, n, (2|3)·block, K]
    kpos = _around(pos, 0, look, -1)  # [n, (2|3)·block]
    allowed = (kpos[:, None, :] >= 0) & (pos[..., None] >= 0)  # [n, block, keys]
    if causal:
        allowed = allowed & (kpos[:, None, :] <= pos[..., None])
    p = _masked_softmax(torch.einsum("bhnik,bhnjk->bhnij", qb, kw) * s, allowed)
    o = rearrange(p @ vw, "b h n i v -> b (n i) h v")
    return o[:, :T]


def _around(x: Tensor, dim: int, look: int, fill: float) -> Tensor:
    """Blocks ``b - 1``, ``b`` (and ``b + 1`` when ``look == 2``) of axis ``dim`` side by side
    along axis ``dim + 1``; a missing neighbour is ``fill``."""
    edge = torch.full_like(x.narrow(dim, 0, 1), fill)
    parts = [torch.cat([edge, x.narrow(dim, 0, x.shape[dim] - 1)], dim), x]
    if look == 2:
        parts.append(torch.cat([x.narrow(dim, 1, x.shape[dim] - 1), edge], dim))
    return torch.cat(parts, dim + 1)


def local_weights(
    q: Tensor, k: Tensor, *, block: int, causal: bool = False, scale: float | None = None
) -> Tensor:
    """The dense weights of :func:`local_attention`. Shapes: ``[B, T, H, K]`` -> ``[B, H, T, T]``."""
    T, K = q.shape[1], q.shape[3]
    s = resolve_scale("local_attention", scale, K)
    qb = torch.arange(T, device=q.device) // block
    near = (qb[None, :] >= qb[:, None] - 1) & (qb[None, :] <= qb[:, None] + (0 if causal else 1))
    if causal:
        near = near & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    logits = torch.einsum("bthk,bshk->bhts", q, k) * s
    return _masked_softmax(logits, near.expand_as(logits))


# ---- FLOPs ---------------------------------------------------------------------------------------
def routing_attention_flops(B: int, H: int, K: int, V: int, T: int, C: int, w: int) -> int:
    """Similarities of ``T`` queries and ``T`` keys to ``C`` centroids, and the paper's
    attention cost: ``C`` clusters of ``w`` queries by ``w`` keys (2 FLOPs per multiply-add)."""
    return 2 * B * H * 2 * T * C * K + 2 * B * H * C * w * w * (K + V)


def local_attention_flops(B: int, H: int, K: int, V: int, T: int, block: int, causal: bool) -> int:
    """The blocked path's pairs: ``ceil(T/block)`` blocks of ``block`` queries by
    ``(2|3)·block`` keys."""
    n = math.ceil(T / block) if T else 0
    return 2 * B * H * n * block * (2 if causal else 3) * block * (K + V)
