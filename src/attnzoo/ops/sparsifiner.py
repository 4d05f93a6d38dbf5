"""Sparsifiner's two ops: the low-rank connectivity predictor and attention over chosen keys.

Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision
Transformers", CVPR 2023. https://arxiv.org/abs/2303.13755
Code: https://github.com/lim142857/Sparsifiner (``src/models/sparsifiner.py``: ``MaskPredictor``).

Predictor (:func:`approx_attention`), per head, on reduced queries/keys ``q', k' [B, T, H, c]``:
``k'' = k'^T P`` (``P [T, r]`` a learned down-projection of the token axis), coefficients
``coef = softmax(scale · q' k'')`` over the ``r`` basis rows, kept to their ``coef_topk`` largest
entries per row (the rest set to 0, as the official inference path), and the approximate map
``approx = coef · Bs`` with the basis ``Bs [r, T]``, entries with ``|B| <= threshold`` zeroed.
:func:`connectivity` keeps each query row's ``budget`` largest entries of ``approx`` (key indices).

Attention (:func:`sparse_attention`): ``o_i = sum_{j in S_i} softmax_j(scale · q_i . k_j) v_j``
over each query's chosen keys ``S_i`` (``index [B, T, H, k]``, distinct per row); the first
``dense_rows`` queries (a cls token) attend every key.

- ``reference`` materialises the ``[B, H, T, S]`` scores and masks them to ``-inf`` outside
  ``S_i``: the spec.
- ``gather`` gathers each query's ``k`` keys and values (``[B, H, T, k, K]``) and never forms
  the ``T x S`` scores: ``O(T·k·K)`` time and memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

IMPLS = ("auto", "reference", "gather")
OP = "sparse_attention"


def approx_attention(
    qc: Tensor,
    kc: Tensor,
    down: Tensor,
    basis: Tensor,
    *,
    scale: float,
    coef_topk: int | None,
    threshold: float,
) -> tuple[Tensor, Tensor]:
    """The predicted attention map and its dense (unsparsified) coefficients.

    Args:
        qc, kc: reduced queries and keys ``q W_cq``, ``k W_ck``.
        down: the token down-projection ``P`` (``T`` rows, ``r`` columns).
        basis: the basis ``B`` (``r`` rows, ``T`` columns), before thresholding.
        scale: the coefficient logits' scale.
        coef_topk: keep each row's largest coefficients (``None``: all).
        threshold: basis entries with ``|B| <= threshold`` count as 0.

    Returns:
        ``(approx [B, H, T, T], coef [B, H, T, r])``: ``approx`` uses the sparsified
        coefficients and thresholded basis; ``coef`` is the dense softmax.

    Shapes:
        qc, kc ``[B, T, H, c]``, down ``[T, r]``, basis ``[r, T]``
    """
    _check_predictor(qc, kc, down, basis)
    kr = torch.einsum("bshc,sr->bhcr", kc, down)  # [B, H, c, r]
    coef = torch.softmax(torch.einsum("bthc,bhcr->bhtr", qc, kr) * scale, dim=-1)  # [B, H, T, r]
    sparse = coef
    if coef_topk is not None and coef_topk < coef.shape[-1]:
        val, idx = coef.topk(coef_topk, dim=-1, sorted=False)
        sparse = torch.zeros_like(coef).scatter(-1, idx, val)
    b = torch.where(basis.abs() > threshold, basis, torch.zeros_like(basis))  # [r, T]
    return sparse @ b, coef  # [B, H, T, T], [B, H, T, r]


def connectivity(approx: Tensor, budget: int) -> Tensor:
    """Each query row's ``budget`` highest-scoring keys, detached.

    Shapes:
        approx ``[B, H, T, S]`` -> index ``[B, T, H, budget]`` (int64)
    """
    S = approx.shape[-1]
    if not 1 <= budget <= S:
        raise ValueError(f"connectivity: budget must be in [1, {S}] (the key count), got {budget}")
    idx = approx.detach().topk(budget, dim=-1, sorted=False).indices  # [B, H, T, k]
    return idx.transpose(1, 2)


def _check_predictor(qc: Tensor, kc: Tensor, down: Tensor, basis: Tensor) -> None:
    if qc.ndim != 4 or kc.shape != qc.shape:
        raise ValueError(f"approx_attention: qc and kc must be [B, T, H, c] of one shape, got "
                         f"{tuple(qc.shape)} and {tuple(kc.shape)}")  # fmt: skip
    T = qc.shape[1]
    if down.ndim != 2 or down.shape[0] != T or basis.shape != (down.shape[1], T):
        raise ValueError(f"approx_attention: down must be [T={T}, r] and basis [r, T={T}], got "
                         f"{tuple(down.shape)} and {tuple(basis.shape)}")  # fmt: skip


def _check(q: Tensor, k: Tensor, v: Tensor, index: Tensor, dense_rows: int, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"{OP}: impl must be one of {IMPLS}, got {impl!r}")
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{OP}: q, k must be [B, T, H, K] of one shape and v [B, T, H, V], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    if index.dtype != torch.int64 or index.ndim != 4 or index.shape[:3] != q.shape[:3]:
        raise ValueError(f"{OP}: index must be int64 [B, T, H, k] with [B, T, H] = "
                         f"{tuple(q.shape[:3])}, got {index.dtype} {tuple(index.shape)}")  # fmt: skip
    if not 0 <= dense_rows <= q.shape[1]:
        raise ValueError(f"{OP}: dense_rows must be in [0, T={q.shape[1]}], got {dense_rows}")


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    *,
    dense_rows: int = 0,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Softmax attention of each query over its chosen keys.

    Args:
        q, k, v: queries, keys, values (self-attention: one token axis).
        index: each query's keys, distinct within a row, in ``[0, T)`` (:func:`connectivity`).
        dense_rows: the first ``dense_rows`` queries attend every key (their ``index`` rows
            are ignored).
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        impl: ``"auto"`` (``gather``), ``"reference"`` or ``"gather"``.

    Shapes:
        q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, index ``[B, T, H, k]`` -> ``[B, T, H, V]``
    """
    _check(q, k, v, index, dense_rows, impl)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if impl == "reference":
        p = sparse_weights(q, k, index, dense_rows=dense_rows, scale=scale)  # [B, H, T, S]
        return torch.einsum("bhts,bshv->bthv", p, v)
    return _gather(q, k, v, index, dense_rows, scale)


