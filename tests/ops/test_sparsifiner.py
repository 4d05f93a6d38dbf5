"""Sparsifiner's ops: the predictor against a loop, attention over chosen keys against a loop and
dense attention, ``gather`` against ``reference`` forward and backward."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.sparsifiner import (
    approx_attention,
    approx_attention_flops,
    connectivity,
    sparse_attention,
    sparse_attention_flops,
)


def _qkv(B: int, T: int, H: int, K: int, V: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, d, generator=g, dtype=torch.float64) for d in (K, K, V)]


def _index(B: int, T: int, H: int, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(T, generator=g)[:n] for _ in range(B * T * H)]
    return torch.stack(rows).view(B, T, H, n)


@pytest.mark.parametrize("T,n,dense", [(13, 4, 0), (13, 4, 1), (7, 7, 0), (1, 1, 1), (10, 1, 3)])
def test_gather_matches_reference_forward_and_backward(T: int, n: int, dense: int) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(2, T, 3, 5, 6))
    index = _index(2, T, 3, n)
    outs, grads = [], []
    for impl in ("reference", "gather"):
        o = sparse_attention(q, k, v, index, dense_rows=dense, scale=0.3, impl=impl)
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(5), dtype=o.dtype)
        outs.append(o)
        grads.append(torch.autograd.grad((o * w).sum(), (q, k, v)))
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b)


def test_reference_equals_a_loop_over_chosen_keys() -> None:
    q, k, v = _qkv(1, 9, 2, 4, 3)
    index = _index(1, 9, 2, 3)
    o = sparse_attention(q, k, v, index, dense_rows=1, impl="reference")
    for t in range(9):
        for h in range(2):
            keys = torch.arange(9) if t == 0 else index[0, t, h]
            s = torch.stack([q[0, t, h] @ k[0, j, h] for j in keys.tolist()]) / 2.0
            want = (torch.softmax(s, 0)[:, None] * v[0, keys, h]).sum(0)
            torch.testing.assert_close(o[0, t, h], want)


def test_every_key_chosen_is_dense_softmax_attention() -> None:
    q, k, v = _qkv(2, 11, 3, 4, 4)
    index = _index(2, 11, 3, 11)
    dense = softmax_attention(q, k, v, impl="reference")
    for impl in ("reference", "gather"):
        torch.testing.assert_close(sparse_attention(q, k, v, index, impl=impl), dense)


def test_approx_attention_equals_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    B, T, H, c, r = 1, 8, 2, 3, 5
    qc, kc = (torch.randn(B, T, H, c, generator=g, dtype=torch.float64) for _ in range(2))
    down = torch.randn(T, r, generator=g, dtype=torch.float64)
    basis = torch.randn(r, T, generator=g, dtype=torch.float64)
    approx, coef = approx_attention(qc, kc, down, basis, scale=0.7, coef_topk=2, threshold=0.5)
    bs = basis * (basis.abs() > 0.5)
    for h in range(H):
        kr = kc[0, :, h].T @ down  # [c, r]
        for t in range(T):
            row = torch.softmax(qc[0, t, h] @ kr * 0.7, 0)
            torch.testing.assert_close(coef[0, h, t], row)
            kept = torch.zeros(r, dtype=row.dtype)
            top = row.argsort(descending=True)[:2]
            kept[top] = row[top]
            torch.testing.assert_close(approx[0, h, t], kept @ bs)


def test_connectivity_keeps_each_rows_largest() -> None:
    approx = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    idx = connectivity(approx, 4)  # [B, T, H, 4]
    assert idx.shape == (2, 10, 3, 4)
    want = approx.topk(4, dim=-1).indices.transpose(1, 2).sort(-1).values
    assert torch.equal(idx.sort(-1).values, want)
    with pytest.raises(ValueError, match="budget must be in"):
        connectivity(approx, 11)


def test_bad_calls() -> None:
    q, k, v = _qkv(1, 5, 1, 2, 2)
    idx = _index(1, 5, 1, 2)
    with pytest.raises(ValueError, match="impl must be one of"):
        sparse_attention(q, k, v, idx, impl="dense")
    with pytest.raises(ValueError, match="index must be int64"):
        sparse_attention(q, k, v, idx.int())
    with pytest.raises(ValueError, match="dense_rows must be in"):
        sparse_attention(q, k, v, idx, dense_rows=6)
    with pytest.raises(ValueError, match="q, k must be"):
        sparse_attention(q, k[:, :4], v, idx)
    with pytest.raises(ValueError, match="down must be"):
        approx_attention(q, k, torch.zeros(4, 2), torch.zeros(2, 5), scale=1.0, coef_topk=None,
                         threshold=0.0)  # fmt: skip


def test_flops() -> None:
    # 2 dense rows over 10 keys, 8 rows over 3 keys: 44 pairs, K + V = 9
    assert sparse_attention_flops(2, 3, 4, 5, 10, 3, dense_rows=2) == 2 * 2 * 3 * 44 * 9
    assert approx_attention_flops(1, 2, 4, 12, 2, 8) == 2 * 2 * (2 * 4 * 12 * 2 + 12 * 2 * 12)
