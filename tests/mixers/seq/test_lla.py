"""lla mixer: the softmax mixer (SDPA) as the limit ``ridge -> inf`` (same weights, causal and
not), the ``blocked`` path equal to the reference (outputs and parameter gradients), the ridge
changing the output, step == forward with a growing KV cache, a cross call with its own context
width, FLOPs growing with length and below the full mask's, config errors and the window masks
it refuses. (Call errors, streaming errors, step == forward and the gate: tests/contract.)
"""

from __future__ import annotations

import pytest
import torch

import attnzoo as az
from attnzoo.mixers.common import KVCache
from attnzoo.mixers.seq.lla import LocalLinearAttention
from attnzoo.testing import stream


def build(**kw: object) -> LocalLinearAttention:
    m = az.build_mixer("lla", d_model=kw.pop("d_model", 32), **kw)
    assert isinstance(m, LocalLinearAttention)
    return m


@pytest.mark.parametrize("causal", [False, True])
def test_huge_ridge_equals_softmax_mixer(causal: bool) -> None:
    """Same weights: lla with ridge 1e8 is the softmax mixer (SDPA) up to O(1/ridge)."""
    m = build(d_model=48, num_heads=3, num_kv_heads=1, causal=causal, ridge=1e8, block_size=5)
    soft = az.build_mixer("softmax", d_model=48, num_heads=3, num_kv_heads=1, causal=causal)
    soft.load_state_dict(m.state_dict())
    x = torch.randn(2, 13, 48)
    torch.testing.assert_close(m(x), soft(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_blocked_matches_reference_forward_and_backward(causal: bool) -> None:
    m = build(d_model=32, num_heads=2, causal=causal, ridge=0.3, qk_norm=True, block_size=4)
    ref = build(d_model=32, num_heads=2, causal=causal, ridge=0.3, qk_norm=True, impl="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 11, 32)
    got, want = m(x), ref(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    ga = torch.autograd.grad((got * g).sum(), list(m.parameters()))
    gb = torch.autograd.grad((want * g).sum(), list(ref.parameters()))
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_mixer_matches_float32(dtype: torch.dtype) -> None:
    """A bfloat16 / float16 lla mixer runs (its solve in float32) and stays within the dtype's
    rounding of the float32 mixer on the same rounded weights and input."""
    m = build(d_model=32, num_heads=2, causal=True, block_size=4).to(dtype)
    m32 = build(d_model=32, num_heads=2, causal=True, block_size=4)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    x = torch.randn(2, 11, 32).to(dtype)
    y = m(x)
    assert y.dtype == dtype
    tol = {torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(y.float(), m32(x.float()), atol=tol, rtol=tol)


def test_ridge_changes_the_output() -> None:
    a, b = build(causal=True, ridge=0.05), build(causal=True, ridge=50.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 32)
    assert (a(x) - b(x)).abs().max() > 1e-3


def test_step_equals_forward_with_growing_cache() -> None:
    m = build(d_model=64, num_heads=4, causal=True, block_size=3).double()
    x = torch.randn(2, 10, 64, dtype=torch.float64)
    y = m(x)
    got, state = stream(m, x, dtype=torch.float64)
    assert isinstance(state, KVCache) and state.k.shape[1] == 10
    torch.testing.assert_close(got, y, atol=1e-10, rtol=1e-10)


def test_noncausal_cross() -> None:
    m = build(context_dim=24)
    y = m(torch.randn(2, 6, 32), context=torch.randn(2, 9, 24))
    assert y.shape == (2, 6, 32) and torch.isfinite(y).all()


def test_flops_grow_with_length() -> None:
    spec = az.get_spec("lla")
    m = build(causal=True)
    assert 0 < m.flops(1, 16) < m.flops(1, 32) < spec.flops(m.cfg, 1, 32, mask=az.Mask())


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"window": 4}, "window=4 is not supported"),
    ],
)
def test_bad_config(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**kw)


def test_bad_impl_and_mask() -> None:
    with pytest.raises((TypeError, ValueError), match="impl"):
        build(impl="chunk")
    m = build(causal=True)
    with pytest.raises(ValueError, match="does not support mask kind"):
        m(torch.randn(1, 5, 32), mask=az.Mask(causal=True, window=2))