def sparse_weights(
    q: Tensor, k: Tensor, index: Tensor, *, dense_rows: int = 0, scale: float | None = None
) -> Tensor:
    """The weights ``reference`` multiplies the values by (0 outside each row's keys).

    Shapes:
        q, k ``[B, T, H, K]``, index ``[B, T, H, k]`` -> ``[B, H, T, S]``
    """
    _check(q, k, k, index, dense_rows, "reference")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bthk,bshk->bhts", q, k) * scale  # [B, H, T, S]
    allowed = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    allowed = allowed.scatter(-1, index.transpose(1, 2), True)  # [B, H, T, S]
    allowed[:, :, :dense_rows] = True
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)


def _gather(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, dense_rows: int, scale: float
) -> Tensor:
    B, T, H, K = q.shape
    n, Tq = index.shape[-1], T - dense_rows
    idx = index[:, dense_rows:].transpose(1, 2)  # [B, H, Tq, n]
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, K], [B, H, T, V]
    flat = idx.reshape(B, H, Tq * n, 1)
    kg = kh.gather(2, flat.expand(-1, -1, -1, K)).view(B, H, Tq, n, K)  # [B, H, Tq, n, K]
    V = vh.shape[-1]
    vg = vh.gather(2, flat.expand(-1, -1, -1, V)).view(B, H, Tq, n, V)  # [B, H, Tq, n, V]
    qs = q[:, dense_rows:].transpose(1, 2)  # [B, H, Tq, K]
    p = torch.softmax(torch.einsum("bhtk,bhtnk->bhtn", qs, kg) * scale, dim=-1)
    o = torch.einsum("bhtn,bhtnv->bhtv", p, vg)  # [B, H, Tq, V]
    if dense_rows:
        qd = q[:, :dense_rows].transpose(1, 2)  # [B, H, dense_rows, K]
        pd = torch.softmax(torch.einsum("bhtk,bhsk->bhts", qd, kh) * scale, dim=-1)
        o = torch.cat([torch.einsum("bhts,bhsv->bhtv", pd, vh), o], dim=2)
    return o.transpose(1, 2)  # [B, T, H, V]


def sparse_attention_flops(
    batch: int, heads: int, dk: int, dv: int, T: int, budget: int, dense_rows: int = 0
) -> int:
    """``2·B·H·pairs·(K + V)`` with ``pairs = (T - dense_rows)·budget + dense_rows·T``."""
    pairs = (T - dense_rows) * budget + dense_rows * T
    return 2 * batch * heads * pairs * (dk + dv)


def approx_attention_flops(
    batch: int, heads: int, c: int, T: int, r: int, coef_topk: int | None
) -> int:
    """The predictor after its channel projections: ``k'^T P`` (``c·T·r``), ``q' k''``
    (``T·c·r``) and ``coef · B`` (``T·nnz·T``, ``nnz = min(coef_topk, r)`` coefficients per row)."""
    nnz = r if coef_topk is None else min(coef_topk, r)
    return 2 * batch * heads * (2 * c * T * r + T * nnz * T)
