"""davit_channel: both paths (``gram`` and ``reference``, and ``auto``) against timm's
``ChannelAttention`` and ``ChannelBlock`` (same weights: outputs, input and parameter
gradients), ``gram`` against the reference in float64, DaViT's defaults, FLOPs, config and
weight-mapping errors. (Call errors, odd grids and the gate: tests/contract.)

Layouts: ours take channels-last ``x [B, h, w, C]``. timm's ``ChannelAttention`` takes tokens
``[B, N, C]``: ``x.reshape(B, h*w, C)`` (row-major, the same order as timm's
``x.flatten(2).transpose(1, 2)`` of ``[B, C, h, w]``). timm's ``ChannelBlock`` takes
``[B, C, h, w]``: ``x.permute(0, 3, 1, 2)``, and its output is permuted back.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.davit import ChannelAttention, ChannelBlock
from torch import nn

import attnzoo as az
from attnzoo.mixers.vision.davit_channel import load_timm_weights
from attnzoo.peers import randomise_biases
from tests.helpers import assert_same_module

TOL = dict(atol=2e-5, rtol=2e-5)


def biased(module: nn.Module, seed: int) -> nn.Module:
    """Biases drawn N(0, 0.5²) (zero or small biases would hide a bias-mapping bug)."""
    return randomise_biases(module, torch.Generator().manual_seed(seed), std=0.5)


def compare(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, f_ours, f_theirs) -> None:
    assert_same_module(ours, theirs, x, f_ours, f_theirs, **TOL)


@pytest.mark.parametrize("impl", ["auto", "gram", "reference"])
@pytest.mark.parametrize(
    "C,H,bias,grid",
    [(64, 2, True, (7, 9)), (96, 3, True, (13, 30)), (32, 4, False, (1, 1)), (48, 1, True, (4, 4))],
)
def test_channel_matches_timm(impl: str, C: int, H: int, bias: bool, grid: tuple) -> None:
    torch.manual_seed(0)
    theirs = biased(ChannelAttention(C, num_heads=H, qkv_bias=bias), 0)
    ours = az.build_mixer("davit_channel", d_model=C, num_heads=H, qkv_bias=bias, impl=impl)
    load_timm_weights(ours, theirs)
    x = torch.randn(2, *grid, C)
    B, h, w, _ = x.shape
    compare(ours, theirs, x, ours, lambda t: theirs(t.reshape(B, h * w, C)).view(B, h, w, C))


@pytest.mark.parametrize("impl", ["gram", "reference"])
@pytest.mark.parametrize("grid", [(7, 13), (30, 7)])
def test_channel_matches_timm_channel_block(grid: tuple, impl: str) -> None:
    """timm's ChannelBlock with identity positional convs (zero weights), norm1 = Identity and
    no MLP is ``x + ChannelAttention(x)`` on [B, C, h, w]; ours is the attention term."""
    torch.manual_seed(1)
    block = biased(ChannelBlock(64, num_heads=2, qkv_bias=True, ffn=False), 1)
    block.norm1 = nn.Identity()
    with torch.no_grad():
        for cpe in (block.cpe1, block.cpe2):
            cpe.proj.weight.zero_()
            cpe.proj.bias.zero_()
    ours = az.build_mixer("davit_channel", d_model=64, num_heads=2, impl=impl)
    load_timm_weights(ours, block.attn)
    x = torch.randn(2, *grid, 64)
    want = block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) - x
    torch.testing.assert_close(ours(x), want, **TOL)


def test_channel_gram_equals_reference_in_float64() -> None:
    torch.manual_seed(2)
    m = biased(az.build_mixer("davit_channel", d_model=96, impl="gram"), 2).double()
    ref = az.build_mixer("davit_channel", d_model=96, impl="reference").double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 11, 17, 96, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x), atol=1e-12, rtol=1e-12)


def test_defaults_follow_davit() -> None:
    assert az.build_mixer("davit_channel", d_model=96).cfg.heads == 3  # head width 32
    assert az.build_mixer("davit_channel", d_model=768).cfg.heads == 24
    assert az.build_mixer("davit_channel", d_model=48).cfg.heads == 1
    assert az.build_mixer("davit_channel", d_model=96).qkv.bias is not None


def test_flops() -> None:
    B, T = 2, 56 * 56
    ch = az.build_mixer("davit_channel", d_model=96)
    assert ch.flops(B, T) == 2 * B * T * 4 * 96 * 96 + 2 * 2 * B * T * 96 * 32


def test_load_timm_weights_rejects_mismatches() -> None:
    ours = az.build_mixer("davit_channel", d_model=64, num_heads=2)
    with pytest.raises(
        ValueError, match=r"davit_channel: timm state_dict keys .* \(check qkv_bias\)"
    ):
        load_timm_weights(ours, ChannelAttention(64, num_heads=2, qkv_bias=False))
    with pytest.raises(ValueError, match=r"davit_channel: timm 'qkv.weight' has shape \(96, 32\)"):
        load_timm_weights(ours, ChannelAttention(32, num_heads=2, qkv_bias=True))


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"num_heads": 3}, ValueError, "d_model=64 is not divisible by num_heads=3"),
        ({"num_heads": 0}, ValueError, "davit_channel: num_heads must be >= 1"),
        ({"impl": "fast"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'gram'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("davit_channel", d_model=64, **kw)
