"""area mixer (YOLOv12 area attention): the fast path against ``impl="reference"`` on one strip
(full attention), several strips, ragged last strips and fixed strip lengths, in eval and train
mode; the strips seen through the attention maps; strip independence; odd grids (handled and
raised); FLOPs; config errors.

The reference (:mod:`attnzoo.mixers.vision.area`) follows ``AAttn.forward`` of the official
repository (https://github.com/sunsmarterjie/yolov12, ``ultralytics/nn/modules/block.py``, its
non-flash branch): ``qk`` and ``v`` 1x1 convolutions with BatchNorm (channels-last matmuls; ours
stacks them as rows ``q | k | v`` of one weight), ``pe`` = BN(depthwise 5x5 conv of v), tokens
flattened row-major and cut into consecutive strips, per head ``softmax(q k^T * d**-0.5) v``
within a strip, then ``proj(attn + pe)`` (1x1 conv + BN). Comparisons run in float64.
"""

from __future__ import annotations

import pytest
import torch

import attnzoo as az
from attnzoo.ops.softmax import softmax_weights
from attnzoo.testing import randomise


def pair(**kw: object) -> tuple[az.Mixer, az.Mixer]:
    """The fast path and the reference with the same randomised weights (BatchNorms away from
    their init), float64, eval mode."""
    ref = randomise(az.build_mixer("area", d_model=32, impl="reference", **kw), seed=11, std=0.3)
    fast = az.build_mixer("area", d_model=32, **kw)
    fast.load_state_dict(ref.state_dict())
    return fast.eval().double(), ref.eval().double()


def fwd_bwd_check(fast: az.Mixer, ref: az.Mixer, x: torch.Tensor) -> None:
    x = x.double().requires_grad_(True)
    got, want = fast(x), ref(x)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(got)
    names = ("qkv.weight", "pe.weight", "proj.weight", "qkv_bn.weight")
    ga = torch.autograd.grad((got * g).sum(), [x, *(fast.get_parameter(n) for n in names)])
    gb = torch.autograd.grad((want * g).sum(), [x, *(ref.get_parameter(n) for n in names)])
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def assert_strips(m: az.Mixer, x: torch.Tensor, L: int) -> None:
    """The attention maps weigh exactly the pairs inside one strip of ``L`` consecutive
    row-major tokens (the last strip may be shorter), each row summing to 1."""
    a = m.attention_maps(x.double()).weights  # [B, H, N, N]
    strip = torch.arange(a.shape[-1]) // L
    same = strip[:, None] == strip[None, :]
    assert (a[..., ~same] == 0).all() and (a[..., same] > 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype))


@pytest.mark.parametrize("grid,heads", [((7, 13), 2), ((5, 4), 1), ((1, 1), 2), ((16, 16), 2)])
def test_one_area_is_full_attention_plus_positional_term(grid: tuple[int, int], heads: int) -> None:
    torch.manual_seed(0)
    fast, ref = pair(num_heads=heads, area=1)
    x = torch.randn(2, *grid, 32, dtype=torch.float64)
    fwd_bwd_check(fast, ref, x)
    # one strip: the weights are plain softmax attention over every token
    qkv, _ = ref._project(x)
    q, k, _ = ref._heads(qkv.reshape(2, -1, 3 * 32))
    maps = ref.attention_maps(x)
    torch.testing.assert_close(maps.weights, softmax_weights(q, k), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(maps.output(), ref(x), atol=1e-10, rtol=1e-10)


def test_train_mode_uses_batch_statistics() -> None:
    """Train mode normalises with batch statistics; eval mode (every other test) uses the
    running statistics, which the fast path folds into the projections and the kernel."""
    torch.manual_seed(5)
    fast, ref = pair(area=2)
    x = torch.randn(3, 4, 6, 32, dtype=torch.float64)
    fwd_bwd_check(fast.train(), ref.train(), x)
    assert (fast(x) - fast.eval()(x)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "grid,area,L",
    [((8, 8), 4, 16), ((12, 10), 4, 30), ((9, 10), 2, 45), ((4, 6), 8, 3), ((6, 4), 24, 1)],
)
def test_areas_match_reference(grid: tuple[int, int], area: int, L: int) -> None:
    torch.manual_seed(1)
    fast, ref = pair(num_heads=2, area=area, ragged=False)
    assert fast.cfg.strips(grid[0] * grid[1]) == (L, area)
    x = torch.randn(2, *grid, 32)
    fwd_bwd_check(fast, ref, x)
    assert_strips(fast, x, L)


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
def test_ragged_strips_match_reference(grid: tuple[int, int], kw: dict, L: int, count: int) -> None:
    torch.manual_seed(2)
    fast, ref = pair(**kw)
    assert fast.cfg.strips(grid[0] * grid[1]) == (L, count)
    x = torch.randn(2, *grid, 32)
    fwd_bwd_check(fast, ref, x)
    assert_strips(ref, x, L)


def test_strips_are_bands_of_rows_and_independent() -> None:
    """With area=4 on 8 rows the strips are bands of 2 rows. Without the positional term (its
    kernel zeroed), changing band 2 changes band 2's outputs and no other band's."""
    torch.manual_seed(3)
    m, _ = pair(area=4)
    with torch.no_grad():
        m.pe.weight.zero_()
    x = torch.randn(1, 8, 5, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 4:6] += torch.randn_like(x2[:, 4:6])
    d = (m(x) - m(x2)).abs().amax(dim=(0, 2, 3))  # per row
    assert d[4:6].min() > 1e-3 and d[:4].max() == 0 and d[6:].max() == 0


@pytest.mark.parametrize("grid", [(7, 13), (13, 30), (30, 7), (30, 30), (13, 13)])
def test_odd_grids_ragged_or_raised(grid: tuple[int, int]) -> None:
    """ragged=True takes any grid; ragged=False agrees with it when the strips tile the grid
    and otherwise names the constraint and the sizes."""
    h, w = grid
    x = torch.randn(2, h, w, 32)
    ragged = az.build_mixer("area", d_model=32).eval()  # area=4, ragged=True by default
    y = ragged(x)
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
        ({"area": 0}, ValueError, "area: area must be >= 1, got 0"),
        ({"strip_length": 0}, ValueError, "area: strip_length must be >= 1, got 0"),
        ({"num_heads": 3}, ValueError, "d_model=64 is not divisible by num_heads=3"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        (
            {"pe_kernel_size": 4},
            ValueError,
            "area: pe_kernel_size must be a positive odd int.*got 4",
        ),
        ({"bn_eps": -1.0}, ValueError, "area: bn_eps must be > 0, got -1.0"),
        ({"area": 2.0}, TypeError, "config 'area' must be int \\| None"),
        ({"causal": True}, ValueError, "area does not support causal=True"),
        ({"areas": 2}, TypeError, "unknown config key 'areas' \\(did you mean 'area'"),
        ({"impl": "flash"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'sdpa'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("area", d_model=64, **kw)
