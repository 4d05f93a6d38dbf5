"""davit_window: both paths (``sdpa`` and ``reference``) against timm's ``WindowAttention`` with
``SpatialBlock``'s pad / partition / reverse and against ``SpatialBlock`` itself (same weights:
outputs, input and parameter gradients), the fast path against the reference, the padding tokens
as attended keys, an explicit window loop (outputs and attention maps), the exact bias
rewrites, FLOPs, config and weight-mapping errors. (Call errors, odd grids and the gate:
tests/contract.)

Layouts: ours take channels-last ``x [B, h, w, C]``. timm's ``WindowAttention`` takes window
batches ``[B·nW, s², C]`` (``window_partition`` of the padded ``[B, h', w', C]``); timm's
``SpatialBlock`` takes ``[B, C, h, w]``: ``x.permute(0, 3, 1, 2)``, and its output is permuted
back.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.davit import SpatialBlock, WindowAttention, window_partition, window_reverse
from torch import nn

import attnzoo as az
from attnzoo.mixers.vision.davit_window import load_timm_weights
from attnzoo.peers import randomise_biases
from attnzoo.testing import randomise
from tests.helpers import assert_paths_equal, assert_same_module

TOL = dict(atol=2e-5, rtol=2e-5)
IMPLS = ["sdpa", "reference"]


def biased(module: nn.Module, seed: int) -> nn.Module:
    """Biases drawn N(0, 0.5²) (zero or small biases would hide a bias-mapping bug)."""
    return randomise_biases(module, torch.Generator().manual_seed(seed), std=0.5)


def compare(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, f_ours, f_theirs) -> None:
    assert_same_module(ours, theirs, x, f_ours, f_theirs, **TOL)


def timm_window_attention(attn: WindowAttention, x: torch.Tensor, s: int) -> torch.Tensor:
    """The attention part of timm's SpatialBlock on [B, h, w, C]: pad, partition, attend,
    reverse, crop (pad computed as SpatialBlock does)."""
    B, h, w, C = x.shape
    pad_r, pad_b = (s - w % s) % s, (s - h % s) % s
    xp = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = xp.shape[1:3]
    out = attn(window_partition(xp, (s, s)).view(-1, s * s, C)).view(-1, s, s, C)
    return window_reverse(out, (s, s), Hp, Wp)[:, :h, :w]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "grid,s,C,H,bias",
    [
        ((14, 21), 7, 64, 2, True),  # divisible
        ((7, 13), 7, 64, 2, True),  # padded width
        ((30, 13), 7, 32, 1, True),  # both padded
        ((13, 7), 4, 48, 3, False),
        ((1, 1), 7, 32, 2, True),  # one token in a 7x7 window of zeros
    ],
)
def test_window_matches_timm(grid: tuple, s: int, C: int, H: int, bias: bool, impl: str) -> None:
    torch.manual_seed(3)
    theirs = biased(WindowAttention(C, (s, s), num_heads=H, qkv_bias=bias), 3)
    ours = az.build_mixer(
        "davit_window", d_model=C, num_heads=H, window_size=s, qkv_bias=bias, impl=impl
    )
    load_timm_weights(ours, theirs)
    x = torch.randn(2, *grid, C)
    compare(ours, theirs, x, ours, lambda t: timm_window_attention(theirs, t, s))
    assert ours(x).is_contiguous()  # the crop of a padded grid is copied out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("grid", [(7, 13), (30, 30), (13, 7)])
def test_window_matches_timm_spatial_block(grid: tuple, impl: str) -> None:
    """timm's SpatialBlock (its own pad/partition/crop) with identity positional convs,
    norm1 = Identity and a zero MLP is ``x + attention``; ours is the attention term."""
    torch.manual_seed(4)
    block = biased(SpatialBlock(32, num_heads=2, window_size=7), 4)
    block.norm1 = nn.Identity()
    with torch.no_grad():  # (ffn=False breaks SpatialBlock in timm 1.0.31: a zero fc2 instead)
        for lin in (block.cpe1.proj, block.cpe2.proj, block.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    ours = az.build_mixer("davit_window", d_model=32, num_heads=2, window_size=7, impl=impl)
    load_timm_weights(ours, block.attn)
    x = torch.randn(2, *grid, 32)
    want = block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) - x
    torch.testing.assert_close(ours(x), want, **TOL)


@pytest.mark.parametrize(
    "grid,s,H,bias",
    [((11, 13), 7, 2, True), ((14, 7), 7, 1, True), ((5, 9), 4, 4, False), ((3, 2), 1, 2, True)],
)
def test_sdpa_equals_reference(grid: tuple, s: int, H: int, bias: bool) -> None:
    """The fast path (bias rewrites, SDPA) against the reference in float64: outputs and every
    gradient (the key bias gets an exactly zero gradient on both)."""
    kw = dict(d_model=32, num_heads=H, window_size=s, qkv_bias=bias)
    ref = randomise(az.build_mixer("davit_window", impl="reference", **kw), seed=6).double()
    fast = az.build_mixer("davit_window", impl="sdpa", **kw).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, *grid, 32, dtype=torch.float64)
    assert_paths_equal(fast, ref, x, atol=1e-12, rtol=1e-10)


def window_by_hand(m: az.Mixer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A loop over the windows of the zero-padded grid: softmax attention of each window's
    tokens (padded ones included, projected with the biases) among themselves. Returns the
    output ``[B, h, w, C]`` and the weights ``[B, H, h*w, h'*w']`` from the real queries to the
    padded grid's keys, row-major."""
    B, h, w, C = x.shape
    s, H = m.cfg.window_size, m.cfg.heads
    d = C // H
    hp, wp = -(-h // s) * s, -(-w // s) * s
    xp = torch.zeros(B, hp, wp, C, dtype=x.dtype)
    xp[:, :h, :w] = x
    q, k, v = F.linear(xp, m.qkv.weight, m.qkv.bias).unflatten(-1, (3, H, d)).unbind(-3)
    out = torch.zeros(B, hp, wp, H, d, dtype=x.dtype)
    weights = torch.zeros(B, H, hp * wp, hp * wp, dtype=x.dtype)
    for gy in range(0, hp, s):
        for gx in range(0, wp, s):
            ys, xs = torch.meshgrid(
                torch.arange(gy, gy + s), torch.arange(gx, gx + s), indexing="ij"
            )
            ys, xs = ys.flatten(), xs.flatten()  # [s²] the window's tokens, row-major
            qw, kw, vw = (t[:, ys, xs].transpose(1, 2) for t in (q, k, v))  # [B, H, s², d]
            p = (qw @ kw.transpose(-1, -2) * d**-0.5).softmax(-1)  # [B, H, s², s²]
            out[:, ys, xs] = (p @ vw).transpose(1, 2)
            flat = ys * wp + xs
            weights[:, :, flat[:, None], flat[None, :]] = p
    y = m.proj(out.flatten(-2))[:, :h, :w]
    real = (torch.arange(hp)[:, None] * wp + torch.arange(w)[None, :])[:h].flatten()
    return y, weights[:, :, real]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("grid,s", [((7, 13), 7), ((4, 6), 4), ((1, 1), 3), ((8, 8), 4)])
def test_window_loop_and_attention_maps(grid: tuple, s: int, impl: str) -> None:
    """Both paths equal the explicit window loop; the maps are its weights over the padded grid
    (padded keys take weight) and reproduce forward."""
    m = randomise(
        az.build_mixer("davit_window", d_model=32, num_heads=2, window_size=s, impl=impl), seed=7
    ).double()
    x = torch.randn(2, *grid, 32, dtype=torch.float64)
    want, weights = window_by_hand(m, x)
    torch.testing.assert_close(m(x), want, atol=1e-12, rtol=1e-10)
    maps = m.attention_maps(x)
    M = -(-grid[0] // s) * s * (-(-grid[1] // s) * s)
    assert maps.weights.shape == (2, 2, grid[0] * grid[1], M)
    torch.testing.assert_close(maps.weights, weights, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(maps.output(), want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_window_padding_tokens_are_attended(impl: str) -> None:
    """Padded positions (x = 0) are keys/values, as in timm: the last, partial window's
    output differs from attention over its valid tokens only."""
    torch.manual_seed(5)
    m = biased(az.build_mixer("davit_window", d_model=32, window_size=4, impl=impl), 5)
    x = torch.randn(1, 4, 6, 32)  # windows: cols 0-3 full, cols 4-5 padded to 4
    y = m(x)
    strip = x[:, :, 4:]  # [1, 4, 2, 32]: the valid tokens of the last window
    qkv = strip.reshape(1, 8, 32) @ m.qkv.weight.T + m.qkv.bias
    q, k, v = qkv.view(1, 8, 3, 1, 32).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 8, 32)
    valid_only = (o @ m.proj.weight.T + m.proj.bias).view(1, 4, 2, 32)
    assert (y[:, :, 4:] - valid_only).abs().max() > 1e-3
    # ... and a pixel change in the first window leaves the second untouched
    x2 = x.clone()
    x2[:, 1, 1] += 5.0
    y2 = m(x2)
    assert (y2[:, :, :4] - y[:, :, :4]).abs().max() > 1e-3
    torch.testing.assert_close(y2[:, :, 4:], y[:, :, 4:], atol=0, rtol=0)


def test_window_key_bias_has_no_effect() -> None:
    """The rewrite the fast path relies on: a key bias shifts each softmax row by a constant."""
    torch.manual_seed(6)
    m = biased(az.build_mixer("davit_window", d_model=32, window_size=3, impl="sdpa"), 6)
    ref = az.build_mixer("davit_window", d_model=32, window_size=3, impl="reference")
    x = torch.randn(2, 7, 5, 32)
    y = m(x)
    theirs = WindowAttention(32, (3, 3), num_heads=1)
    theirs.load_state_dict(m.state_dict())
    with torch.no_grad():
        m.qkv.bias[32:64].normal_(0.0, 3.0)
        theirs.qkv.bias[32:64].copy_(m.qkv.bias[32:64])
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), y, atol=0, rtol=0)  # not even read
    torch.testing.assert_close(timm_window_attention(theirs, x, 3), y, **TOL)
    torch.testing.assert_close(ref(x), y, **TOL)  # the reference reads it: same function


def test_defaults_follow_davit() -> None:
    assert az.build_mixer("davit_window", d_model=96).cfg.heads == 3  # head width 32
    assert az.build_mixer("davit_window", d_model=768).cfg.heads == 24
    assert az.build_mixer("davit_window", d_model=48).cfg.heads == 1
    assert az.build_mixer("davit_window", d_model=96).qkv.bias is not None
    assert az.build_mixer("davit_window", d_model=96).cfg.window_size == 7


def test_flops() -> None:
    B, T = 2, 56 * 56
    win = az.build_mixer("davit_window", d_model=96, window_size=7)
    assert win.flops(B, T) == 2 * B * T * 4 * 96 * 96 + 2 * 2 * B * T * 49 * 96
    assert win.flops(B, 2 * T) == 2 * win.flops(B, T)


def test_load_timm_weights_rejects_mismatches() -> None:
    win = az.build_mixer("davit_window", d_model=64, qkv_bias=False)
    with pytest.raises(ValueError, match="davit_window: timm state_dict keys"):
        load_timm_weights(win, WindowAttention(64, (7, 7), num_heads=2, qkv_bias=True))


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"window_size": 0}, ValueError, "davit_window: window_size must be >= 1, got 0"),
        ({"window_size": 7.0}, TypeError, "config 'window_size' must be int"),
        ({"causal": True}, ValueError, "davit_window does not support causal"),
        ({"window": 7}, TypeError, "did you mean 'window_size'"),
        ({"impl": "fast"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'sdpa'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("davit_window", d_model=64, **kw)


def test_exports_a_dynamic_grid_of_multiples() -> None:
    """What the spec's ``ExportSupport.dynamic`` says: sides declared as multiples of the window
    (``Dim(...)*7``) export, and the program equals eager at another such grid."""
    m = randomise(az.build_mixer("davit_window", d_model=16), seed=0, constant_only=True).eval()
    h, w = (torch.export.Dim(n, min=2, max=8) for n in "hw")
    x = torch.randn(2, 14, 21, 16)
    ep = torch.export.export(m, (x,), dynamic_shapes={"x": {1: h * 7, 2: w * 7}})
    x2 = torch.randn(2, 21, 14, 16)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x2), m(x2))
