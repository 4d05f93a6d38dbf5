"""gla (causal and bidirectional) and vig mixers: a by-hand composition over fla's naive GLA as
the peer, streaming, odd image grids, impls agreeing, and config / input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import attnzoo as az


def fla_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:
    """fla's naive step loop: ``[B, T, H, K]`` in and out, scale ``K**-0.5`` (ours by default)."""
    from fla.ops.gla.naive import naive_recurrent_gla

    return naive_recurrent_gla(q, k, v, gk)[0]


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def gla_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """fla's GatedLinearAttention layer written out (defaults: no short conv, swish output gate),
    with ViG's bidirectional form when ``causal=False``: forward gates on x, backward gates on
    the flipped sequence, outputs averaged."""
    H = m.cfg.heads
    split = lambda t: rearrange(t, "b t (h d) -> b t h d", h=H)  # noqa: E731
    q, k, v = split(m.q_proj(x)), split(m.k_proj(x)), split(m.v_proj(x))
    gk = F.logsigmoid(m.gk_proj[1](x @ m.gk_proj[0].weight.T)) / 16
    if m.cfg.causal:
        o = fla_gla(q, k, v, split(gk))
    else:
        gf, gb = (split(g) for g in gk.chunk(2, dim=-1))
        o_b = fla_gla(q.flip(1), k.flip(1), v.flip(1), gb.flip(1)).flip(1)
        o = (fla_gla(q, k, v, gf) + o_b) / 2
    o = rms(o, m.g_norm.weight) * F.silu(split(m.g_proj(x)))
    return m.o_proj(rearrange(o, "b t h d -> b t (h d)"))


def vig_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """ViG's GatedLinearAttention.forward (training branch) in its order: conv + SiLU, q/k/v and
    direction-wise gates from it, causal GLA on the batch [x, flip(x)] (backward gates flipped
    with it), average, then o*g + RMSNorm(local)*(1-g) and o_proj."""
    H, Kd, (B, h, w, C) = m.cfg.heads, m.cfg.key_dim, x.shape
    local = F.silu(F.conv2d(x.permute(0, 3, 1, 2), m.dwconv.weight, padding=1, groups=C))
    xs = local.flatten(2).transpose(1, 2)  # [B, h*w, C]
    q, k, v = torch.split(xs @ m.qkv_proj.weight.T, [Kd, Kd, C], dim=2)
    fw, bw = m.gk_proj(xs).chunk(2, dim=2)
    gk = F.logsigmoid(torch.cat([fw, bw.flip(1)], dim=0)) / 16
    split = lambda t: rearrange(t, "b n (h d) -> b n h d", h=H)  # noqa: E731
    q, k, v = (split(torch.cat([t, t.flip(1)], dim=0)) for t in (q, k, v))
    o_f, o_b = fla_gla(q, k, v, split(gk)).chunk(2)
    o = (o_f + o_b.flip(1)) / 2
    g = split(torch.sigmoid(m.g_proj(xs)))
    o = rms(o, m.g_norm.weight) * g + rms(split(xs), m.l_norm.weight) * (1 - g)
    return m.o_proj(rearrange(o, "b n h d -> b n (h d)")).reshape(B, h, w, C)


