"""softmax mixer: every impl (``reference``, ``sdpa``, ``blocked``) equal to torch's
``nn.MultiheadAttention`` with copied weights (outputs and input gradients; self and cross,
causal and not), the fast paths equal to the reference under each call-time mask kind, a config
mask equal to the call-time mask, grouped-query heads (fewer k/v parameters, a streaming cache),
empty sequences and NaN, a prefix-LM mask refusing to stream, FLOPs of the masked pairs, config
errors and bad call-time masks. (Call errors, streaming errors, step == forward, attention maps
and the gate: tests/contract.)

Also the shared checks of the attention blocks (``MASKS``, :func:`check_mask_matches_reference`,
:func:`check_empty_sequence_and_nan`), which tests/mixers/seq/test_sigmoid.py runs for sigmoid.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnzoo as az


def mha_peer(m: az.Mixer, d_model: int, heads: int) -> nn.MultiheadAttention:
    """torch's MultiheadAttention with our weights copied in (q, k, v stacked in in_proj)."""
    peer = nn.MultiheadAttention(d_model, heads, bias=True, batch_first=True)
    with torch.no_grad():
        wk, wv = m.kv_proj.weight.chunk(2, dim=0)
        peer.in_proj_weight.copy_(torch.cat([m.q_proj.weight, wk, wv]))
        bk, bv = m.kv_proj.bias.chunk(2)
        peer.in_proj_bias.copy_(torch.cat([m.q_proj.bias, bk, bv]))
        peer.out_proj.weight.copy_(m.out_proj.weight)
        peer.out_proj.bias.copy_(m.out_proj.bias)
    return peer


@pytest.mark.parametrize("impl", ["reference", "sdpa", "blocked"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_softmax_matches_torch_multihead_attention(impl: str, causal: bool, cross: bool) -> None:
    m = az.build_mixer("softmax", d_model=48, num_heads=3, qkv_bias=True, causal=causal, impl=impl)
    peer = mha_peer(m, 48, 3)
    x = torch.randn(2, 13, 48, requires_grad=True)
    ctx = torch.randn(2, 13, 48) if cross else None
    src = x if ctx is None else ctx
    attn_mask = ~az.Mask(causal=True).dense(13, 13) if causal else None  # True = blocked in torch
    want, _ = peer(x, src, src, attn_mask=attn_mask, need_weights=False)
    got = m(x, context=ctx)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad((got * g).sum(), x)
    (gx_peer,) = torch.autograd.grad((want * g).sum(), x)
    torch.testing.assert_close(gx, gx_peer, atol=1e-5, rtol=1e-5)


# ---- shared with sigmoid --------------------------------------------------------------------
MASKS = [
    az.Mask(causal=True, window=4),
    az.Mask.document([5, 8, 3], causal=True),
    az.Mask.document([5, 8, 3]),
    az.Mask.prefix_lm(6),
    az.Mask.block_causal(4),
]


def check_mask_matches_reference(name: str, impl: str, mask: az.Mask) -> None:
    """The ``impl`` path of ``name`` equals its ``reference`` under the call-time ``mask``
    (same weights)."""
    x = torch.randn(2, 16, 32)
    ref = az.build_mixer(name, d_model=32, num_heads=2, causal=mask.causal, impl="reference")
    m = az.build_mixer(name, d_model=32, num_heads=2, causal=mask.causal, impl=impl)
    m.load_state_dict(ref.state_dict())
    torch.testing.assert_close(m(x, mask=mask), ref(x, mask=mask), atol=1e-5, rtol=1e-5)


def check_empty_sequence_and_nan(name: str) -> None:
    """An empty sequence gives an empty output; a NaN propagates and never raises."""
    m = az.build_mixer(name, d_model=32, causal=True)
    assert m(torch.randn(2, 0, 32)).shape == (2, 0, 32)
    x = torch.randn(1, 4, 32)
    x[0, 2, 0] = float("nan")
    # documented: NaN propagates (to the token and every token attending to it, and through
    # 0 * NaN in the weighted sum possibly further); it never raises
    y = m(x)
    assert torch.isnan(y[0, 2:]).all()


@pytest.mark.parametrize("impl", az.get_spec("softmax").fast_impls)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.name)
def test_call_time_masks_match_the_reference(impl: str, mask: az.Mask) -> None:
    check_mask_matches_reference("softmax", impl, mask)


def test_empty_sequence_and_nan() -> None:
    check_empty_sequence_and_nan("softmax")


# ---- softmax only ---------------------------------------------------------------------------
def test_config_mask_equals_call_time_mask() -> None:
    torch.manual_seed(2)
    a = az.build_mixer("softmax", d_model=32, causal=True, window=3)
    b = az.build_mixer("softmax", d_model=32, causal=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 10, 32)
    torch.testing.assert_close(a(x), b(x, mask=az.Mask.sliding_window(3)))


def test_gqa_mixer_has_fewer_kv_parameters_and_streams() -> None:
    m = az.build_mixer("softmax", d_model=64, num_heads=4, num_kv_heads=2, causal=True)
    assert m.kv_proj.weight.shape == (2 * 2 * 16, 64)
    x = torch.randn(1, 6, 64, dtype=torch.float64)
    m = m.double()
    state = m.init_state(1, dtype=torch.float64)
    ys = []
    for t in range(6):
        y, state = m.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), m(x))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"num_heads": 5}, ValueError, "d_model=32 is not divisible by num_heads=5"),
        (
            {"num_heads": 4, "num_kv_heads": 3},
            ValueError,
            "num_heads=4 must be a multiple of num_kv_heads=3",
        ),
        ({"num_heads": True}, TypeError, "config 'num_heads' must be int \\| None, got True"),
        (
            {"impl": "flash"},
            TypeError,
            "config 'impl' must be 'auto' \\| 'reference' \\| 'sdpa' \\| 'blocked'",
        ),
        ({"prefix": 4}, ValueError, "softmax: Mask: prefix .* requires causal=True"),
        ({"window": 0}, ValueError, "window must be >= 1"),
    ],
)
def test_bad_config(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("softmax", d_model=32, **kwargs)


def test_bad_call_time_masks_are_named() -> None:
    m = az.build_mixer("softmax", d_model=32)
    with pytest.raises(ValueError, match=r"documents lengths \(2, 2\) sum to 4 but there are T=5"):
        m(torch.randn(1, 5, 32), mask=az.Mask.document([2, 2]))
    with pytest.raises(
        ValueError, match="mask.causal=True disagrees with the mixer's causal=False"
    ):
        m(torch.randn(1, 5, 32), mask=az.Mask(causal=True))


def test_prefix_lm_mask_cannot_stream() -> None:
    m = az.build_mixer("softmax", d_model=32, causal=True, prefix=2)
    with pytest.raises(ValueError, match="mask 'prefix-lm'"):
        m.init_state(1)


def test_flops_counts_masked_pairs() -> None:
    m = az.build_mixer("softmax", d_model=64, num_heads=2)
    full = m.flops(1, 100)
    causal = m.flops(1, 100, mask=az.Mask(causal=True))
    proj = 2 * (100 * 64 * 64 * 4)  # q, k, v, out projections
    assert full - proj == 2 * 2 * 100 * 100 * 64
    assert causal - proj == 2 * 2 * (100 * 101 // 2) * 64
