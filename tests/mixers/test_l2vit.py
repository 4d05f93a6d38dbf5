"""l2vit mixer: the attention against an explicit [N, N] clamped ReLU score matrix, the LCM
against F.conv2d / a written-out BatchNorm, the official LGABlock composition, the clamp, FLOPs,
odd grids, and config / input errors.

The by-hand code follows ``classification/models/l2vit.py`` of the official repository
(https://github.com/ChuanyangZheng/L2ViT): ``qkv`` reshaped to ``[B, N, 3, H, d]``, ReLU on q and
k, ``attn = q k^T`` materialised (the repository's commented qk-first form, which it says is
equal to the kv-first one), ``out = tau * attn v / clamp(attn.sum(-1), clamp_min)``, ``proj``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az


def attention_by_hand(m: az.Mixer, x: torch.Tensor, clamp_min: float) -> torch.Tensor:
    """x ``[B, N, C]`` -> ``[B, N, C]`` via the explicit score matrix."""
    B, N, C = x.shape
    H = m.cfg.heads
    qkv = (x @ m.qkv.weight.T + m.qkv.bias).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0].relu(), qkv[1].relu(), qkv[2]  # [B, H, N, d]
    scores = q @ k.transpose(-1, -2)  # [B, H, N, N]
    den = scores.sum(-1, keepdim=True)  # [B, H, N, 1]
    den = torch.where(den < clamp_min, torch.full_like(den, clamp_min), den)
    out = scores @ v * m.temperature.reshape(H, 1, 1) / den  # [B, H, N, d]
    out = out.transpose(1, 2).reshape(B, N, C)
    return out @ m.proj.weight.T + m.proj.bias


def lcm_by_hand(m: az.Mixer, u: torch.Tensor) -> torch.Tensor:
    """u ``[B, C, h, w]``: depthwise conv, GELU, BatchNorm (eval: running statistics), conv."""
    lcm, C = m.lcm, u.shape[1]
    pad = m.cfg.lcm_kernel_size // 2
    t = F.conv2d(u, lcm.conv1.weight, lcm.conv1.bias, padding=pad, groups=C)
    t = F.gelu(t)
    bn, c = lcm.bn, (1, C, 1, 1)
    t = (t - bn.running_mean.view(c)) / torch.sqrt(bn.running_var.view(c) + bn.eps)
    t = t * bn.weight.view(c) + bn.bias.view(c)
    return F.conv2d(t, lcm.conv2.weight, lcm.conv2.bias, padding=pad, groups=C)


def block_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """The official LGABlock with CPE, norms and MLP removed: x1 = x + attn(x);
    x2 = x1 + LCM(x1); the mixer's output is x2 - x."""
    B, h, w, C = x.shape
    a = attention_by_hand(m, x.reshape(B, h * w, C), m.cfg.clamp_min)
    x1 = x.reshape(B, h * w, C) + a
    x2 = x1 + lcm_by_hand(m, x1.transpose(1, 2).reshape(B, C, h, w)).flatten(2).transpose(1, 2)
    return (x2 - x.reshape(B, h * w, C)).reshape(B, h, w, C)


def randomise(m: az.Mixer) -> az.Mixer:
    """Biases, temperatures and BatchNorm affine/running statistics away from their init."""
    torch.manual_seed(11)
    with torch.no_grad():
        m.temperature.uniform_(0.1, 0.5)
        m.qkv.bias.normal_(0.0, 0.3)
        if m.lcm is not None:
            m.lcm.bn.weight.uniform_(0.5, 1.5)
            m.lcm.bn.bias.normal_(0.0, 0.3)
            m.lcm.bn.running_mean.normal_(0.0, 0.3)
            m.lcm.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def grads(y: torch.Tensor, g: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((y * g).sum(), leaves))


