"""lka mixer: both paths against a by-hand formulation of VAN's ``LKA`` / ``Attention``, the
``conv`` path against ``impl="reference"``, the official parameter names, the receptive field,
locality and FLOPs, and config errors. Shapes, odd grids and bad calls are the contract tests'.

timm 1.0.31 has no VAN, so the peer is written out here from the official ``models/van.py``
(https://github.com/Visual-Attention-Network/VAN-Classification): every depthwise (dilated)
convolution is a sum of shifted, per-channel scaled copies of the zero-padded input,
``out[c, i, j] = b[c] + sum_{a, b} W[c, a, b] * x_pad[c, i + d*a, j + d*b]``, and every 1x1
convolution an einsum over channels, all on ``[B, C, h, w]`` tensors (the official layout); the
mixer takes channels-last input, converted explicitly below. The library's reference runs with
``F.conv2d``, ``F.linear`` and ``F.gelu`` disabled, so it is checked independently of the ops
the ``conv`` path uses.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.mixers.vision.lka import LKAMixer
from attnzoo.testing import randomise
from tests.helpers import assert_all_close


def dw_conv_naive(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dil: int) -> torch.Tensor:
    """Depthwise 'same' convolution as a sum of shifted products. x ``[B, C, h, w]``,
    w ``[C, 1, k, k]`` (k odd)."""
    k = w.shape[-1]
    pad = dil * (k // 2)
    xp = F.pad(x, (pad, pad, pad, pad))
    h, wd = x.shape[-2:]
    out = b.view(1, -1, 1, 1).expand_as(x).clone()
    for a in range(k):
        for c in range(k):
            shifted = xp[:, :, a * dil : a * dil + h, c * dil : c * dil + wd]
            out = out + w[:, 0, a, c].view(1, -1, 1, 1) * shifted
    return out


def pw_conv_naive(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oi,bihw->bohw", w[:, :, 0, 0], x) + b.view(1, -1, 1, 1)


def gelu_naive(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


def van_naive(m: LKAMixer, x_nhwc: torch.Tensor) -> torch.Tensor:
    """The official Attention (or bare LKA) on ``[B, C, h, w]``, back to channels-last."""
    cfg, sgu = m.cfg, m.spatial_gating_unit
    x = x_nhwc.permute(0, 3, 1, 2)  # [B, h, w, C] -> [B, C, h, w]
    u = gelu_naive(pw_conv_naive(x, m.proj_1.weight, m.proj_1.bias)) if cfg.wrapper else x
    attn = dw_conv_naive(u, sgu.conv0.weight, sgu.conv0.bias, 1)
    attn = dw_conv_naive(attn, sgu.conv_spatial.weight, sgu.conv_spatial.bias, cfg.dilation)
    attn = pw_conv_naive(attn, sgu.conv1.weight, sgu.conv1.bias)
    y = u * attn
    if cfg.wrapper:
        y = pw_conv_naive(y, m.proj_2.weight, m.proj_2.bias)
    if cfg.use_shortcut:
        y = y + x
    return y.permute(0, 2, 3, 1)  # [B, C, h, w] -> [B, h, w, C]


def build(**kw: object) -> LKAMixer:
    """An lka mixer with every parameter drawn N(0, 0.3²)."""
    return randomise(az.build_mixer("lka", **kw), seed=5, std=0.3)


def _disabled(name: str):
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"impl='reference' called F.{name}")

    return fail


CASES = [
    ({}, (7, 7)),
    ({}, (13, 30)),
    ({"wrapper": False}, (13, 7)),
    ({"wrapper": False, "shortcut": True}, (5, 6)),
    ({"shortcut": False}, (7, 13)),
    ({"kernel_size": 3, "dilated_kernel_size": 5, "dilation": 2}, (9, 4)),
    ({"dilation": 1, "dilated_kernel_size": 3}, (1, 1)),
]


@pytest.mark.parametrize("impl", ["reference", "conv"])
@pytest.mark.parametrize("kw,grid", CASES)
def test_matches_naive_forward_and_backward(
    kw: dict, grid: tuple[int, int], impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = build(d_model=16, impl=impl, **kw)
    if impl == "reference":  # the reference owes nothing to the conv path's ops
        for name in ("conv2d", "linear", "gelu"):
            monkeypatch.setattr(F, name, _disabled(name))
    torch.manual_seed(6)
    x = torch.randn(2, *grid, 16, requires_grad=True)
    got, want = m(x), van_naive(m, x)
    assert_all_close([got], [want], atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    leaves = [x, *m.parameters()]
    names = ["x"] + [n for n, _ in m.named_parameters()]
    ga = torch.autograd.grad((got * g).sum(), leaves)
    gb = torch.autograd.grad((want * g).sum(), leaves)
    for name, a, b in zip(names, ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("kw,grid", CASES)
def test_conv_matches_reference(kw: dict, grid: tuple[int, int]) -> None:
    ref = build(d_model=16, impl="reference", **kw)
    m = az.build_mixer("lka", d_model=16, impl="conv", **kw)
    m.load_state_dict(ref.state_dict())
    torch.manual_seed(7)
    x = torch.randn(2, *grid, 16, requires_grad=True)
    got, want = m(x), ref(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    ga = torch.autograd.grad((got * g).sum(), [x, *m.parameters()])
    gb = torch.autograd.grad((want * g).sum(), [x, *ref.parameters()])
    for name, a, b in zip(names, ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")


def test_parameters_are_the_official_attention_module() -> None:
    """Names and shapes equal VAN's ``Attention(d_model)`` state dict, so it loads as is."""
    C = 32
    sd = az.build_mixer("lka", d_model=C).state_dict()
    want = {
        "proj_1.weight": (C, C, 1, 1),
        "proj_1.bias": (C,),
        "spatial_gating_unit.conv0.weight": (C, 1, 5, 5),
        "spatial_gating_unit.conv0.bias": (C,),
        "spatial_gating_unit.conv_spatial.weight": (C, 1, 7, 7),
        "spatial_gating_unit.conv_spatial.bias": (C,),
        "spatial_gating_unit.conv1.weight": (C, C, 1, 1),
        "spatial_gating_unit.conv1.bias": (C,),
        "proj_2.weight": (C, C, 1, 1),
        "proj_2.bias": (C,),
    }
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    bare = az.build_mixer("lka", d_model=C, wrapper=False).state_dict()
    assert set(bare) == {k for k in want if k.startswith("spatial_gating_unit")}


