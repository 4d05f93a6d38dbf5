"""softmax and sigmoid mixers: peer nn.MultiheadAttention, masks, GQA, streaming, config errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.ops import sigmoid_attention


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


MASKS = [
    az.Mask(causal=True, window=4),
    az.Mask.document([5, 8, 3], causal=True),
    az.Mask.document([5, 8, 3]),
    az.Mask.prefix_lm(6),
    az.Mask.block_causal(4),
]


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.name)
def test_call_time_masks_agree_across_impls(name: str, mask: az.Mask) -> None:
    impls = ["reference", "blocked"] + (["sdpa"] if name == "softmax" else [])
    x = torch.randn(2, 16, 32)
    outs = []
    for impl in impls:
        torch.manual_seed(1)
        m = az.build_mixer(name, d_model=32, num_heads=2, causal=mask.causal, impl=impl)
        outs.append(m(x, mask=mask))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)


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


def test_windowed_stream_keeps_constant_cache() -> None:
    m = az.build_mixer("sigmoid", d_model=32, causal=True, window=3).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    ys = []
    for t in range(9):
        y, state = m.step(x[:, t], state)
        ys.append(y)
        assert state.k.shape[1] == min(t + 1, 3)
    torch.testing.assert_close(torch.stack(ys, 1), m(x))


def test_sigmoid_mixer_uses_constant_bias() -> None:
    m = az.build_mixer("sigmoid", d_model=32, num_heads=2, context_len=256)
    assert m.cfg.b == pytest.approx(-math.log(256))
    x = torch.randn(1, 5, 32)
    q, k, v = m._project(x, x)
    o = sigmoid_attention(q, k, v, bias=-math.log(256), impl="reference")
    torch.testing.assert_close(m(x), m.out_proj(o.flatten(2)))
    m2 = az.build_mixer("sigmoid", d_model=32, bias=-1.5)
    assert m2.cfg.b == -1.5


def test_qk_norm_option_adds_layernorms() -> None:
    m = az.build_mixer("sigmoid", d_model=32, qk_norm=True)
    assert isinstance(m.q_norm, nn.LayerNorm) and isinstance(m.k_norm, nn.LayerNorm)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"num_heads": 5}, ValueError, "d_model=32 is not divisible by num_heads=5"),
        (
            {"num_heads": 4, "num_kv_heads": 3},
            ValueError,
            "num_heads=4 must be a multiple of num_kv_heads=3",
        ),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"num_heads": True}, TypeError, "config 'num_heads' must be int \\| None, got True"),
        (
            {"impl": "flash"},
            TypeError,
            "config 'impl' must be 'auto' \\| 'reference' \\| 'sdpa' \\| 'blocked'",
        ),
        ({"prefix": 4}, ValueError, "softmax: Mask: prefix .* requires causal=True"),
        ({"window": 0}, ValueError, "window must be >= 1"),
        ({"num_head": 4}, TypeError, "unknown config key 'num_head' \\(did you mean 'num_heads'"),
    ],
)
def test_bad_config(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("softmax", d_model=32, **kwargs)


def test_bad_inputs_name_the_argument() -> None:
    m = az.build_mixer("softmax", d_model=32)
    with pytest.raises(ValueError, match=r"softmax: x must be \[B, T, D\], got shape \(5, 32\)"):
        m(torch.randn(5, 32))
    with pytest.raises(ValueError, match="x last dim must be 32 .* got 16"):
        m(torch.randn(1, 5, 16))
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        m(torch.ones(1, 5, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="context batch 3 differs from x batch 1"):
        m(torch.randn(1, 5, 32), context=torch.randn(3, 5, 32))
    with pytest.raises(ValueError, match="context last dim must be 32"):
        m(torch.randn(1, 5, 32), context=torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match=r"documents lengths \(2, 2\) sum to 4 but there are T=5"):
        m(torch.randn(1, 5, 32), mask=az.Mask.document([2, 2]))
    with pytest.raises(
        ValueError, match="mask.causal=True disagrees with the mixer's causal=False"
    ):
        m(torch.randn(1, 5, 32), mask=az.Mask(causal=True))


def test_empty_sequence_and_nan() -> None:
    for name in ("softmax", "sigmoid"):
        m = az.build_mixer(name, d_model=32, causal=True)
        assert m(torch.randn(2, 0, 32)).shape == (2, 0, 32)
        x = torch.randn(1, 4, 32)
        x[0, 2, 0] = float("nan")
        # documented: NaN propagates (to the token and every token attending to it, and through
        # 0 * NaN in the weighted sum possibly further); it never raises
        y = m(x)
        assert torch.isnan(y[0, 2:]).all()


def test_step_errors() -> None:
    m = az.build_mixer("softmax", d_model=32, causal=False)
    with pytest.raises(ValueError, match="step\\(\\) streams the causal-self pattern"):
        m.init_state(1)
    m = az.build_mixer("softmax", d_model=32, causal=True, prefix=2)
    with pytest.raises(ValueError, match="mask 'prefix-lm'"):
        m.init_state(1)
    m = az.build_mixer("softmax", d_model=32, causal=True)
    state = m.init_state(2)
    with pytest.raises(ValueError, match="x_t batch 1 differs from the state's 2"):
        m.step(torch.randn(1, 32), state)
    with pytest.raises(ValueError, match="x_t must be \\[B, D\\]"):
        m.step(torch.randn(2, 1, 32), state)
    with pytest.raises(TypeError, match="state must come from init_state"):
        m.step(torch.randn(2, 32), {"k": 1})
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        m.init_state(0)


def test_flops_counts_masked_pairs() -> None:
    m = az.build_mixer("softmax", d_model=64, num_heads=2)
    full = m.flops(1, 100)
    causal = m.flops(1, 100, mask=az.Mask(causal=True))
    proj = 2 * (100 * 64 * 64 * 4)  # q, k, v, out projections
    assert full - proj == 2 * 2 * 100 * 100 * 64
    assert causal - proj == 2 * 2 * (100 * 101 // 2) * 64
