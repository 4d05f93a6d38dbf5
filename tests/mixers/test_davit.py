"""davit_channel / davit_window against timm's DaViT modules (same weights): outputs, input and
parameter gradients; the pad-and-crop of odd grids as timm's SpatialBlock does it; window
locality; the exact bias rewrites; FLOPs; config and call errors.

Layouts: ours take channels-last ``x [B, h, w, C]``. timm's ``ChannelAttention`` /
``WindowAttention`` take tokens ``[B, N, C]``: ``x.reshape(B, h*w, C)`` (row-major, the same
order as timm's ``x.flatten(2).transpose(1, 2)`` of ``[B, C, h, w]``). timm's blocks take
``[B, C, h, w]``: ``x.permute(0, 3, 1, 2)``, and their output is permuted back.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.davit import (
    ChannelAttention,
    ChannelBlock,
    SpatialBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from torch import nn

import attnzoo as az
from attnzoo.mixers.vision.davit import load_timm_weights

TOL = dict(atol=2e-5, rtol=2e-5)


def randomise_biases(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return module


def compare(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, f_ours, f_theirs) -> None:
    """Equal outputs, input gradients and same-named parameter gradients."""
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = f_ours(xa), f_theirs(xb)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        want = theirs_params[name].grad  # sums over tokens: tolerance scaled by its magnitude
        atol = TOL["atol"] * max(1.0, want.abs().max().item())
        torch.testing.assert_close(p.grad, want, atol=atol, rtol=TOL["rtol"], msg=name)


@pytest.mark.parametrize("impl", ["auto", "gram", "reference"])
@pytest.mark.parametrize(
    "C,H,bias,grid",
    [(64, 2, True, (7, 9)), (96, 3, True, (13, 30)), (32, 4, False, (1, 1)), (48, 1, True, (4, 4))],
)
def test_channel_matches_timm(impl: str, C: int, H: int, bias: bool, grid: tuple) -> None:
    torch.manual_seed(0)
    theirs = randomise_biases(ChannelAttention(C, num_heads=H, qkv_bias=bias))
    ours = az.build_mixer("davit_channel", d_model=C, num_heads=H, qkv_bias=bias, impl=impl)
    load_timm_weights(ours, theirs)
    x = torch.randn(2, *grid, C)
    B, h, w, _ = x.shape
    compare(ours, theirs, x, ours, lambda t: theirs(t.reshape(B, h * w, C)).view(B, h, w, C))


@pytest.mark.parametrize("grid", [(7, 13), (30, 7)])
def test_channel_matches_timm_channel_block(grid: tuple) -> None:
    """timm's ChannelBlock with identity positional convs (zero weights), norm1 = Identity and
    no MLP is ``x + ChannelAttention(x)`` on [B, C, h, w]; ours is the attention term."""
    torch.manual_seed(1)
    block = randomise_biases(ChannelBlock(64, num_heads=2, qkv_bias=True, ffn=False))
    block.norm1 = nn.Identity()
    with torch.no_grad():
        for cpe in (block.cpe1, block.cpe2):
            cpe.proj.weight.zero_()
            cpe.proj.bias.zero_()
    ours = az.build_mixer("davit_channel", d_model=64, num_heads=2)
    load_timm_weights(ours, block.attn)
    x = torch.randn(2, *grid, 64)
    want = block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) - x
    torch.testing.assert_close(ours(x), want, **TOL)


def test_channel_gram_equals_reference_in_float64() -> None:
    torch.manual_seed(2)
    m = randomise_biases(az.build_mixer("davit_channel", d_model=96, impl="gram")).double()
    ref = az.build_mixer("davit_channel", d_model=96, impl="reference").double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 11, 17, 96, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x), atol=1e-12, rtol=1e-12)


def timm_window_attention(attn: WindowAttention, x: torch.Tensor, s: int) -> torch.Tensor:
    """The attention part of timm's SpatialBlock on [B, h, w, C]: pad, partition, attend,
    reverse, crop (pad computed as SpatialBlock does)."""
    B, h, w, C = x.shape
    pad_r, pad_b = (s - w % s) % s, (s - h % s) % s
    xp = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = xp.shape[1:3]
    out = attn(window_partition(xp, (s, s)).view(-1, s * s, C)).view(-1, s, s, C)
    return window_reverse(out, (s, s), Hp, Wp)[:, :h, :w]


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
def test_window_matches_timm(grid: tuple, s: int, C: int, H: int, bias: bool) -> None:
    torch.manual_seed(3)
    theirs = randomise_biases(WindowAttention(C, (s, s), num_heads=H, qkv_bias=bias))
    ours = az.build_mixer("davit_window", d_model=C, num_heads=H, window_size=s, qkv_bias=bias)
    load_timm_weights(ours, theirs)
    x = torch.randn(2, *grid, C)
    compare(ours, theirs, x, ours, lambda t: timm_window_attention(theirs, t, s))


@pytest.mark.parametrize("grid", [(7, 13), (30, 30), (13, 7)])
def test_window_matches_timm_spatial_block(grid: tuple) -> None:
    """timm's SpatialBlock (its own pad/partition/crop) with identity positional convs,
    norm1 = Identity and a zero MLP is ``x + attention``; ours is the attention term."""
    torch.manual_seed(4)
    block = randomise_biases(SpatialBlock(32, num_heads=2, window_size=7))
    block.norm1 = nn.Identity()
    with torch.no_grad():  # (ffn=False breaks SpatialBlock in timm 1.0.31: a zero fc2 instead)
        for lin in (block.cpe1.proj, block.cpe2.proj, block.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    ours = az.build_mixer("davit_window", d_model=32, num_heads=2, window_size=7)
    load_timm_weights(ours, block.attn)
    x = torch.randn(2, *grid, 32)
    want = block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) - x
    torch.testing.assert_close(ours(x), want, **TOL)


def test_window_padding_tokens_are_attended() -> None:
    """Padded positions (x = 0) are keys/values, as in timm: the last, partial window's
    output differs from attention over its valid tokens only."""
    torch.manual_seed(5)
    m = randomise_biases(az.build_mixer("davit_window", d_model=32, window_size=4))
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
    """The rewrite the mixer relies on: a key bias shifts each softmax row by a constant."""
    torch.manual_seed(6)
    m = randomise_biases(az.build_mixer("davit_window", d_model=32, window_size=3))
    x = torch.randn(2, 7, 5, 32)
    y = m(x)
    theirs = WindowAttention(32, (3, 3), num_heads=1)
    theirs.load_state_dict(m.state_dict())
    with torch.no_grad():
        m.qkv.bias[32:64].normal_(0.0, 3.0)
        theirs.qkv.bias[32:64].copy_(m.qkv.bias[32:64])
    torch.testing.assert_close(m(x), y, atol=0, rtol=0)  # not even read
    torch.testing.assert_close(timm_window_attention(theirs, x, 3), y, **TOL)


@pytest.mark.parametrize("grid", [(7, 7), (13, 13), (30, 30), (7, 13), (13, 30)])
@pytest.mark.parametrize("name", ["davit_channel", "davit_window"])
def test_any_grid_shape_finite_gradients(name: str, grid: tuple) -> None:
    m = az.build_mixer(name, d_model=32)
    x = torch.randn(2, *grid, 32, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and y.is_contiguous() and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_defaults_follow_davit() -> None:
    for name in ("davit_channel", "davit_window"):
        assert az.build_mixer(name, d_model=96).cfg.heads == 3  # head width 32
        assert az.build_mixer(name, d_model=768).cfg.heads == 24
        assert az.build_mixer(name, d_model=48).cfg.heads == 1
        assert az.build_mixer(name, d_model=96).qkv.bias is not None
    assert az.build_mixer("davit_window", d_model=96).cfg.window_size == 7


def test_flops() -> None:
    B, T = 2, 56 * 56
    ch = az.build_mixer("davit_channel", d_model=96)
    assert ch.flops(B, T) == 2 * B * T * 4 * 96 * 96 + 2 * 2 * B * T * 96 * 32
    win = az.build_mixer("davit_window", d_model=96, window_size=7)
    assert win.flops(B, T) == 2 * B * T * 4 * 96 * 96 + 2 * 2 * B * T * 49 * 96
    assert win.flops(B, 2 * T) == 2 * win.flops(B, T)


def test_load_timm_weights_rejects_mismatches() -> None:
    ours = az.build_mixer("davit_channel", d_model=64, num_heads=2)
    with pytest.raises(
        ValueError, match=r"davit_channel: timm state_dict keys .* \(check qkv_bias\)"
    ):
        load_timm_weights(ours, ChannelAttention(64, num_heads=2, qkv_bias=False))
    with pytest.raises(ValueError, match=r"davit_channel: timm 'qkv.weight' has shape \(96, 32\)"):
        load_timm_weights(ours, ChannelAttention(32, num_heads=2, qkv_bias=True))
    win = az.build_mixer("davit_window", d_model=64, qkv_bias=False)
    with pytest.raises(ValueError, match="davit_window: timm state_dict keys"):
        load_timm_weights(win, WindowAttention(64, (7, 7), num_heads=2, qkv_bias=True))


@pytest.mark.parametrize(
    "name,kw,exc,match",
    [
        (
            "davit_channel",
            {"num_heads": 3},
            ValueError,
            "d_model=64 is not divisible by num_heads=3",
        ),
        ("davit_channel", {"num_heads": 0}, ValueError, "davit_channel: num_heads must be >= 1"),
        ("davit_channel", {"impl": "fast"}, TypeError, "config 'impl' must be 'auto' \\| 'gram'"),
        ("davit_window", {"window_size": 0}, ValueError, "window_size must be >= 1, got 0"),
        ("davit_window", {"window_size": 7.0}, TypeError, "config 'window_size' must be int"),
        ("davit_window", {"causal": True}, ValueError, "davit_window does not support causal"),
        ("davit_window", {"window": 7}, TypeError, "did you mean 'window_size'"),
    ],
)
def test_bad_config_is_named(name: str, kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer(name, d_model=64, **kw)


@pytest.mark.parametrize("name", ["davit_channel", "davit_window"])
def test_bad_calls_are_named(name: str) -> None:
    m = az.build_mixer(name, d_model=32)
    with pytest.raises(ValueError, match=rf"{name}: x must be \[B, h, w, C\]"):
        m(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="x last dim must be 32"):
        m(torch.randn(2, 4, 4, 16))
    with pytest.raises(ValueError, match=f"{name} does not support pattern 'noncausal-cross'"):
        m(torch.randn(1, 4, 4, 32), context=torch.randn(1, 3, 32))