@pytest.mark.parametrize("impl", ["auto", "reference", "chunk"])
@pytest.mark.parametrize("clamp_min", [100.0, 1e-3])
@pytest.mark.parametrize("grid", [(7, 13), (5, 4), (1, 1)])
def test_attention_matches_explicit_score_matrix(
    impl: str, clamp_min: float, grid: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    m = randomise(az.build_mixer("l2vit", d_model=64, num_heads=2, clamp_min=clamp_min, impl=impl))
    x = torch.randn(2, grid[0] * grid[1], 64, requires_grad=True)
    got, want = m.attention(x), attention_by_hand(m, x, clamp_min)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    leaves = [x, m.qkv.weight, m.qkv.bias, m.temperature, m.proj.weight]
    for a, b in zip(grads(got, g, leaves), grads(want, g, leaves), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [(7, 13), (6, 6)])
def test_mixer_matches_official_block_composition(grid: tuple[int, int]) -> None:
    torch.manual_seed(1)
    m = randomise(az.build_mixer("l2vit", d_model=32, num_heads=2))
    x = torch.randn(2, *grid, 32, requires_grad=True)
    got, want = m(x), block_by_hand(m, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    leaves = [x, m.qkv.weight, m.temperature, m.lcm.conv1.weight, m.lcm.bn.weight]
    leaves += [m.lcm.conv2.weight, m.lcm.conv2.bias]
    for a, b in zip(grads(got, g, leaves), grads(want, g, leaves), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lcm_train_mode_uses_batch_statistics() -> None:
    """In train() the BatchNorm normalises with the batch's biased variance and moves its
    running statistics by momentum 0.1 (running_var with the unbiased variance)."""
    torch.manual_seed(2)
    m = az.build_mixer("l2vit", d_model=16, num_heads=2).train()
    u = torch.randn(3, 16, 5, 7)
    lcm = m.lcm
    t = F.gelu(F.conv2d(u, lcm.conv1.weight, lcm.conv1.bias, padding=3, groups=16))
    mean, var = t.mean((0, 2, 3)), t.var((0, 2, 3), unbiased=False)
    n = t.numel() // 16
    tn = (t - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    want = F.conv2d(tn, lcm.conv2.weight, lcm.conv2.bias, padding=3, groups=16)
    torch.testing.assert_close(lcm(u), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lcm.bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(lcm.bn.running_var, 0.9 + 0.1 * var * n / (n - 1))


def test_without_lcm_the_mixer_is_the_attention() -> None:
    m = randomise(az.build_mixer("l2vit", d_model=32, lcm=False))
    assert m.lcm is None and not any("lcm" in n for n, _ in m.named_parameters())
    x = torch.randn(2, 5, 3, 32)
    want = attention_by_hand(m, x.reshape(2, 15, 32), 100.0).reshape(2, 5, 3, 32)
    torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


def test_clamp_engages() -> None:
    """At init with unit inputs, q . sum_j k_j is below 100 for some tokens, so clamp_min=100
    changes the output vs a tiny clamp; with inputs scaled up, no denominator is clamped and the
    two agree."""
    torch.manual_seed(3)
    big = az.build_mixer("l2vit", d_model=64, num_heads=2, lcm=False).eval()
    tiny = az.build_mixer("l2vit", d_model=64, num_heads=2, lcm=False, clamp_min=1e-6).eval()
    tiny.load_state_dict(big.state_dict())
    x = torch.randn(2, 7, 7, 64)
    B, N = 2, 49
    qk = (x.reshape(B, N, 64) @ big.qkv.weight.T + big.qkv.bias).relu()
    q, k = qk[..., :64].reshape(B, N, 2, 32), qk[..., 64:128].reshape(B, N, 2, 32)
    den = torch.einsum("bnhd,bhd->bnh", q, k.sum(1))
    assert (den < 100).float().mean() > 0.2  # the clamp is active on many tokens
    assert (big(x) - tiny(x)).abs().max() > 1e-3
    torch.testing.assert_close(big(30 * x), tiny(30 * x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [(7, 13), (13, 7), (30, 30), (1, 1)])
def test_odd_grids_shape_finite_gradients(grid: tuple[int, int]) -> None:
    m = az.build_mixer("l2vit", d_model=48, num_heads=3).eval()
    x = torch.randn(2, *grid, 48, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_attention_is_global_and_lcm_is_local() -> None:
    """A change at the bottom-right corner reaches the top-left token through attention; without
    attention (zero output projection) only the 7x7 LCM remains, which reaches 6 pixels (two
    convolutions of radius 3) and no further."""
    torch.manual_seed(4)
    m = randomise(az.build_mixer("l2vit", d_model=32))
    x = torch.randn(1, 15, 15, 32)
    x2 = x.clone()
    x2[:, 14, 14] += 3.0
    assert (m(x)[:, 0, 0] - m(x2)[:, 0, 0]).abs().max() > 1e-4
    with torch.no_grad():
        m.proj.weight.zero_()
    d = (m(x) - m(x2)).abs().amax(-1)[0]  # [15, 15]
    assert d[8:, 8:].max() > 1e-3 and d[:8].max() == 0 and d[:, :8].max() == 0


def test_flops() -> None:
    cfg = dict(d_model=64, num_heads=2)
    m = az.build_mixer("l2vit", **cfg)
    B, N, C, H, d = 2, 91, 64, 2, 32
    want = 2 * B * N * 4 * C * C + 2 * B * H * 2 * N * d * (d + 1) + 2 * 2 * B * N * C * 49
    assert m.flops(B, N) == want
    assert m.flops(B, 2 * N) == 2 * want  # linear in the token count
    no_lcm = az.build_mixer("l2vit", lcm=False, **cfg)
    assert no_lcm.flops(B, N) == want - 4 * B * N * C * 49


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"clamp_min": 0.0}, ValueError, "l2vit: clamp_min must be a finite float > 0.*got 0.0"),
        ({"clamp_min": -1.0}, ValueError, "clamp_min must be .* got -1.0"),
        ({"clamp_min": float("inf")}, ValueError, "clamp_min must be a finite float"),
        ({"num_heads": 3}, ValueError, "d_model=64 is not divisible by num_heads=3"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"lcm_kernel_size": 4}, ValueError, "lcm_kernel_size must be a positive odd int.*got 4"),
        ({"lcm_kernel_size": 0}, ValueError, "lcm_kernel_size must be .*got 0"),
        ({"bn_eps": 0.0}, ValueError, "bn_eps must be > 0, got 0.0"),
        ({"impl": "fused"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'chunk'"),
        ({"clamp_min": "100"}, TypeError, "config 'clamp_min' must be float"),
        ({"causal": True}, ValueError, "l2vit does not support causal=True"),
        ({"clamp": 1.0}, TypeError, "unknown config key 'clamp' \\(did you mean 'clamp_min'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("l2vit", d_model=64, **kw)


def test_bad_calls_are_named() -> None:
    m = az.build_mixer("l2vit", d_model=32)
    with pytest.raises(ValueError, match=r"l2vit: x must be \[B, h, w, C\] \(channels-last\)"):
        m(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="x last dim must be 32"):
        m(torch.randn(2, 4, 4, 16))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        m(torch.ones(2, 4, 4, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="no streaming state"):
        m.init_state(1)
    with pytest.raises(ValueError, match="l2vit does not support pattern 'noncausal-cross'"):
        m(torch.randn(1, 4, 4, 32), context=torch.randn(1, 3, 32))
