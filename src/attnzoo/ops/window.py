"""N-D windowed attention over channels-last grids: pad, partition, attend, merge.

One op for every windowed block (DaViT and Swin-style windows, HaloNet's haloed blocks, MOAT's
windows, YOLOv12's strips as 1-D windows, TNT's words, and the windowed blocks to come):

- :func:`pad_grid` / :func:`crop_grid`: **the padding policy.** A grid whose side is not a
  multiple of the window is padded with zeros at the *end* of that axis (bottom / right / back),
  never split unevenly, and outputs are cropped back. A block that pads its *input* before
  projecting (timm's DaViT and Swin do) makes padded tokens ordinary keys (``k = b_k``,
  ``v = b_v``) and passes no ``sizes``; a block that passes ``sizes`` (the unpadded grid) has
  every padded key removed from the softmax, so a window at the border attends only to real
  tokens (YOLOv12's ragged last strip is exactly this).
- :func:`partition` / :func:`merge`: ``[B, *S, C] <-> [B·nW, n, C]``; windows in row-major
  order of their grid, tokens row-major inside a window (``n = prod(window)``). ``dilated=True``
  makes grid ("remote") windows instead: window ``j`` holds the tokens whose position is ``j``
  modulo the window count along every axis (stride ``S_i / w_i``), as EMO's remote branch and
  MaxViT's grid attention use.
- :func:`window_attention`: softmax attention inside each window, with an optional ``halo``
  (each window's keys extend ``halo`` tokens past the window on every side, over a key grid
  zero-padded by ``halo``: HaloNet) and an optional additive ``bias`` per window (relative
  positions), given as a tensor or computed from each window's queries.

``impl="reference"`` is the spec: dense ``[N, M]`` attention over the whole (padded) grid where
query ``i`` sees key ``j`` only when ``j`` lies in ``i``'s (haloed) window, with the window's
bias written into the dense logits, from index tables built by explicit loops over the windows
(no reshapes shared with the fast path). ``impl="sdpa"`` partitions and calls
``F.scaled_dot_product_attention`` per chunk of windows. :func:`window_weights` returns the
reference's weights scattered over the grid: the attention maps of a windowed block.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("auto", "reference", "sdpa")
OP = "window_attention"
# bias elements per SDPA call of the fast path (8 MB in fp32): chunks of windows keep a
# query-dependent bias from existing for every window at once
CHUNK_ELEMENTS = 1 << 21

Bias = Tensor | Callable[[Tensor], Tensor] | None


def _window(op: str, window: int | Sequence[int], rank: int) -> tuple[int, ...]:
    # a torch.SymInt is a size traced by torch.export / torch.compile with a dynamic shape
    w = (window,) * rank if isinstance(window, (int, torch.SymInt)) else tuple(window)
    if len(w) != rank or any(
        isinstance(s, bool) or not isinstance(s, (int, torch.SymInt)) or s < 1 for s in w
    ):
        raise ValueError(
            f"{op}: window must be {rank} positive ints (one per grid axis), got {window!r}"
        )
    return w


def pad_grid(x: Tensor, window: int | Sequence[int]) -> Tensor:
    """Zero-pad every grid axis at its end up to a multiple of the window.

    Shapes: x ``[B, *S, C]`` -> ``[B, *S', C]`` with ``S'_i = ceil(S_i / w_i) * w_i``."""
    w = _window("pad_grid", window, x.dim() - 2)
    pad: list[int] = [0, 0]  # F.pad lists the last axis first: channels, then grid axes reversed
    for size, side in zip(reversed(x.shape[1:-1]), reversed(w), strict=True):
        pad += [0, -size % side]
    return F.pad(x, pad) if any(pad) else x


def crop_grid(x: Tensor, sizes: Sequence[int]) -> Tensor:
    """The first ``sizes`` tokens of every grid axis. Shapes: ``[B, *S', C] -> [B, *sizes, C]``."""
    if tuple(x.shape[1:-1]) == tuple(sizes):
        return x
    return x[(slice(None), *(slice(0, s) for s in sizes))]


def partition(x: Tensor, window: int | Sequence[int], *, dilated: bool = False) -> Tensor:
    """Cut a grid whose sides are multiples of the window into windows.

    Shapes: x ``[B, *S, C]`` -> ``[B·nW, n, C]`` (``nW = prod(S_i / w_i)``, ``n = prod(w_i)``)."""
    B, sizes, C = x.shape[0], x.shape[1:-1], x.shape[-1]
    w = _window("partition", window, len(sizes))
    _check_divisible("partition", sizes, w)
    counts = [s // k for s, k in zip(sizes, w, strict=True)]
    d = len(w)
    # [B, n1, w1, n2, w2, ...] (block) or [B, w1, n1, w2, n2, ...] (dilated: position = a*n + j)
    split = [v for c, k in zip(counts, w, strict=True) for v in ((k, c) if dilated else (c, k))]
    t = x.reshape(B, *split, C)
    count_axes = [1 + 2 * i + (1 if dilated else 0) for i in range(d)]
    inner_axes = [1 + 2 * i + (0 if dilated else 1) for i in range(d)]
    t = t.permute(0, *count_axes, *inner_axes, 2 * d + 1)
    return t.reshape(B * math.prod(counts), math.prod(w), C)


def merge(
    t: Tensor, sizes: Sequence[int], window: int | Sequence[int], *, dilated: bool = False
) -> Tensor:
    """The inverse of :func:`partition` for a grid of ``sizes``.

    Shapes: t ``[B·nW, n, C]`` -> ``[B, *sizes, C]``."""
    sizes = tuple(sizes)
    w = _window("merge", window, len(sizes))
    _check_divisible("merge", sizes, w)
    counts = [s // k for s, k in zip(sizes, w, strict=True)]
    d, C = len(w), t.shape[-1]
    B = t.shape[0] // math.prod(counts)
    u = t.reshape(B, *counts, *w, C)  # [B, n1..nd, w1..wd, C]
    order = [a for i in range(d) for a in ((1 + d + i, 1 + i) if dilated else (1 + i, 1 + d + i))]
    return u.permute(0, *order, 2 * d + 1).reshape(B, *sizes, C)


def _check_divisible(op: str, sizes: Sequence[int], w: Sequence[int]) -> None:
    if any(s % k for s, k in zip(sizes, w, strict=True)):
        raise ValueError(
            f"{op}: grid sizes {tuple(sizes)} must be multiples of the window {tuple(w)} "
            "(pad_grid pads them)"
        )


def key_windows(x: Tensor, window: Sequence[int], halo: int) -> Tensor:
    """Overlapping key windows: each window extended by ``halo`` on every side, over the grid
    zero-padded by ``halo``. Shapes: x ``[B, *S, C]`` (S multiples of the window) ->
    ``[B·nW, prod(w_i + 2·halo), C]``, windows and tokens row-major as in :func:`partition`."""
    if halo == 0:
        return partition(x, window)
    B, sizes, C = x.shape[0], x.shape[1:-1], x.shape[-1]
    d = len(sizes)
    t = F.pad(x, [0, 0] + [halo, halo] * d)  # [B, *(S_i + 2 halo), C]
    for i, k in enumerate(window):
        t = t.unfold(1 + i, k + 2 * halo, k)  # a new trailing axis per grid axis
    # [B, n1..nd, C, e1..ed] -> [B·nW, prod(e), C]
    t = t.movedim(1 + d, -1)
    return t.reshape(B * math.prod(t.shape[1 : 1 + d]), -1, C)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | Sequence[int],
    *,
    halo: int = 0,
    sizes: Sequence[int] | None = None,
    bias: Bias = None,
    scale: float | None = None,
    dilated: bool = False,
    impl: str = "auto",
) -> Tensor:
    """Softmax attention inside the windows of a grid (see the module docstring).

    Args:
        q, k, v: per-token heads on a grid whose sides are multiples of ``window``
            (:func:`pad_grid`).
        window: window side per grid axis (an int for all axes).
        halo: tokens each window's keys extend past it on every side (zero keys beyond the
            grid, as HaloNet pads its projected keys); 0 for plain windows.
        sizes: the unpadded grid; keys beyond it (beyond it plus the halo) are masked out.
            ``None``: every position of the grid is a key.
        bias: additive logits per window: a tensor broadcastable to ``[B·nW, H, n, n_k]``
            (``n_k = prod(w_i + 2·halo)``), or a function of the partitioned queries
            ``[G, H, n, K]`` (a chunk of the ``B·nW`` windows, in order) returning ``[G, H, n,
            n_k]``.
        scale: logit scale; ``None`` means ``K**-0.5``.
        dilated: grid ("remote") windows instead of contiguous blocks (no halo).
        impl: ``auto`` (``sdpa``) | ``reference`` | ``sdpa``.

    Shapes:
        q, k ``[B, *S, H, K]``, v ``[B, *S, H, V]`` -> ``[B, *S, H, V]``
    """
    w, scale_ = _check(q, k, v, window, halo, sizes, dilated, impl, scale)
    if impl == "reference":
        a = _dense_weights(q, k, w, halo, sizes, bias, scale_, dilated)  # [B, H, N, M]
        B, grid, H, V = q.shape[0], q.shape[1:-2], q.shape[-2], v.shape[-1]
        o = a @ _key_tokens(v, halo).transpose(1, 2)  # [B, H, N, V]
        return o.transpose(1, 2).reshape(B, *grid, H, V)
    return _sdpa(q, k, v, w, halo, sizes, bias, scale_, dilated)


def window_weights(
    q: Tensor,
    k: Tensor,
    window: int | Sequence[int],
    *,
    halo: int = 0,
    sizes: Sequence[int] | None = None,
    bias: Bias = None,
    scale: float | None = None,
    dilated: bool = False,
) -> Tensor:
    """The weights of :func:`window_attention`, dense over the grid (zero outside a query's
    window). Keys are the grid's tokens, or with a halo the tokens of the grid zero-padded by
    ``halo`` on every side (``M = prod(S_i + 2·halo)``).

    Shapes: q, k ``[B, *S, H, K]`` -> ``[B, H, N, M]`` (``N = prod(S)``, row-major)."""
    w, scale_ = _check(q, k, k, window, halo, sizes, dilated, "reference", scale)
    return _dense_weights(q, k, w, halo, sizes, bias, scale_, dilated)


def _check(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | Sequence[int],
    halo: int,
    sizes: Sequence[int] | None,
    dilated: bool,
    impl: str,
    scale: float | None,
) -> tuple[tuple[int, ...], float]:
    if impl not in IMPLS:
        raise ValueError(f"{OP}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() < 4:
            raise ValueError(f"{OP}: {name} must be [B, *S, H, K] with at least one grid axis, "
                             f"got {getattr(t, 'shape', t)}")  # fmt: skip
    if q.shape[:-1] != k.shape[:-1] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{OP}: q, k, v must share [B, *S, H] (and q, k the width K), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    grid = tuple(q.shape[1:-2])
    w = _window(OP, window, len(grid))
    _check_divisible(OP, grid, w)
    if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
        raise ValueError(f"{OP}: halo must be an int >= 0, got {halo!r}")
    if dilated and halo:
        raise ValueError(f"{OP}: dilated (grid) windows take no halo, got halo={halo}")
    if sizes is not None and (
        len(sizes) != len(grid) or any(not 0 < s <= g for s, g in zip(sizes, grid, strict=True))
    ):
        raise ValueError(f"{OP}: sizes must give {len(grid)} sides within the grid {grid}, "
                         f"got {tuple(sizes)}")  # fmt: skip
    K = q.shape[-1]
    return w, (K**-0.5 if scale is None else float(scale))


# ---- reference: dense attention with index tables from explicit loops ----------------------
def _index_tables(
    grid: Sequence[int], w: Sequence[int], halo: int, dilated: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """Per window (row-major), the flat indices of its query tokens in the grid and of its key
    tokens in the key grid (the grid zero-padded by ``halo``), each row-major in the window."""
    counts = [g // k for g, k in zip(grid, w, strict=True)]
    key_grid = [g + 2 * halo for g in grid]
    queries, keys = [], []
    for cell in itertools.product(*(range(c) for c in counts)):
        qs, ks = [], []
        for off in itertools.product(*(range(k) for k in w)):
            pos = [
                o * c + j if dilated else j * k + o
                for j, o, k, c in zip(cell, off, w, counts, strict=True)
            ]
            qs.append(_flat(pos, grid))
        for off in itertools.product(*(range(k + 2 * halo) for k in w)):
            if dilated:
                pos = [o * c + j for j, o, c in zip(cell, off, counts, strict=True)]
            else:  # key-grid coordinates: the window's start (shifted by the halo) minus the halo
                pos = [j * k + o for j, o, k in zip(cell, off, w, strict=True)]
            ks.append(_flat(pos, key_grid))
        queries.append(qs)
        keys.append(ks)
    return queries, keys


def _flat(pos: Sequence[int], sizes: Sequence[int]) -> int:
    i = 0
    for p, s in zip(pos, sizes, strict=True):
        i = i * s + p
    return i


def _key_tokens(x: Tensor, halo: int) -> Tensor:
    """``[B, *S, H, K] -> [B, M, H, K]``: the key grid (zero-padded by ``halo``), flattened."""
    d = x.dim() - 3
    if halo:
        x = F.pad(x, [0, 0, 0, 0] + [halo, halo] * d)
    return x.reshape(x.shape[0], -1, *x.shape[-2:])


def _dense_weights(
    q: Tensor,
    k: Tensor,
    w: tuple[int, ...],
    halo: int,
    sizes: Sequence[int] | None,
    bias: Bias,
    scale: float,
    dilated: bool,
) -> Tensor:
    B, grid, H, K = q.shape[0], tuple(q.shape[1:-2]), q.shape[-2], q.shape[-1]
    qt = q.reshape(B, -1, H, K).transpose(1, 2)  # [B, H, N, K]
    kt = _key_tokens(k, halo).transpose(1, 2)  # [B, H, M, K]
    N, M = qt.shape[2], kt.shape[2]
    queries, keys = _index_tables(grid, w, halo, dilated)
    qi = torch.tensor(queries, device=q.device)  # [nW, n]
    ki = torch.tensor(keys, device=q.device)  # [nW, n_k]
    nW, n, nk = qi.shape[0], qi.shape[1], ki.shape[1]
    logits = (qt @ kt.transpose(-1, -2)) * scale  # [B, H, N, M]
    allowed = torch.zeros(N, M, dtype=torch.bool, device=q.device)
    rows, cols = qi[:, :, None].expand(nW, n, nk), ki[:, None, :].expand(nW, n, nk)
    allowed[rows, cols] = True
    if sizes is not None:  # keys beyond the real grid plus its halo border do not exist
        key_grid = [g + 2 * halo for g in grid]
        coords = torch.stack(torch.unravel_index(torch.arange(M, device=q.device), key_grid))
        limit = torch.tensor([s + 2 * halo for s in sizes], device=q.device)[:, None]
        allowed &= (coords < limit).all(0)[None, :]
    if bias is not None:
        qw = qt.reshape(B, H, N, K)[:, :, qi]  # [B, H, nW, n, K]: the partitioned queries
        qw = qw.permute(0, 2, 1, 3, 4).reshape(B * nW, H, n, K)
        b = bias(qw) if callable(bias) else bias
        b = torch.broadcast_to(b, (B * nW, H, n, nk)).reshape(B, nW, H, n, nk)
        dense = logits.new_zeros(B, H, N, M)
        dense[:, :, rows, cols] = b.permute(0, 2, 1, 3, 4)
        logits = logits + dense
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)


# ---- fast path: partition and SDPA ----------------------------------------------------------
def _sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w: tuple[int, ...],
    halo: int,
    sizes: Sequence[int] | None,
    bias: Bias,
    scale: float,
    dilated: bool,
) -> Tensor:
    B, grid, H, K, V = q.shape[0], tuple(q.shape[1:-2]), q.shape[-2], q.shape[-1], v.shape[-1]

    def heads(t: Tensor, width: int) -> Tensor:  # [G, n, H*width] -> [G, H, n, width]
        return t.unflatten(-1, (H, width)).transpose(1, 2)

    def keys(t: Tensor, width: int) -> Tensor:  # [B, *S, H, width] -> [G, H, n_k, width]
        t = t.flatten(-2)
        return heads(partition(t, w, dilated=True) if dilated else key_windows(t, w, halo), width)

    qw = heads(partition(q.flatten(-2), w, dilated=dilated), K)  # [G, H, n, K]
    kw, vw = keys(k, K), keys(v, V)
    mask = _key_mask(grid, w, halo, sizes, q.device, dilated)  # [nW, 1, 1, n_k] or None
    if mask is not None:
        mask = mask.repeat(B, 1, 1, 1)
    G, n, nk = qw.shape[0], qw.shape[2], kw.shape[2]
    # chunks of windows only when a [g, H, n, n_k] logit bias must be made per chunk (a bias
    # computed from the queries, or a shared one plus the padding mask); else one call. Under
    # torch.export one call too: a Python loop over the window count G would fix the grid size
    made = callable(bias) or (bias is not None and mask is not None)
    chunked = made and not torch.compiler.is_exporting()
    step = max(1, CHUNK_ELEMENTS // (H * n * nk)) if chunked else G
    outs = []
    for g in range(0, G, step) if chunked else (0,):
        qc = qw[g : g + step]
        add = None
        if bias is not None:
            add = bias(qc) if callable(bias) else _rows(bias, g, step, G)
        if mask is not None:
            m = torch.zeros(mask[g : g + step].shape, dtype=q.dtype, device=q.device)
            m = m.masked_fill(~mask[g : g + step], float("-inf"))
            add = m if add is None else add + m
        outs.append(F.scaled_dot_product_attention(qc, kw[g : g + step], vw[g : g + step],
                                                   attn_mask=add, scale=scale))  # fmt: skip
    o = outs[0] if len(outs) == 1 else torch.cat(outs)  # [G, H, n, V]
    o = merge(o.transpose(1, 2).flatten(-2), grid, w, dilated=dilated)  # [B, *S, H*V]
    return o.unflatten(-1, (H, V))


def _rows(bias: Tensor, g: int, step: int, G: int) -> Tensor:
    """Rows ``g:g+step`` of a bias broadcastable to ``[G, ...]``."""
    return (
        bias
        if bias.dim() < 4 or bias.shape[0] == 1
        else torch.broadcast_to(bias, (G, *bias.shape[1:]))[g : g + step]
    )


def _key_mask(
    grid: Sequence[int],
    w: Sequence[int],
    halo: int,
    sizes: Sequence[int] | None,
    device: torch.device,
    dilated: bool,
) -> Tensor | None:
    """``[nW, 1, 1, n_k]``: which keys of each window exist (``None`` when all do)."""
    if sizes is None or tuple(sizes) == tuple(grid) and halo == 0:
        return None
    counts = [g // k for g, k in zip(grid, w, strict=True)]
    # the last key of an axis is at c*k + 2*halo - 1 (dilated: c*k - 1, no halo): every key
    # exists when c*k <= s on every axis (decided on sizes, not tensor values: export traces it)
    if all(c * k <= s for c, k, s in zip(counts, w, sizes, strict=True)):
        return None
    ok_axes = []
    for c, k, s in zip(counts, w, sizes, strict=True):
        if dilated:  # offset o of window j holds position o*c + j
            pos = (
                torch.arange(k, device=device)[None, :] * c
                + torch.arange(c, device=device)[:, None]
            )
        else:  # key-grid coordinate of offset o in window j: j*k + o (the halo shifts both)
            pos = torch.arange(c, device=device)[:, None] * k + torch.arange(
                k + 2 * halo, device=device
            )
        ok_axes.append(pos < s + 2 * halo)  # [c, e]
    ok = ok_axes[0]
    for nxt in ok_axes[1:]:  # outer product over axes, windows and offsets row-major
        ok = ok[:, None, :, None] & nxt[None, :, None, :]
        ok = ok.reshape(ok.shape[0] * ok.shape[1], ok.shape[2] * ok.shape[3])
    return ok[:, None, None, :]
