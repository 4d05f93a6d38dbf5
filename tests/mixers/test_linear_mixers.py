"""linear and lightning mixers: composition, peers, slopes, streaming, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.mixers.seq.lightning import alibi_slopes, lightning_slopes
from attnzoo.ops.linear import linear_attention

IMPLS = ["reference", "chunk", "native", "recurrent"]


# lightning is causal only (the paper defines no other form)
NAME_CAUSAL = [("linear", False), ("linear", True), ("lightning", True)]


@pytest.mark.parametrize("name,causal", NAME_CAUSAL)
@pytest.mark.parametrize("d_model", [32, 48, 64])
def test_builds_from_d_model_alone(name: str, d_model: int, causal: bool) -> None:
    m = az.build_mixer(name, d_model=d_model, causal=causal)
    x = torch.randn(2, 5, d_model)
    assert m(x).shape == x.shape


# ---- linear ---------------------------------------------------------------------------------
@pytest.mark.parametrize("causal,cross", [(False, False), (True, False), (False, True)])
def test_linear_is_projections_feature_map_and_op(causal: bool, cross: bool) -> None:
    m = az.build_mixer("linear", d_model=32, num_heads=2, causal=causal, qkv_bias=True)
    x = torch.randn(2, 9, 32)
    ctx = torch.randn(2, 4, 32) if cross else None
    q, k, v = m._project(x, x if ctx is None else ctx)
    o = linear_attention(
        F.elu(q) + 1, F.elu(k) + 1, v, causal=causal, normalize=True, impl="reference"
    )
    torch.testing.assert_close(m(x, context=ctx), m.out_proj(o.flatten(2)))


@pytest.mark.parametrize("normalize", [False, True])
def test_linear_causal_matches_fla_naive_recurrent(normalize: bool) -> None:
    """Peer: fla's naive recurrent linear attention (scale passed as 1, its eps is 1e-10 vs our
    1e-6: denominators here are >= 1, so the difference is far below the tolerance)."""
    pytest.importorskip("fla")
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

    m = az.build_mixer("linear", d_model=32, num_heads=2, causal=True, normalize=normalize)
    x = torch.randn(2, 20, 32, requires_grad=True)
    q, k, v = m._project(x, x)
    o, _ = naive_recurrent_linear_attn(
        F.elu(q) + 1, F.elu(k) + 1, v, scale=1.0, normalize=normalize
    )
    want = m.out_proj(o.flatten(2))
    got = m(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad((got * g).sum(), x, retain_graph=True)
    (gx_peer,) = torch.autograd.grad((want * g).sum(), x)
    torch.testing.assert_close(gx, gx_peer, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,causal", NAME_CAUSAL)
def test_impls_agree(name: str, causal: bool) -> None:
    x = torch.randn(2, 37, 32)
    outs = []
    for impl in IMPLS:
        torch.manual_seed(3)
        m = az.build_mixer(name, d_model=32, num_heads=4, causal=causal, impl=impl, chunk_size=8)
        outs.append(m(x))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalize": False, "feature_map": "relu"},
        {"num_heads": 4, "num_kv_heads": 2, "qk_norm": True},
        {"feature_map": "identity", "normalize": False, "impl": "recurrent"},
    ],
)
def test_linear_step_equals_forward_for_other_configs(kwargs: dict) -> None:
    m = az.build_mixer("linear", d_model=32, causal=True, **kwargs).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    assert (state.z is None) == (not m.cfg.normalize)
    ys = []
    for t in range(10):
        y, state = m.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), m(x), atol=1e-10, rtol=1e-10)
    K = m.cfg.dim_head
    assert state.position == 10 and state.kv.shape == (2, m.cfg.heads, K, K)


# ---- lightning ------------------------------------------------------------------------------
def test_lightning_slopes_values() -> None:
    # power of two: s_h = 2^(-8(h+1)/H); H=8 gives 1/2, 1/4, ..., 1/256
    m = az.build_mixer("lightning", d_model=64, num_heads=8, causal=True)
    want = torch.tensor([2.0 ** (-(h + 1)) for h in range(8)])
    torch.testing.assert_close(m.slopes, want)
    # ALiBi extension, H=6: the 4 slopes of H=4, then slopes 0 and 2 of H=8
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    assert alibi_slopes(1) == [2**-8]
    # TNL's depth factor, only with num_layers > 1
    deep = lightning_slopes(8, layer_idx=2, num_layers=5)
    torch.testing.assert_close(deep, want.double() * (1 - 2 / 4 + 1e-5))
    torch.testing.assert_close(lightning_slopes(8, 0, 1), want.double())
    last = az.build_mixer(
        "lightning", d_model=64, num_heads=8, layer_idx=4, num_layers=5, causal=True
    )
    torch.testing.assert_close(last.slopes, want * 1e-5)


def test_lightning_matches_fla_simple_gla() -> None:
    """Peer: fla's naive recurrent simple GLA with g = -slope per head broadcast over (B, T) and
    scale=1 (fla's default is 1/sqrt(K); Lightning has no scale), on our SiLU'd projections."""
    pytest.importorskip("fla")
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    m = az.build_mixer("lightning", d_model=32, num_heads=4, causal=True, chunk_size=8)
    x = torch.randn(2, 30, 32, requires_grad=True)
    qkv = F.silu(m.qkv_proj(x)).unflatten(-1, (3, 4, 8))  # [B, T, 3, H, K]
    q, k, v = qkv.unbind(2)
    g = (-m.slopes)[None, None].expand(2, 30, 4)
    o, _ = naive_recurrent_simple_gla(q, k, v, g, scale=1.0)
    want = m.out_proj(o.flatten(2))
    got = m(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gr = torch.randn_like(got)
    (gx,) = torch.autograd.grad((got * gr).sum(), x, retain_graph=True)
    (gx_peer,) = torch.autograd.grad((want * gr).sum(), x)
    torch.testing.assert_close(gx, gx_peer, atol=1e-5, rtol=1e-5)


def test_lightning_is_causal_only() -> None:
    with pytest.raises(ValueError, match="lightning does not support causal=False"):
        az.build_mixer("lightning", d_model=32)


# ---- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kwargs,exc,match",
    [
        (
            "linear",
            {"feature_map": "elu"},
            ValueError,
            "linear: feature_map must be one of 'elu\\+1', 'relu', 'identity', got 'elu' "
            "\\(did you mean .*'elu\\+1'",
        ),
        ("linear", {"window": 4}, ValueError, "linear: window=4 is not supported"),
        ("linear", {"causal": True, "prefix": 2}, ValueError, "prefix=2 is not supported"),
        ("linear", {"chunk_size": 0}, ValueError, "chunk_size must be >= 1, got 0"),
        ("linear", {"normalize": 1}, TypeError, "config 'normalize' must be bool"),
        ("linear", {"impl": "fused"}, TypeError, "config 'impl' must be 'auto' \\| 'reference'"),
        ("lightning", {"num_heads": 5}, ValueError, "d_model=32 is not divisible by num_heads=5"),
        ("lightning", {"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        (
            "lightning",
            {"layer_idx": 3, "num_layers": 3},
            ValueError,
            "layer_idx must be in \\[0, num_layers=3\\), got 3",
        ),
        ("lightning", {"num_layers": 0}, ValueError, "num_layers must be >= 1, got 0"),
        ("lightning", {"chunk_size": -1}, ValueError, "chunk_size must be >= 1, got -1"),
        ("lightning", {"slope": 1}, TypeError, "unknown config key 'slope'"),
    ],
)
def test_bad_config(name: str, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer(name, d_model=32, **kwargs)


@pytest.mark.parametrize("name", ["linear", "lightning"])
def test_bad_calls(name: str) -> None:
    if name == "linear":
        m = az.build_mixer(name, d_model=32)
        with pytest.raises(ValueError, match=f"{name}: step\\(\\) streams the causal-self pattern"):
            m.init_state(1)
        with pytest.raises(ValueError, match="does not support mask kind"):
            m(torch.randn(1, 5, 32), mask=az.Mask.sliding_window(2, causal=False))
    m = az.build_mixer(name, d_model=32, causal=True)
    with pytest.raises(ValueError, match="does not support mask kind"):
        m(torch.randn(1, 5, 32), mask=az.Mask.sliding_window(2))
    with pytest.raises(ValueError, match="does not support pattern 'causal-cross'"):
        m(torch.randn(1, 5, 32), context=torch.randn(1, 5, 32))
    state = m.init_state(2)
    with pytest.raises(ValueError, match="x_t batch 1 differs from the state's 2"):
        m.step(torch.randn(1, 32), state)
    with pytest.raises(ValueError, match="x_t must be \\[B, D\\]"):
        m.step(torch.randn(2, 1, 32), state)
    with pytest.raises(TypeError, match="state must come from init_state"):
        m.step(torch.randn(2, 32), {"kv": 1})
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        m.init_state(0)
    with pytest.raises(TypeError, match="unknown options \\['device_'\\]"):
        m.init_state(1, device_="cpu")


def test_lightning_has_no_cross_pattern() -> None:
    m = az.build_mixer("lightning", d_model=32, causal=True)
    with pytest.raises(ValueError, match="does not support pattern 'causal-cross'"):
        m(torch.randn(1, 5, 32), context=torch.randn(1, 3, 32))


def test_flops_are_linear_in_length() -> None:
    for name in ("linear", "lightning"):
        m = az.build_mixer(name, d_model=64, causal=True)
        f1, f2 = m.flops(1, 1000), m.flops(1, 2000)
        assert f2 == 2 * f1  # projections and the state form both scale with T
    m = az.build_mixer("linear", d_model=64, num_heads=2, normalize=False)
    proj = 2 * (100 * 64 * 64 * 4)
    assert m.flops(1, 100) - proj == 2 * 2 * (100 + 100) * 32 * 32
