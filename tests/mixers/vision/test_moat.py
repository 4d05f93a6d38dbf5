"""moat mixer: the fast path against ``impl="reference"`` (deeplab2's ``MOATBlock`` at stride 1
and unchanged width, written out in the block file), plus the mechanism's own properties.

The official code is TensorFlow (https://github.com/google-research/deeplab2,
``model/layers/moat_blocks.py`` and ``moat_attention.py``) and timm 1.0.31 has no MOAT block, so
there is no peer; the reference (:mod:`attnzoo.mixers.vision.moat`) writes the MBConv out with
the BatchNorm formula, 1x1 matmuls and a shift-and-add depthwise conv, the relative position
bias from the half-pixel resize formula of ``tf.image.resize`` and an index table built by
loops, and attends with the window op's dense reference. Comparisons run in eval mode (BatchNorm
with its running statistics) on channels-last ``[B, h, w, C]`` (TensorFlow's NHWC); the mixer's
output is the block's output minus its input.
"""

from __future__ import annotations

import pytest
import torch

import attnzoo as az
from attnzoo.mixers.vision.moat import MOATMixer
from attnzoo.testing import randomise
from tests.helpers import assert_all_close


def pair(**kw: object) -> tuple[MOATMixer, MOATMixer]:
    """The fast path and the reference with the same randomised weights, in eval mode."""
    ref = randomise(az.build_mixer("moat", impl="reference", **kw), seed=7, std=0.3).eval()
    fast = az.build_mixer("moat", **kw).eval()
    fast.load_state_dict(ref.state_dict())
    return fast, ref


CASES = [
    ({}, (7, 7)),  # 13x13 table at its own size: the resize is the identity
    ({}, (5, 9)),  # resized down (13 -> 9) and up (13 -> 17)
    ({"window_size": 4}, (8, 12)),
    ({"window_size": 3, "se_ratio": 0.25}, (6, 3)),
    ({"rel_pos": False}, (7, 13)),
    ({"se_ratio": 0.5, "kernel_size": 5, "expansion_rate": 2}, (4, 6)),
    ({"pos_embed_size": 3, "num_heads": 3}, (2, 5)),
    ({}, (1, 1)),
    # the extension: windows that do not divide the grid (padded, padded keys masked)
    ({"window_size": 4}, (5, 9)),
    ({"window_size": 3, "rel_pos": False}, (7, 2)),
    ({"window_size": 7}, (3, 4)),  # one window larger than the grid
]


@pytest.mark.parametrize("kw,grid", CASES)
def test_fast_matches_reference_forward_and_backward(kw: dict, grid: tuple[int, int]) -> None:
    fast, ref = pair(d_model=16, head_dim=8, **kw)
    torch.manual_seed(8)
    x = torch.randn(2, *grid, 16, requires_grad=True)
    got, want = fast(x), ref(x)
    assert_all_close([got], [want], atol=2e-5, rtol=1e-5)
    g = torch.randn_like(got)
    names = ["x"] + [n for n, _ in fast.named_parameters()]
    ga = torch.autograd.grad((got * g).sum(), [x, *fast.parameters()])
    gb = torch.autograd.grad((want * g).sum(), [x, *ref.parameters()])
    for name, p, q in zip(names, ga, gb, strict=True):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")


def test_relative_bias_reads_the_table_at_key_minus_query() -> None:
    """At ``a = b = P`` the resize is the identity: query ``(i, j)`` and key ``(p, q)`` get
    ``E[p - i + P - 1, q - j + P - 1]`` (the official ``2d_multi_head`` orientation); both
    paths' bias agree at other sizes."""
    fast, ref = pair(d_model=16, head_dim=8, pos_embed_size=3)
    E = ref.relative_position_embedding
    bias = ref.relative_bias_reference(3, 3)  # [H, 9, 9]
    for i, j, p, q in ((0, 0, 2, 1), (2, 1, 0, 0), (1, 2, 1, 0), (1, 1, 1, 1)):
        torch.testing.assert_close(bias[:, i * 3 + j, p * 3 + q], E[:, p - i + 2, q - j + 2])
    for a, b in ((3, 3), (1, 4), (5, 2), (9, 9)):
        torch.testing.assert_close(fast.relative_bias(a, b), ref.relative_bias_reference(a, b))