def randomise_norms(m: az.Mixer) -> None:
    """Norm weights start at 1; make them matter to the comparison."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
@pytest.mark.parametrize("causal", [True, False])
def test_gla_matches_layer_by_hand(causal: bool, impl: str) -> None:
    m = az.build_mixer("gla", d_model=64, num_heads=2, causal=causal, impl=impl, chunk_size=8)
    randomise_norms(m)
    x = torch.randn(2, 21, 64, requires_grad=True)
    got, want = m(x), gla_by_hand(m, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad((got * g).sum(), x)
    (gx_want,) = torch.autograd.grad((want * g).sum(), x)
    torch.testing.assert_close(gx, gx_want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
def test_gla_step_equals_forward(impl: str) -> None:
    m = az.build_mixer("gla", d_model=48, num_heads=3, causal=True, impl=impl, chunk_size=4)
    randomise_norms(m)
    m = m.double()
    x = torch.randn(2, 13, 48, dtype=torch.float64)
    y = m(x)
    state = m.init_state(2, dtype=torch.float64)
    outs = []
    for t in range(13):
        y_t, state = m.step(x[:, t], state)
        outs.append(y_t)
    assert state.position == 13
    torch.testing.assert_close(torch.stack(outs, 1), y, atol=1e-10, rtol=1e-10)


def test_gla_bidirectional_sees_the_future_and_causal_does_not() -> None:
    x = torch.randn(1, 12, 32)
    x2 = x.clone()
    x2[:, 8:] += 1.0
    for causal in (True, False):
        m = az.build_mixer("gla", d_model=32, causal=causal)
        changed = not torch.allclose(m(x)[:, :8], m(x2)[:, :8])
        assert changed is (not causal)


def test_gla_gate_width_per_direction() -> None:
    assert az.build_mixer("gla", d_model=64, causal=True).gk_proj[1].out_features == 32
    assert az.build_mixer("gla", d_model=64).gk_proj[1].out_features == 64  # fwd + bwd gates


@pytest.mark.parametrize("grid", [(7, 13), (30, 30), (1, 1)])
def test_vig_odd_grids_shape_finite_gradients(grid: tuple[int, int]) -> None:
    h, w = grid
    m = az.build_mixer("vig", d_model=48, num_heads=2)
    x = torch.randn(2, h, w, 48, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("grid", [(7, 13), (5, 4)])
def test_vig_matches_official_order_by_hand(grid: tuple[int, int]) -> None:
    m = az.build_mixer("vig", d_model=64, num_heads=2, chunk_size=16)
    randomise_norms(m)
    x = torch.randn(2, *grid, 64)
    torch.testing.assert_close(m(x), vig_by_hand(m, x), atol=1e-5, rtol=1e-5)


def test_vig_impls_agree() -> None:
    x = torch.randn(2, 9, 11, 32)
    outs = []
    for impl in ("reference", "chunk", "recurrent"):
        torch.manual_seed(3)
        outs.append(az.build_mixer("vig", d_model=32, impl=impl, chunk_size=16)(x))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)


def test_vig_mixes_the_whole_grid() -> None:
    """A change in the bottom-right corner reaches the top-left token (through the reverse scan),
    beyond the 3x3 convolution's reach. ViG's small initialisation (Xavier gain 2**-2.5) makes
    the long-range path ~1e-7 at init, so q/k/v weights are enlarged to lift it above fp32 noise."""
    m = az.build_mixer("vig", d_model=32)
    with torch.no_grad():
        m.qkv_proj.weight.normal_(0.0, 0.5)
    x = torch.randn(1, 6, 6, 32)
    x2 = x.clone()
    x2[:, 5, 5] += 1.0
    assert (m(x)[:, 0, 0] - m(x2)[:, 0, 0]).abs().max() > 1e-3


def test_flops_grow_linearly() -> None:
    for name, dims in (("gla", 1), ("vig", 2)):
        m = az.build_mixer(name, d_model=64)
        f1, f2 = m.flops(2, 256), m.flops(2, 512)
        assert f1 > 0 and f2 == 2 * f1, (name, dims)


@pytest.mark.parametrize(
    "name,kw,exc,match",
    [
        ("gla", {"num_heads": 3}, ValueError, "key_dim=32 .* multiple of num_heads=3"),
        ("gla", {"expand_k": 0.01}, ValueError, "key_dim=0 .* positive multiple"),
        ("gla", {"expand_v": 0.75, "num_heads": 32}, ValueError, "value_dim=48 .*num_heads=32"),
        ("gla", {"gate_low_rank_dim": 0}, ValueError, "gate_low_rank_dim must be >= 1, got 0"),
        ("gla", {"chunk_size": 0}, ValueError, "chunk_size must be >= 1, got 0"),
        ("gla", {"gate_logit_normalizer": 0}, ValueError, "gate_logit_normalizer must be > 0"),
        ("gla", {"impl": "fast"}, TypeError, "config 'impl' must be 'auto' \\| 'reference'"),
        ("vig", {"num_heads": 5}, ValueError, "vig: key_dim=32 .*num_heads=5"),
        ("vig", {"norm_eps": -1.0}, ValueError, "norm_eps must be > 0"),
        ("vig", {"expand_v": 1.0}, TypeError, "unknown config key 'expand_v'"),
        ("vig", {"causal": True}, ValueError, "vig does not support causal=True"),
    ],
)
def test_bad_config_is_named(name: str, kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer(name, d_model=64, **kw)


def test_bad_calls_are_named() -> None:
    vig = az.build_mixer("vig", d_model=32)
    with pytest.raises(ValueError, match=r"vig: x must be \[B, h, w, C\] \(channels-last\)"):
        vig(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="x last dim must be 32"):
        vig(torch.randn(2, 4, 4, 16))
    with pytest.raises(ValueError, match="no streaming state"):
        vig.init_state(1)
    with pytest.raises(ValueError, match="vig does not support pattern 'noncausal-cross'"):
        vig(torch.randn(1, 4, 4, 32), context=torch.randn(1, 3, 32))
    bi = az.build_mixer("gla", d_model=32)
    with pytest.raises(ValueError, match="bidirectional .* needs the whole sequence"):
        bi.init_state(1)
    gla = az.build_mixer("gla", d_model=32, causal=True)
    with pytest.raises(TypeError, match="unknown options \\['devcie'\\]"):
        gla.init_state(1, devcie="cpu")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        gla.init_state(0)
    state = gla.init_state(2)
    with pytest.raises(ValueError, match=r"x_t must be \[B, D\]"):
        gla.step(torch.randn(2, 1, 32), state)
    with pytest.raises(ValueError, match="x_t batch 3 differs from the state's 2"):
        gla.step(torch.randn(3, 32), state)
    with pytest.raises(TypeError, match="state must come from init_state"):
        gla.step(torch.randn(2, 32), None)
    with pytest.raises(ValueError, match="does not support mask kind"):
        gla(torch.randn(1, 5, 32), mask=az.Mask.sliding_window(2))
