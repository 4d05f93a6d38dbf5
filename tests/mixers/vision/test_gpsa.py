"""gpsa against timm's ``convit.GPSA`` on square grids (same weights, both paths: outputs, input
and parameter gradients, and the attention maps against timm's ``get_attention``), the ``sdpa``
path against ``impl="reference"`` (materialised pairwise weights) on non-square grids, ConViT's
local initialisation, the positional attention's locality, FLOPs and config errors. Shapes,
odd grids, bad calls and the maps' decomposition are the contract tests'.

Layouts: ours take channels-last ``x [B, h, w, C]``; timm's GPSA takes tokens ``[B, N, C]``
(``x.reshape(B, h*w, C)``, row-major like ConViT's patch embedding ``flatten(2).transpose(1, 2)``)
and assumes a square ``sqrt(N) x sqrt(N)`` grid.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.convit import GPSA
from torch import nn

import attnzoo as az
from attnzoo.mixers.vision.gpsa import load_timm_weights, relative_offsets

TOL = dict(atol=2e-5, rtol=2e-5)


def timm_gpsa(C: int, H: int, bias: bool, strength: float = 1.0) -> GPSA:
    """timm GPSA initialised as ConViT does, then biases and gates moved off their init."""
    t = GPSA(C, num_heads=H, qkv_bias=bias, locality_strength=strength)
    t.local_init()
    with torch.no_grad():
        t.gating_param.normal_(0.0, 1.5)
        for name, p in t.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return t


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize(
    "C,H,bias,side", [(192, 4, False, 14), (72, 9, True, 7), (32, 1, False, 1), (96, 2, True, 5)]
)
def test_matches_timm_on_square_grids(C: int, H: int, bias: bool, side: int, impl: str) -> None:
    torch.manual_seed(0)
    theirs = timm_gpsa(C, H, bias)
    ours = az.build_mixer("gpsa", d_model=C, num_heads=H, qkv_bias=bias, impl=impl)
    load_timm_weights(ours, theirs)
    x = torch.randn(2, side, side, C)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb.reshape(2, side * side, C)).view(x.shape)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():  # same names; timm's pos_proj.bias has none here
        want = theirs_params[name].grad
        atol = TOL["atol"] * max(1.0, want.abs().max().item())
        torch.testing.assert_close(p.grad, want, atol=atol, rtol=TOL["rtol"], msg=name)
    assert theirs.pos_proj.bias.grad.abs().max() < 1e-5  # softmax ignores it: nothing dropped


@pytest.mark.parametrize("side", [1, 5, 7])
def test_maps_equal_timm_get_attention(side: int) -> None:
    """The maps' weights are ConViT's renormalised gated mixture, as timm's ``get_attention``
    returns it (square grids)."""
    torch.manual_seed(4)
    theirs = timm_gpsa(72, 9, True)
    ours = az.build_mixer("gpsa", d_model=72, num_heads=9, qkv_bias=True)
    load_timm_weights(ours, theirs)
    x = torch.randn(2, side, side, 72)
    tokens = x.reshape(2, side * side, 72)
    theirs.rel_indices = theirs.get_rel_indices(side * side)
    with torch.no_grad():
        got, want = ours.attention_maps(x).weights, theirs.get_attention(tokens)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("grid", [(7, 13), (13, 7), (3, 30), (1, 13)])
def test_non_square_grids_sdpa_matches_reference(grid: tuple) -> None:
    torch.manual_seed(1)
    ref = az.build_mixer("gpsa", d_model=36, num_heads=4, qkv_bias=True, impl="reference")
    with torch.no_grad():
        ref.gating_param.normal_(0.0, 1.5)
        ref.pos_proj.weight.add_(torch.randn_like(ref.pos_proj.weight) * 0.3)
        ref.qk.bias.normal_(0.0, 0.5)
    m = az.build_mixer("gpsa", d_model=36, num_heads=4, qkv_bias=True, impl="sdpa")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, *grid, 36, requires_grad=True)
    y, want = m(x), ref(x)
    torch.testing.assert_close(y, want, **TOL)
    g = torch.randn_like(y)
    names = ["qk.weight", "v.weight", "pos_proj.weight", "gating_param", "proj.weight"]
    got_g = torch.autograd.grad((y * g).sum(), [x, *(m.get_parameter(n) for n in names)])
    want_g = torch.autograd.grad((want * g).sum(), [x, *(ref.get_parameter(n) for n in names)])
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(
            a, b, atol=TOL["atol"] * max(1.0, b.abs().max().item()), rtol=1e-4
        )


def test_transposed_grid_is_not_the_same_mixer() -> None:
    """The positional part reads the true grid: a 7 x 13 input and its 13 x 7 transpose (same
    tokens, other neighbours) give different outputs when the gate favours position."""
    torch.manual_seed(2)
    m = az.build_mixer("gpsa", d_model=36, num_heads=4)
    x = torch.randn(1, 7, 13, 36)
    a = m(x).reshape(1, 91, 36)
    b = m(x.reshape(1, 13, 7, 36)).reshape(1, 91, 36)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("side", [1, 5, 14])
def test_offsets_equal_timm_rel_indices(side: int) -> None:
    t = GPSA(32, num_heads=1)
    want = t.get_rel_indices(side * side)[0]  # [N, N, 3]
    got = relative_offsets(side, side, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(got.permute(1, 2, 0), want, atol=0, rtol=0)


@pytest.mark.parametrize("H,strength", [(1, 1.0), (2, 1.0), (4, 1.0), (9, 0.5), (16, 2.0)])
def test_local_init_equals_convit(H: int, strength: float) -> None:
    C = 16 * H
    t = GPSA(C, num_heads=H, locality_strength=strength)
    with torch.no_grad():
        t.pos_proj.weight.zero_()
    t.local_init()
    m = az.build_mixer("gpsa", d_model=C, num_heads=H, locality_strength=strength)
    k2 = int(H**0.5) ** 2
    torch.testing.assert_close(m.pos_proj.weight[:k2], t.pos_proj.weight[:k2], atol=0, rtol=0)
    # the other rows keep ConViT's trunc_normal_(std=0.02) (cut at +-2 absolute, as in timm)
    assert m.pos_proj.weight[k2:].abs().sum() < 0.2 * (H - k2) * 3 + 1e-9
    torch.testing.assert_close(m.v.weight, torch.eye(C), atol=0, rtol=0)
    torch.testing.assert_close(m.gating_param, torch.ones(H), atol=0, rtol=0)
    assert 0.015 < m.qk.weight.std() < 0.025 and 0.015 < m.proj.weight.std() < 0.025
    assert m.proj.bias.abs().max() == 0
    plain = az.build_mixer("gpsa", d_model=C, num_heads=H, local_init=False)
    assert 0.015 < plain.v.weight.std() < 0.025 and plain.pos_proj.weight.abs().max() < 0.2


def test_local_init_heads_attend_to_their_kernel_offset() -> None:
    """With 9 heads, a sharp locality (alpha = 20) and the gate at 1, head h1 + 3*h2 copies the
    token at offset (dy, dx) = (h1 - 1, h2 - 1) (v = I, proj = I): a 3 x 3 convolution."""
    torch.manual_seed(3)
    m = az.build_mixer("gpsa", d_model=18, num_heads=9, locality_strength=20.0)
    with torch.no_grad():
        m.gating_param.fill_(40.0)
        m.proj.weight.copy_(torch.eye(18))
        m.proj.bias.zero_()
    x = torch.randn(1, 6, 8, 18)
    y = m(x)
    for h1 in range(3):
        for h2 in range(3):
            head = slice(2 * (h1 + 3 * h2), 2 * (h1 + 3 * h2) + 2)
            dy, dx = h1 - 1, h2 - 1
            torch.testing.assert_close(
                y[0, 1:5, 1:7, head],
                x[0, 1 + dy : 5 + dy, 1 + dx : 7 + dx, head],
                atol=1e-5,
                rtol=0,
            )


def test_defaults_follow_convit() -> None:
    m = az.build_mixer("gpsa", d_model=192)
    assert m.cfg.heads == 4 and m.qk.bias is None and m.cfg.locality_strength == 1.0
    assert m.cfg.impl == "auto" and az.get_spec("gpsa").fast_impls == ("sdpa",)
    assert az.build_mixer("gpsa", d_model=432).cfg.heads == 9
    assert az.build_mixer("gpsa", d_model=64).cfg.heads == 1


def test_flops() -> None:
    m = az.build_mixer("gpsa", d_model=192)
    B, T, C, H = 2, 196, 192, 4
    want = 2 * B * T * 4 * C * C + 2 * 3 * B * T * T * C + 2 * H * T * T * 3
    assert m.flops(B, T) == want


def test_load_timm_weights_rejects_mismatches() -> None:
    ours = az.build_mixer("gpsa", d_model=64, num_heads=4)
    with pytest.raises(ValueError, match=r"gpsa: timm state_dict keys .* \(check qkv_bias\)"):
        load_timm_weights(ours, GPSA(64, num_heads=4, qkv_bias=True))
    with pytest.raises(ValueError, match=r"gpsa: timm 'pos_proj.bias' has shape \(2,\)"):
        load_timm_weights(ours, GPSA(64, num_heads=2))
    with pytest.raises(ValueError, match=r"gpsa: timm 'qk.weight' has shape \(96, 48\)"):
        load_timm_weights(ours, GPSA(48, num_heads=4))
    assert not isinstance(ours.pos_proj.bias, nn.Parameter)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"num_heads": 3}, ValueError, "gpsa: d_model=64 is not divisible by num_heads=3"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"locality_strength": 0.0}, ValueError, "locality_strength must be a finite float > 0"),
        ({"locality_strength": float("nan")}, ValueError, "locality_strength must be"),
        ({"impl": "fused"}, TypeError, "gpsa: config 'impl' must be 'auto' \\| 'reference'"),
        ({"local_init": 1}, TypeError, "config 'local_init' must be bool"),
        ({"causal": True}, ValueError, "gpsa does not support causal=True"),
        ({"locality_strengh": 1.0}, TypeError, "did you mean 'locality_strength'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("gpsa", d_model=64, **kw)