def test_default_heads_follow_head_size_32() -> None:
    """Official ``num_heads = C // 32`` with head width 32 (so C=48 attends at width 32)."""
    for C, heads in ((32, 1), (48, 1), (64, 2), (256, 8)):
        m = az.build_mixer("moat", d_model=C)
        assert m.cfg.heads == heads and m.qkv.out_features == 3 * 32 * heads
    fast, ref = pair(d_model=48)
    x = torch.randn(1, 3, 4, 48)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=2e-5, rtol=1e-5)


def test_window_equal_to_grid_is_global() -> None:
    g, _ = pair(d_model=16, head_dim=8)
    w = az.build_mixer("moat", d_model=16, head_dim=8, window_size=6).eval()
    w.load_state_dict(g.state_dict())
    x = torch.randn(2, 6, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(w(x), g(x))


@pytest.mark.parametrize("hw", [(7, 7), (13, 7), (7, 30), (30, 13)])
def test_windows_pad_grids_they_do_not_divide(hw: tuple[int, int]) -> None:
    """7x7 windows on any grid (the official code needs h and w divisible by 7): the attention
    weights stay inside each window, never reach a padded key, and reproduce the output."""
    h, w = hw
    m = randomise(az.build_mixer("moat", d_model=32, head_dim=8, window_size=7), seed=1).eval()
    x = torch.randn(1, h, w, 32, dtype=torch.float64)
    m = m.double()
    maps = m.attention_maps(x)
    a = maps.weights  # [1, H, h*w, h*w]
    cell = torch.arange(h)[:, None] // 7 * 100 + torch.arange(w) // 7  # window id per token
    same = cell.flatten()[:, None] == cell.flatten()[None, :]
    assert (a[..., ~same] == 0).all() and (a[..., same] > 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype))
    torch.testing.assert_close(maps.output(), m(x), atol=1e-9, rtol=1e-9)


def test_batchnorm_train_mode() -> None:
    """train(): batch statistics and Keras momentum 0.99 (torch 0.01) on the running stats."""
    m = az.build_mixer("moat", d_model=16, head_dim=8).train()
    x = torch.randn(3, 5, 6, 16)
    m(x)
    mean = x.mean(dim=(0, 1, 2))
    torch.testing.assert_close(m.pre_norm.running_mean, 0.01 * mean)
    assert m.pre_norm.eps == 1e-3 and m.expand_norm.eps == 1e-3
    y_train = m(x)
    assert (y_train - m.eval()(x)).abs().max() > 1e-3


def test_flops() -> None:
    C, E, B, T = 64, 256, 2, 49
    m = az.build_mixer("moat", d_model=C)
    want = 2 * B * T * (C * E + E * 9 + E * C) + 2 * B * T * 4 * C * C + 2 * B * 2 * T * T * 2 * 32
    assert m.flops(B, T) == want
    w = az.build_mixer("moat", d_model=C, window_size=7)
    assert w.flops(B, 4 * T) == 4 * want  # windowed: linear in tokens


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"kernel_size": 2}, ValueError, "moat: kernel_size must be a positive odd int.*got 2"),
        ({"window_size": 0}, ValueError, "moat: window_size must be >= 1, got 0"),
        ({"head_dim": 0}, ValueError, "moat: head_dim must be >= 1, got 0"),
        ({"se_ratio": 0.0}, ValueError, "moat: se_ratio must be > 0 and <= 1, got 0.0"),
        ({"se_ratio": 1.5}, ValueError, "moat: se_ratio must be > 0 and <= 1, got 1.5"),
        ({"bn_eps": 0.0}, ValueError, "moat: bn_eps must be > 0, got 0.0"),
        ({"window_size": 7.0}, TypeError, "config 'window_size' must be int \\| None"),
        ({"causal": True}, ValueError, "moat does not support causal=True"),
        ({"window": 7}, TypeError, "did you mean 'window_size'"),
        ({"impl": "flash"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'sdpa'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("moat", d_model=32, **kw)
