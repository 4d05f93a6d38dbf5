"""aaren_scan: the identity with torch SDPA (fwd + bwd), every impl vs reference, stability, errors.

Peer convention (nobody here wrote SDPA): Aaren's score is ``s_i = scale * q . k_i`` for one
query ``q [B, H, K]`` per head. Repeating ``q`` at every position ``t`` and calling
``scaled_dot_product_attention(Q, K, V, is_causal=True, scale=scale)`` in the ``[B, H, T, K]``
layout gives, at row ``t``, ``softmax_{i<=t}(scale * q . k_i) v_i``: exactly ``aaren_scan``'s
``o_t``. Gradients are compared for ``q`` (summed over the repeated positions by autograd),
``k`` and ``v``. To hit chosen scores exactly (``|s|`` up to 80), take ``K = 1``, ``q = 1``,
``k_i = s_i`` and ``scale = 1``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnzoo.ops.aaren import aaren_flops, aaren_scan, aaren_update, combine, empty_state
from tests.helpers import assert_all_close, fwd_bwd

LENGTHS = [1, 7, 63, 100, 257]
FAST = ["scan", "recurrent", "auto"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def ours(impl: str, scale: float) -> object:
    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        s = torch.einsum("bhk,bthk->bth", q, k) * scale  # [B, T, H]
        return aaren_scan(s, v, impl=impl)  # [B, T, H, V]

    return fn


def sdpa_peer(scale: float) -> object:
    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        T = k.shape[1]
        qq = repeat(q, "b h k -> b h t k", t=T)  # the same query at every position
        kk, vv = (rearrange(t, "b t h k -> b h t k") for t in (k, v))
        with sdpa_kernel(SDPBackend.MATH):
            o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale)
        return rearrange(o, "b h t v -> b t h v")

    return fn


def qkv(B: int, T: int, H: int = 3, K: int = 8, V: int = 5) -> list[Tensor]:
    return [torch.randn(B, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)]


@pytest.mark.parametrize("impl", ["reference", "scan", "recurrent"])
@pytest.mark.parametrize("T", LENGTHS)
def test_identity_with_sdpa_causal_single_query(impl: str, T: int) -> None:
    inputs = qkv(2, T)
    g = torch.randn(2, T, 3, 5)
    scale = 8**-0.5
    want = fwd_bwd(sdpa_peer(scale), inputs, g)
    got = fwd_bwd(ours(impl, scale), inputs, g)
    assert_all_close(got, want, **TOL)


@pytest.mark.parametrize("impl", ["reference", "scan", "recurrent"])
@pytest.mark.parametrize("T", [7, 100, 257])
def test_identity_with_sdpa_large_scores(impl: str, T: int) -> None:
    """Scores spread over [-80, 80] (exp overflows fp32 without the max shift)."""
    s = (torch.rand(2, T, 3) * 2 - 1) * 80
    s[:, ::5] = 80.0  # ties at the maximum
    s[:, 1::7] = -80.0
    v = torch.randn(2, T, 3, 4)
    g = torch.randn(2, T, 3, 4)

    def peer(s: Tensor, v: Tensor) -> Tensor:
        q = torch.ones(s.shape[0], s.shape[2], 1, dtype=s.dtype)  # [B, H, 1]
        return sdpa_peer(1.0)(q, s[..., None], v)  # k_i = s_i, K = 1

    want = fwd_bwd(peer, [s, v], g)
    got = fwd_bwd(lambda s, v: aaren_scan(s, v, impl=impl), [s, v], g)
    for t in got:
        assert torch.isfinite(t).all()
    assert_all_close(got, want, **TOL)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("T", LENGTHS)
def test_impl_matches_reference(impl: str, T: int) -> None:
    s, v = torch.randn(2, T, 4) * 3, torch.randn(2, T, 4, 6)
    g = torch.randn(2, T, 4, 6)
    want = fwd_bwd(lambda s, v: aaren_scan(s, v, impl="reference"), [s, v], g)
    got = fwd_bwd(lambda s, v: aaren_scan(s, v, impl=impl), [s, v], g)
    assert_all_close(got, want, **TOL)


@pytest.mark.parametrize("impl", ["reference", "scan", "recurrent"])
def test_shift_invariance_and_last_row_is_full_softmax(impl: str) -> None:
    """Adding a constant to every score changes nothing; o_T is softmax over all tokens."""
    s, v = torch.randn(3, 50, 2, dtype=torch.float64), torch.randn(3, 50, 2, 4, dtype=torch.float64)
    o = aaren_scan(s, v, impl=impl)
    torch.testing.assert_close(aaren_scan(s + 1000.0, v, impl=impl), o, atol=1e-12, rtol=1e-12)
    last = torch.einsum("bih,bihv->bhv", torch.softmax(s, dim=1), v)
    torch.testing.assert_close(o[:, -1], last, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(o[:, 0], v[:, 0], atol=1e-12, rtol=1e-12)


def test_combine_is_associative_with_identity() -> None:
    def leaf(n: int) -> tuple[Tensor, Tensor, Tensor]:
        s = torch.randn(n, dtype=torch.float64) * 30
        return s, torch.ones_like(s), torch.randn(n, 3, dtype=torch.float64)

    a, b, c = leaf(10), leaf(10), leaf(10)
    left, right = combine(combine(a, b), c), combine(a, combine(b, c))
    for x, y in zip(left, right, strict=True):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)
    e = empty_state(1, 10, 3, device="cpu", dtype=torch.float64)
    e = (e[0][0], e[1][0], e[2][0])
    for x, y in zip(combine(e, a), a, strict=True):
        torch.testing.assert_close(x, y)


def test_update_folds_to_scan() -> None:
    s, v = torch.randn(2, 9, 3), torch.randn(2, 9, 3, 4)
    state = empty_state(2, 3, 4, device="cpu", dtype=torch.float32)
    outs = []
    for t in range(9):
        o_t, state = aaren_update(state, s[:, t], v[:, t])
        outs.append(o_t)
    torch.testing.assert_close(torch.stack(outs, 1), aaren_scan(s, v, impl="scan"), **TOL)


def test_empty_sequence() -> None:
    for impl in ("reference", "scan", "recurrent"):
        assert aaren_scan(torch.zeros(2, 0, 3), torch.zeros(2, 0, 3, 4), impl=impl).shape == (
            2,
            0,
            3,
            4,
        )


def test_flops() -> None:
    # T = 8: scan steps d = 1, 2, 4 merge 7 + 6 + 4 pairs; each merge is 3 V + 8
    assert aaren_flops(1, 8, 1, 1, "scan") == 17 * 11 + 8
    assert aaren_flops(1, 8, 1, 1, "recurrent") == 8 * 11 + 8
    assert aaren_flops(2, 100, 3, 4, "auto") == aaren_flops(2, 100, 3, 4, "scan")
    assert aaren_flops(1, 1, 1, 1, "scan") == 1


@pytest.mark.parametrize(
    "s,v,exc,match",
    [
        (torch.zeros(2, 5, 3), torch.zeros(2, 5, 4, 6), ValueError, r"s \[B, T, H\].*v \[B, T"),
        (torch.zeros(2, 5, 3), torch.zeros(2, 6, 3, 6), ValueError, r"s \(2, 5, 3\) and v"),
        (torch.zeros(2, 5), torch.zeros(2, 5, 3, 6), ValueError, r"s must have 3 dims"),
        (torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), ValueError, r"v must have 4 dims"),
        (torch.zeros(2, 5, 3, dtype=torch.long), torch.zeros(2, 5, 3, 6), TypeError, r"s must be"),
        (torch.zeros(2, 5, 3), torch.zeros(2, 5, 3, 6).double(), TypeError, r"share a dtype"),
        ("s", torch.zeros(2, 5, 3, 6), TypeError, r"s must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(s: object, v: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        aaren_scan(s, v)  # type: ignore[arg-type]


def test_bad_impl() -> None:
    with pytest.raises(ValueError, match=r"impl must be one of .*'recurrent', got 'fast'"):
        aaren_scan(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1, 1), impl="fast")
    with pytest.raises(ValueError, match=r"impl must be one of"):
        aaren_flops(1, 2, 1, 1, "fast")
