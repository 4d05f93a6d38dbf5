"""softmax_attention: every impl vs reference (fwd + bwd), reference vs torch's own math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnzoo.ops import Mask, softmax_attention
from tests.helpers import assert_all_close, fwd_bwd

LENGTHS = [1, 7, 63, 100, 257]


def masks_for(T: int, S: int) -> list[Mask]:
    out = [
        Mask.full(),
        Mask.causal_(),
        Mask.sliding_window(5),
        Mask.sliding_window(5, causal=False),
    ]
    out += [Mask.prefix_lm(max(1, T // 3)), Mask.block_causal(16)]
    # several key ranges per row, and token filters (tiles evaluated pair by pair)
    out += [Mask.global_window(2, 5), Mask.global_window(3, 4, causal=False)]
    n = min(T, S)
    out += [Mask.qk_sparse(drop_q=range(0, n, 3), drop_k=range(1, n, 4))]
    out += [Mask.hash_sparse([i % 3 for i in range(T)], kv_buckets=[j % 2 for j in range(S)])]
    if T == S and T >= 3:
        docs = [T // 3, T - 2 * (T // 3), T // 3]
        out += [Mask.document(docs), Mask.document(docs, causal=True)]
        out += [Mask.shared_question(docs[0], docs[1:]), Mask.causal_blockwise(docs)]
        out += [
            Mask.prefix_lm(2, documents=docs),
            Mask.qk_sparse(drop_k=range(0, T, 2), causal=False),
        ]
    return out


def qkv(B: int, T: int, S: int, H: int = 4, Hkv: int = 2, K: int = 16) -> list[torch.Tensor]:
    return [torch.randn(B, T, H, K), torch.randn(B, S, Hkv, K), torch.randn(B, S, Hkv, K)]


CASES = [(T, S, m) for T in LENGTHS for S in (T, max(1, T // 2 + 3)) for m in masks_for(T, S)]


@pytest.mark.parametrize("impl", ["sdpa", "blocked"])
@pytest.mark.parametrize("T,S,mask", CASES, ids=lambda c: getattr(c, "name", str(c)))
def test_impl_matches_reference(impl: str, T: int, S: int, mask: Mask) -> None:
    inputs = qkv(2, T, S)
    g = torch.randn(2, T, 4, 16)
    # blocks of 16 x 32 never divide 63/100/257: partial tiles are exercised
    kw = {"block_q": 16, "block_k": 32} if impl == "blocked" else {}
    want = fwd_bwd(
        lambda q, k, v: softmax_attention(q, k, v, mask=mask, impl="reference"), inputs, g
    )
    got = fwd_bwd(lambda q, k, v: softmax_attention(q, k, v, mask=mask, impl=impl, **kw), inputs, g)
    assert_all_close(got, want)


@pytest.mark.parametrize(
    "mask",
    [Mask.full(), Mask.causal_(), Mask.sliding_window(9), Mask.prefix_lm(20)],
    ids=lambda m: m.name,
)
def test_reference_matches_torch_math_backend(mask: Mask) -> None:
    """Peer: torch's own math SDPA (nobody here wrote it), given the dense mask."""
    q, k, v = qkv(2, 50, 50, H=4, Hkv=4)
    ours = softmax_attention(q, k, v, mask=mask, impl="reference")
    with sdpa_kernel(SDPBackend.MATH):
        theirs = F.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask.dense(50, 50)
        ).transpose(1, 2)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_gqa_equals_repeated_heads() -> None:
    q, k, v = qkv(1, 20, 20, H=6, Hkv=2)
    kk, vv = k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2)
    for impl in ("reference", "sdpa", "blocked"):
        torch.testing.assert_close(
            softmax_attention(q, k, v, mask="causal", impl=impl),
            softmax_attention(q, kk, vv, mask="causal", impl="reference"),
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("impl", ["reference", "sdpa", "blocked"])
def test_fully_masked_rows_are_zero_with_zero_grad(impl: str) -> None:
    # causal with T > S bottom-right aligned: the first T-S queries see no key
    q, k, v = qkv(1, 9, 4)
    out, dq, dk, dv = fwd_bwd(
        lambda a, b, c: softmax_attention(a, b, c, mask="causal", impl=impl), [q, k, v]
    )
    assert torch.equal(out[:, :5], torch.zeros_like(out[:, :5]))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert torch.equal(dq[:, :5], torch.zeros_like(dq[:, :5]))


@pytest.mark.parametrize("impl", ["reference", "sdpa", "blocked"])
def test_empty_sequence_gives_empty_output(impl: str) -> None:
    q, k, v = qkv(2, 0, 0)
    out = softmax_attention(q, k, v, impl=impl)
    assert out.shape == (2, 0, 4, 16)
    q, k, v = qkv(2, 3, 0)  # queries but no keys: every row is fully masked -> zeros
    assert torch.equal(softmax_attention(q, k, v, impl=impl), torch.zeros(2, 3, 4, 16))


@pytest.mark.parametrize("impl", ["reference", "sdpa", "blocked"])
def test_nan_inputs_propagate_without_crashing(impl: str) -> None:
    q, k, v = qkv(1, 10, 10)
    q[0, 3, 0, 0] = float("nan")
    row = softmax_attention(q, k, v, impl=impl)[0, 3, 0]
    if impl == "sdpa":  # documented: torch's kernels zero a query row of all-NaN scores
        assert torch.equal(row, torch.zeros_like(row))
    else:
        assert torch.isnan(row).all()
    q[0, 3, 0, 0] = 0.0
    k[0, 2, 0, 0] = float("nan")  # a NaN key reaches every query that sees it, in every path
    assert torch.isnan(softmax_attention(q, k, v, impl=impl)[0, :, 0]).all()
    k[0, 2, 0, 0] = float("inf")
    softmax_attention(q, k, v, impl=impl)  # must not raise


def test_blocked_memory_is_not_quadratic() -> None:
    """The blocked forward+backward never allocates a T x S tensor (autograd saves only O(T) tensors)."""
    q, k, v = (t.requires_grad_(True) for t in qkv(1, 512, 512, H=2, Hkv=2, K=8))
    out = softmax_attention(q, k, v, mask="causal", impl="blocked", block_q=64, block_k=64)
    saved = out.grad_fn.saved_tensors  # q, k, v, out, lse
    assert max(t.numel() for t in saved) <= 512 * 2 * 8
