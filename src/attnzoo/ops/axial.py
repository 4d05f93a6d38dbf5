"""Axial attention: softmax attention along one axis of a grid, every other axis held fixed.

Ho, Kalchbrenner, Weissenborn, Salimans, "Axial Attention in Multidimensional Transformers",
2019. https://arxiv.org/abs/1912.12180  Code: google-research ``axial/nn.py`` (``attn_nd``).

For ``q, k [B, *grid, H, K]``, ``v [B, *grid, H, V]`` and a grid axis ``a`` of length ``L``, a
*line* is the ``L`` positions that share every grid index but the ``a``-th. Each query attends to
the keys of its own line only::

    o[.., i, .., h] = sum_j softmax_j(scale * q[.., i, .., h] . k[.., j, .., h] + m_ij)
                      * v[.., j, .., h]

with ``i, j`` indices along axis ``a``, ``scale = 1/sqrt(K)`` by default, and ``m_ij = -inf`` for
``j > i`` when ``causal`` (a query sees itself and the positions before it on its line, the
official ``masked=True``), else 0. The diagonal is always visible, so no row is empty.

``axis`` counts the grid axes (``0 <= axis < n`` for ``n = q.dim() - 3`` grid axes; ``-n`` to
``-1`` count from the last), not tensor dimensions: for an image ``[B, h, w, H, K]``, ``axis=0``
attends along ``h`` (columns) and ``axis=1`` along ``w`` (rows).

- ``reference``: moves the axis next to the heads and materialises the softmax weights of every
  line, ``[B, *rest, H, L, L]`` (:func:`axial_weights`), then ``weights @ v``: the spec.
- ``sdpa`` (``auto``): folds every other grid axis into the batch (``[B·prod(rest), L, H, K]``)
  and calls :func:`attnzoo.ops.softmax.softmax_attention` with ``impl="sdpa"`` (torch's fused
  kernel; ``is_causal`` when causal), then unfolds. Nothing ``[L, L]``-sized outlives the kernel.

Time ``O(N·L·(K + V))`` per head for ``N = prod(grid)`` positions; summed over the axes of a
square ``n``-D grid that is ``O(N^(1 + 1/n))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.common import check_impl, resolve_scale
from attnzoo.ops.softmax import softmax_attention

IMPLS = ("auto", "reference", "sdpa")
OP = "axial_attention"


def axial_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    axis: int,
    causal: bool = False,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Softmax attention along grid axis ``axis`` of ``[B, *grid, H, K]`` tensors.

    Args:
        q, k, v: queries, keys, values on the same grid and heads.
        axis: the grid axis to attend along (grid axes counted from 0; negative from the last).
        causal: position ``i`` of a line sees positions ``j <= i`` of it only.
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        impl: ``"auto"`` (``sdpa``), ``"reference"`` or ``"sdpa"``.

    Shapes:
        q, k ``[B, *grid, H, K]``, v ``[B, *grid, H, V]`` -> ``[B, *grid, H, V]``
    """
    check_impl(OP, impl, IMPLS)
    a, s = _check(q, k, v, axis, causal, scale)
    # an empty grid or batch has nothing for SDPA to fold: the reference returns the empty output
    if impl == "reference" or q.numel() == 0 or v.numel() == 0:
        w = _weights(q, k, a, causal, s)  # [B, *rest, H, L, L]
        o = torch.einsum("...hts,...shv->...thv", w, _lines(v, a))  # [B, *rest, L, H, V]
        return _unlines(o, a)
    return _sdpa(q, k, v, a, causal, s)


def axial_weights(
    q: Tensor, k: Tensor, *, axis: int, causal: bool = False, scale: float | None = None
) -> Tensor:
    """The per-line softmax weights the reference multiplies ``v`` by (``rest`` is the grid
    without ``axis``, in order).

    Shapes:
        q, k ``[B, *grid, H, K]`` -> ``[B, *rest, H, L, L]`` (query index, then key index)
    """
    a, s = _check(q, k, k, axis, causal, scale)
    return _weights(q, k, a, causal, s)


def _check(
    q: Tensor, k: Tensor, v: Tensor, axis: int, causal: bool, scale: float | None
) -> tuple[int, float]:
    """Validate the inputs; returns the grid axis (0-based) and the scale."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 4:
            raise ValueError(
                f"{OP}: {name} must be [B, *grid, H, K] with at least one grid axis, "
                f"got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{OP}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{OP}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"{OP}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    if k.shape != q.shape:
        raise ValueError(f"{OP}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"{OP}: v must be q's shape but for the last dim, {tuple(q.shape[:-1])} + (V,), "
            f"got {tuple(v.shape)}"
        )
    n = q.dim() - 3
    if isinstance(axis, bool) or not isinstance(axis, int) or not -n <= axis < n:
        raise ValueError(
            f"{OP}: axis must be an int grid axis in [{-n}, {n}) for a grid of {n} axes "
            f"{tuple(q.shape[1:-2])}, got {axis!r}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got {causal!r}")
    return axis % n, resolve_scale(OP, scale, q.shape[-1])


def _lines(t: Tensor, axis: int) -> Tensor:
    """``[B, *grid, H, K] -> [B, *rest, L, H, K]``: the attended axis next to the heads."""
    return t.movedim(1 + axis, -3)


def _unlines(t: Tensor, axis: int) -> Tensor:
    """The inverse of :func:`_lines`."""
    return t.movedim(-3, 1 + axis)


def _weights(q: Tensor, k: Tensor, axis: int, causal: bool, scale: float) -> Tensor:
    s = torch.einsum("...thk,...shk->...hts", _lines(q, axis), _lines(k, axis)) * scale
    if causal:
        L = s.shape[-1]
        future = torch.ones(L, L, dtype=torch.bool, device=s.device).triu(1)  # [L, L]
        s = s.masked_fill(future, float("-inf"))
    return torch.softmax(s, dim=-1)  # [B, *rest, H, L, L]


def _sdpa(q: Tensor, k: Tensor, v: Tensor, axis: int, causal: bool, scale: float) -> Tensor:
    ql, kl, vl = (_lines(t, axis) for t in (q, k, v))  # [B, *rest, L, H, K]
    lead = ql.shape[:-3]
    # every other grid axis folds into the batch: one SDPA call over all lines
    o = softmax_attention(
        ql.reshape(-1, *ql.shape[-3:]),  # [B·rest, L, H, K]
        kl.reshape(-1, *kl.shape[-3:]),
        vl.reshape(-1, *vl.shape[-3:]),
        mask="causal" if causal else None,
        scale=scale,
        impl="sdpa",
    )  # [B·rest, L, H, V]
    return _unlines(o.reshape(*lead, *o.shape[-3:]), axis)
