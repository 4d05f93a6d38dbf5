"""area mixer (YOLOv12 area attention): one strip against full softmax attention with an explicit
[N, N] score matrix plus a shift-and-add depthwise positional term; several strips against an
explicit loop over strips; ragged last strips and fixed strip lengths; strip independence; odd
grids (handled and raised); FLOPs; config / input errors.

The by-hand code follows ``AAttn.forward`` of the official repository
(https://github.com/sunsmarterjie/yolov12, ``ultralytics/nn/modules/block.py``, its non-flash
branch): ``qk`` and ``v`` 1x1 convolutions with BatchNorm (channels-last einsums here; ours
stacks them as rows ``q | k | v`` of one weight), ``pe`` = BN(depthwise 5x5 conv of v), tokens
flattened row-major and cut into consecutive strips, per head ``softmax(q k^T * d**-0.5) v``
within a strip, then ``proj(attn + pe)`` (1x1 conv + BN). Comparisons run in float64, eval mode.
"""

from __future__ import annotations

import pytest
import torch

import attnzoo as az
from tests.mixers.naive import bn_by_hand, depthwise_by_hand


def full_attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, H: int):
    """q, k, v ``[B, n, C]`` -> ``[B, n, C]``: per head an explicit softmax score matrix."""
    B, n, C = q.shape
    d = C // H
    qh, kh, vh = (t.reshape(B, n, H, d).transpose(1, 2) for t in (q, k, v))  # [B, H, n, d]
    scores = qh @ kh.transpose(-1, -2) * d**-0.5  # [B, H, n, n]
    p = torch.exp(scores - scores.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    return (p @ vh).transpose(1, 2).reshape(B, n, C)


def strip_attention_by_hand(q, k, v, H: int, L: int) -> torch.Tensor:
    """Consecutive strips of L tokens (the last may be shorter), attended one by one."""
    N = q.shape[1]
    outs = [
        full_attention_by_hand(q[:, s : s + L], k[:, s : s + L], v[:, s : s + L], H)
        for s in range(0, N, L)
    ]
    return torch.cat(outs, dim=1)


def mixer_by_hand(m: az.Mixer, x: torch.Tensor, L: int | None) -> torch.Tensor:
    """``L=None``: one strip of all tokens (full attention)."""
    B, h, w, C = x.shape
    H = m.cfg.heads
    qkv = bn_by_hand(x @ m.qkv.weight.T, m.qkv_bn)  # [B, h, w, 3C]
    q, k, v = (t.reshape(B, h * w, C) for t in qkv.split(C, dim=-1))
    pe = bn_by_hand(depthwise_by_hand(qkv[..., 2 * C :], m.pe.weight), m.pe_bn)
    if L is None:
        o = full_attention_by_hand(q, k, v, H)
    else:
        o = strip_attention_by_hand(q, k, v, H, L)
    o = o.reshape(B, h, w, C)
    return bn_by_hand((o + pe) @ m.proj.weight.T, m.proj_bn)


def randomise(m: az.Mixer) -> az.Mixer:
    """Weights large enough for peaked attention; BatchNorms away from their init; float64."""
    torch.manual_seed(11)
    with torch.no_grad():
        m.qkv.weight.normal_(0.0, 0.3)
        m.pe.weight.normal_(0.0, 0.3)
        m.proj.weight.normal_(0.0, 0.2)
        for bn in (m.qkv_bn, m.pe_bn, m.proj_bn):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.3)
            bn.running_mean.normal_(0.0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval().double()


def fwd_bwd_check(m: az.Mixer, x: torch.Tensor, L: int | None) -> None:
    x = x.double().requires_grad_(True)
    got, want = m(x), mixer_by_hand(m, x, L)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(got)
    leaves = [x, m.qkv.weight, m.pe.weight, m.proj.weight, m.qkv_bn.weight]
    ga = torch.autograd.grad((got * g).sum(), leaves)
    gb = torch.autograd.grad((want * g).sum(), leaves)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("grid,heads", [((7, 13), 2), ((5, 4), 1), ((1, 1), 2), ((16, 16), 2)])
def test_one_area_is_full_attention_plus_positional_term(grid: tuple[int, int], heads: int) -> None:
    torch.manual_seed(0)
    m = randomise(az.build_mixer("area", d_model=32, num_heads=heads, area=1))
    fwd_bwd_check(m, torch.randn(2, *grid, 32), None)


def test_train_mode_uses_batch_statistics() -> None:
    """Train mode normalises with batch statistics; eval mode (every other test) folds the
    running statistics into the projections and the positional kernel."""
    torch.manual_seed(5)
    m = randomise(az.build_mixer("area", d_model=32, area=2)).train()
    fwd_bwd_check(m, torch.randn(3, 4, 6, 32), 12)


@pytest.mark.parametrize(
    "grid,area,L",
    [((8, 8), 4, 16), ((12, 10), 4, 30), ((9, 10), 2, 45), ((4, 6), 8, 3), ((6, 4), 24, 1)],
)
def test_areas_match_strip_loop(grid: tuple[int, int], area: int, L: int) -> None:
    torch.manual_seed(1)
    m = randomise(az.build_mixer("area", d_model=32, num_heads=2, area=area, ragged=False))
    assert m.cfg.strips(grid[0] * grid[1]) == (L, area)
    fwd_bwd_check(m, torch.randn(2, *grid, 32), L)


@pytest.mark.parametrize(
    "grid,kw,L,count",
    [
        ((7, 13), {"area": 4}, 23, 4),  # 91 tokens: 23, 23, 23, 22
        ((5, 1), {"area": 4}, 2, 3),  # 5 tokens: 2, 2, 1 (fewer strips than area)
        ((7, 13), {"strip_length": 16}, 16, 6),  # 16 x 5 + 11
        ((13, 30), {"strip_length": 64}, 64, 7),  # 64 x 6 + 6
        ((3, 3), {"strip_length": 64}, 9, 1),  # shorter than one strip
    ],
)
def test_ragged_strips_match_strip_loop(
    grid: tuple[int, int], kw: dict, L: int, count: int
) -> None:
    torch.manual_seed(2)
    m = randomise(az.build_mixer("area", d_model=32, **kw))
    assert m.cfg.strips(grid[0] * grid[1]) == (L, count)
    fwd_bwd_check(m, torch.randn(2, *grid, 32), L)


def test_strips_are_bands_of_rows_and_independent() -> None:
    """With area=4 on 8 rows the strips are bands of 2 rows. Without the positional term (its
    kernel zeroed), changing band 2 changes band 2's outputs and no other band's."""
    torch.manual_seed(3)
    m = randomise(az.build_mixer("area", d_model=32, area=4))
    with torch.no_grad():
        m.pe.weight.zero_()
    x = torch.randn(1, 8, 5, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 4:6] += torch.randn_like(x2[:, 4:6])
    d = (m(x) - m(x2)).abs().amax(dim=(0, 2, 3))  # per row
    assert d[4:6].min() > 1e-3 and d[:4].max() == 0 and d[6:].max() == 0


@pytest.mark.parametrize("grid", [(7, 13), (13, 30), (30, 7), (30, 30), (13, 13)])
def test_odd_grids_handled_or_raised(grid: tuple[int, int]) -> None:
    h, w = grid
    x = torch.randn(2, h, w, 32, requires_grad=True)
    ragged = az.build_mixer("area", d_model=32).eval()  # area=4, ragged=True by default
    y = ragged(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    strict = az.build_mixer("area", d_model=32, ragged=False).eval()
    strict.load_state_dict(ragged.state_dict())
    if (h * w) % 4 == 0:
        torch.testing.assert_close(strict(x), y)
    else:
        msg = (
            "area: h\\*w must be divisible by area=4 when ragged=False, "
            f"got h={h}, w={w} \\(h\\*w={h * w}\\)"
        )
        with pytest.raises(ValueError, match=msg):
            strict(x)
    fixed = az.build_mixer("area", d_model=32, strip_length=64, ragged=False)
    if (h * w) % 64:
        with pytest.raises(ValueError, match="h\\*w must be a multiple of strip_length=64"):
            fixed(x)


def test_defaults() -> None:
    cfg = az.build_mixer("area", d_model=64).cfg
    assert (cfg.heads, cfg.dim_head, cfg.strips(400)) == (2, 32, (100, 4))
    assert az.build_mixer("area", d_model=48).cfg.heads == 1
    assert az.build_mixer("area", d_model=96, strip_length=50).cfg.strips(400) == (50, 8)


def test_flops_quadratic_with_areas_linear_with_strip_length() -> None:
    B, C, H = 2, 64, 2
    proj = 2 * B * 4 * C * C + 2 * B * C * 25  # per token
    area = az.build_mixer("area", d_model=C)  # 4 strips of T/4 tokens
    T = 400
    assert area.flops(B, T) == proj * T + 2 * B * H * (4 * 100 * 100) * 64
    fixed = az.build_mixer("area", d_model=C, strip_length=100)
    for t in (400, 800, 1600):
        assert fixed.flops(B, t) == proj * t + 2 * B * H * (t // 100) * 100 * 100 * 64
    # attention part: x2 tokens -> x4 with a fixed number of strips, x2 with a fixed length
    att = [area.flops(B, t) - proj * t for t in (400, 800)]
    assert att[1] == 4 * att[0]
    att = [fixed.flops(B, t) - proj * t for t in (400, 800)]
    assert att[1] == 2 * att[0]
    ragged = az.build_mixer("area", d_model=C, strip_length=16).flops(B, 91)
    assert ragged == proj * 91 + 2 * B * H * (5 * 16 * 16 + 11 * 11) * 64


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (
            {"area": 2, "strip_length": 8},
            ValueError,
            "area: set either area .* or strip_length .*not both; got area=2, strip_length=8",
        ),
        ({"area": 0}, ValueError, "area must be >= 1, got 0"),
        ({"strip_length": 0}, ValueError, "strip_length must be >= 1, got 0"),
        ({"num_heads": 3}, ValueError, "d_model=64 is not divisible by num_heads=3"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"pe_kernel_size": 4}, ValueError, "pe_kernel_size must be a positive odd int.*got 4"),
        ({"bn_eps": -1.0}, ValueError, "bn_eps must be > 0, got -1.0"),
        ({"area": 2.0}, TypeError, "config 'area' must be int \\| None"),
        ({"causal": True}, ValueError, "area does not support causal=True"),
        ({"areas": 2}, TypeError, "unknown config key 'areas' \\(did you mean 'area'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("area", d_model=64, **kw)


def test_bad_calls_are_named() -> None:
    m = az.build_mixer("area", d_model=32)
    with pytest.raises(ValueError, match=r"area: x must be \[B, h, w, C\] \(channels-last\)"):
        m(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="x last dim must be 32"):
        m(torch.randn(2, 4, 4, 16))
    with pytest.raises(ValueError, match="no streaming state"):
        m.init_state(1)
    with pytest.raises(ValueError, match="area does not support pattern 'noncausal-cross'"):
        m(torch.randn(1, 4, 4, 32), context=torch.randn(1, 3, 32))
