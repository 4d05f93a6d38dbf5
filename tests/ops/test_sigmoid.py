"""sigmoid_attention: blocked vs reference (fwd + bwd), peer x-transformers, the paper's bias claim."""

from __future__ import annotations

import math

import pytest
import torch
from x_transformers.attend import Attend

from attnzoo.ops import Mask, sigmoid_attention, softmax_attention
from tests.helpers import assert_all_close, fwd_bwd
from tests.ops.test_softmax import CASES, qkv


@pytest.mark.parametrize("T,S,mask", CASES, ids=lambda c: getattr(c, "name", str(c)))
def test_blocked_matches_reference(T: int, S: int, mask: Mask) -> None:
    inputs = qkv(2, T, S)
    g = torch.randn(2, T, 4, 16)
    want = fwd_bwd(
        lambda q, k, v: sigmoid_attention(q, k, v, mask=mask, impl="reference"), inputs, g
    )
    got = fwd_bwd(
        lambda q, k, v: sigmoid_attention(
            q, k, v, mask=mask, impl="blocked", block_q=16, block_k=32
        ),
        inputs,
        g,
    )
    assert_all_close(got, want)


@pytest.mark.parametrize("impl", ["reference", "blocked"])
@pytest.mark.parametrize(
    "causal,T,S", [(False, 12, 12), (True, 12, 12), (True, 5, 9), (False, 6, 11)]
)
def test_matches_x_transformers(impl: str, causal: bool, T: int, S: int) -> None:
    """Peer: x-transformers' Attend(sigmoid=True) with a constant attention bias (bottom-right causal)."""
    q, k, v = qkv(2, T, S, H=3, Hkv=3, K=8)
    b = -math.log(S)
    peer = Attend(sigmoid=True, causal=causal)

    def theirs(a: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        out, _ = peer(*(t.transpose(1, 2) for t in (a, c, d)), attn_bias=torch.tensor(b))
        return out.transpose(1, 2)

    g = torch.randn(2, T, 3, 8)
    ours = fwd_bwd(
        lambda a, c, d: sigmoid_attention(
            a, c, d, mask=Mask(causal=causal), impl=impl, block_q=4, block_k=4
        ),
        [q, k, v],
        g,
    )
    assert_all_close(ours, fwd_bwd(theirs, [q, k, v], g))


def test_explicit_bias_and_scale() -> None:
    q, k, v = qkv(1, 6, 6, H=2, Hkv=2, K=4)
    out = sigmoid_attention(q, k, v, bias=0.5, scale=0.25)
    s = torch.einsum("bthk,bshk->bhts", q, k) * 0.25 + 0.5
    torch.testing.assert_close(out, torch.einsum("bhts,bshv->bthv", torch.sigmoid(s), v))


def test_bias_keeps_output_norm_near_softmax_at_init() -> None:
    """The paper's observation: with b = -log n the output norm at init is comparable to softmax
    attention; with b = 0 it grows like n/2."""
    n = 1024
    q, k, v = (torch.randn(1, n, 4, 64) for _ in range(3))
    soft = softmax_attention(q, k, v).norm()
    with_bias = sigmoid_attention(q, k, v).norm()
    no_bias = sigmoid_attention(q, k, v, bias=0.0).norm()
    assert 0.3 < float(with_bias / soft) < 3.0
    assert float(no_bias / soft) > 100.0


def test_bias_errors() -> None:
    q, k, v = qkv(1, 3, 3)
    with pytest.raises(ValueError, match="bias must be a finite float or None, got inf"):
        sigmoid_attention(q, k, v, bias=float("inf"))


def test_nan_propagates_and_empty_is_empty() -> None:
    q, k, v = qkv(1, 5, 5)
    q[0, 1, 0, 0] = float("nan")
    for impl in ("reference", "blocked"):
        assert torch.isnan(sigmoid_attention(q, k, v, impl=impl)[0, 1, 0]).all()
        assert sigmoid_attention(*qkv(1, 0, 0), impl=impl).shape == (1, 0, 4, 16)