def test_receptive_field_is_the_23x23_box() -> None:
    """5x5 then 7x7 with dilation 3: offsets a + 3b (|a| <= 2, |b| <= 3) cover every integer in
    [-11, 11], so a point change reaches exactly the 23x23 box around it."""
    m = build(d_model=8)
    assert m.cfg.receptive_field == 23
    x = torch.randn(1, 31, 31, 8)
    x2 = x.clone()
    x2[0, 15, 15] += torch.randn(8)
    with torch.no_grad():
        d = (m(x) - m(x2)).abs().amax(-1)[0]  # [31, 31]
    inside = torch.zeros(31, 31, dtype=torch.bool)
    inside[4:27, 4:27] = True
    assert d[inside].min() > 0 and d[~inside].max() == 0


def test_linear_in_tokens() -> None:
    """FLOPs grow exactly linearly in h*w, and the mixer is per-pixel local: the output on a big
    grid restricted to an interior crop equals the output on a crop padded by the receptive
    radius (no global term)."""
    m = build(d_model=8)
    assert m.flops(2, 2 * 4096) == 2 * m.flops(2, 4096)
    C = 8
    want = 2 * 2 * 100 * (C * (25 + 49 + C) + 2 * C * C)
    assert m.flops(2, 100) == want
    assert (
        az.build_mixer("lka", d_model=8, wrapper=False).flops(2, 100)
        == want - 2 * 2 * 100 * 2 * C * C
    )
    x = torch.randn(1, 60, 60, 8)
    with torch.no_grad():
        full = m(x)[0, 25:35, 25:35]
        crop = m(x[:, 14:46, 14:46])[0, 11:21, 11:21]  # 11 = receptive radius
    torch.testing.assert_close(full, crop, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"kernel_size": 4}, ValueError, "lka: kernel_size must be a positive odd int.*got 4"),
        ({"dilated_kernel_size": 0}, ValueError, "dilated_kernel_size must be a positive odd"),
        ({"dilation": 0}, ValueError, "dilation must be >= 1, got 0"),
        ({"wrapper": "yes"}, TypeError, "config 'wrapper' must be bool"),
        ({"shortcut": 1}, TypeError, "config 'shortcut' must be bool \\| None"),
        ({"causal": True}, ValueError, "lka does not support causal=True"),
        ({"impl": "fft"}, TypeError, "lka: config 'impl' must be 'auto' \\| 'reference'"),
        ({"dilaton": 2}, TypeError, "did you mean 'dilation'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("lka", d_model=32, **kw)
