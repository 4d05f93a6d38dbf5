"""moat mixer against a naive formulation of deeplab2's ``MOATBlock`` (stride 1, same width).

The official code is TensorFlow (https://github.com/google-research/deeplab2,
``model/layers/moat_blocks.py`` and ``moat_attention.py``) and timm 1.0.31 has no MOAT block, so
the reference is written out here with elementary torch ops, in eval mode (BatchNorm with its
running statistics):

- BatchNorm ``(x - mean) / sqrt(var + eps) * gamma + beta``, LayerNorm with the biased
  variance, GELU as ``x/2 (1 + erf(x / sqrt 2))`` (``tf.nn.gelu``'s exact form), 1x1 convs as
  einsums, the depthwise conv as a sum of shifted products of the zero-padded input;
- attention window by window in a Python loop, ``softmax`` as ``exp / sum``, the relative
  position bias entry by entry from the table after a bilinear resize written from the
  half-pixel formula of ``tf.image.resize`` (``src = (dst + 0.5) * in / out - 0.5``, indices
  clamped to the edges).

Layout: the mixer and the reference both take channels-last ``[B, h, w, C]`` (TensorFlow's
NHWC); the mixer's output is the block's output minus its input.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.mixers.vision.moat import MOATMixer
from tests.helpers import assert_all_close


def bn(x: torch.Tensor, mod: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Channels-last ``[B, h, w, C]``, running statistics."""
    return (x - mod.running_mean) / torch.sqrt(mod.running_var + mod.eps) * mod.weight + mod.bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


def dw_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Depthwise 'same' conv without bias on ``[B, h, w, C]``; w ``[C, 1, k, k]``."""
    k = w.shape[-1]
    p = k // 2
    xp = F.pad(x, (0, 0, p, p, p, p))
    h, wd = x.shape[1:3]
    out = torch.zeros_like(x)
    for a in range(k):
        for b in range(k):
            out = out + xp[:, a : a + h, b : b + wd] * w[:, 0, a, b]
    return out


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` bilinear weights, half-pixel centres, edge clamping."""
    m = torch.zeros(n_out, n_in)
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        lo = math.floor(src)
        frac = src - lo
        m[o, min(max(lo, 0), n_in - 1)] += 1 - frac
        m[o, min(max(lo + 1, 0), n_in - 1)] += frac
    return m


def rel_bias(table: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``[H, a*b, a*b]``: query (i, j), key (p, q) -> resized[p - i + a - 1, q - j + b - 1]."""
    r = torch.einsum("yh,nhw,xw->nyx", resize_matrix(table.shape[1], 2 * a - 1), table,
                     resize_matrix(table.shape[2], 2 * b - 1))  # fmt: skip
    rows = []
    for i in range(a):
        for j in range(b):
            rows.append(
                torch.stack(
                    [r[:, p - i + a - 1, q - j + b - 1] for p in range(a) for q in range(b)], -1
                )
            )
    return torch.stack(rows, 1)  # [H, a*b (query), a*b (key)]


def moat_naive(m: MOATMixer, x: torch.Tensor) -> torch.Tensor:
    cfg = m.cfg
    B, h, w, C = x.shape
    # MBConv
    t = bn(x, m.pre_norm)
    t = torch.einsum("bhwc,ec->bhwe", t, m.expand_conv.weight[:, :, 0, 0])
    t = gelu(bn(t, m.expand_norm))
    t = gelu(bn(dw_conv(t, m.depthwise_conv.weight), m.depthwise_norm))
    if cfg.se_ratio is not None:
        s = t.mean(dim=(1, 2))  # [B, E]
        s = s @ m.se_reduce.weight[:, :, 0, 0].T + m.se_reduce.bias
        s = s * torch.sigmoid(s)  # swish
        s = s @ m.se_expand.weight[:, :, 0, 0].T + m.se_expand.bias
        t = t * torch.sigmoid(s)[:, None, None, :]
    t = torch.einsum("bhwe,ce->bhwc", t, m.shrink_conv.weight[:, :, 0, 0]) + m.shrink_conv.bias
    y = x + t
    # LayerNorm
    mu = y.mean(-1, keepdim=True)
    var = ((y - mu) ** 2).mean(-1, keepdim=True)
    z = (y - mu) / torch.sqrt(var + cfg.ln_eps) * m.attention_norm.weight + m.attention_norm.bias
    # attention, window by window
    H, d = cfg.heads, cfg.head_dim
    a, b = (h, w) if cfg.window_size is None else (cfg.window_size, cfg.window_size)
    Wq, Wk, Wv = m.qkv.weight.split(H * d)
    bq, bk, bv = m.qkv.bias.split(H * d)
    bias = rel_bias(m.relative_position_embedding, a, b) if cfg.rel_pos else 0.0
    out = torch.zeros_like(y)
    for n in range(B):
        for r0 in range(0, h, a):
            for c0 in range(0, w, b):
                tok = z[n, r0 : r0 + a, c0 : c0 + b].reshape(a * b, C)
                q = (tok @ Wq.T + bq).reshape(a * b, H, d).transpose(0, 1) * d**-0.5
                k = (tok @ Wk.T + bk).reshape(a * b, H, d).transpose(0, 1)
                v = (tok @ Wv.T + bv).reshape(a * b, H, d).transpose(0, 1)
                logits = q @ k.transpose(1, 2) + bias  # [H, a*b, a*b]
                e = torch.exp(logits - logits.amax(-1, keepdim=True))
                o = (e / e.sum(-1, keepdim=True)) @ v  # [H, a*b, d]
                o = o.transpose(0, 1).reshape(a * b, H * d) @ m.o_proj.weight.T + m.o_proj.bias
                out[n, r0 : r0 + a, c0 : c0 + b] = o.reshape(a, b, C)
    return y + out - x


def randomise(m: MOATMixer) -> MOATMixer:
    """Every parameter and BatchNorm statistic away from its init; eval mode."""
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


CASES = [
    ({}, (7, 7)),  # 13x13 table at its own size: the resize is the identity
    ({}, (5, 9)),  # resized down (13 -> 9) and up (13 -> 17)
    ({"window_size": 4}, (8, 12)),
    ({"window_size": 3, "se_ratio": 0.25}, (6, 3)),
    ({"rel_pos": False}, (7, 13)),
    ({"se_ratio": 0.5, "kernel_size": 5, "expansion_rate": 2}, (4, 6)),
    ({"pos_embed_size": 3, "num_heads": 3}, (2, 5)),
    ({}, (1, 1)),
]


@pytest.mark.parametrize("kw,grid", CASES)
def test_matches_naive_forward_and_backward(kw: dict, grid: tuple[int, int]) -> None:
    m = randomise(az.build_mixer("moat", d_model=16, head_dim=8, **kw))
    torch.manual_seed(8)
    x = torch.randn(2, *grid, 16, requires_grad=True)
    got, want = m(x), moat_naive(m, x)
    assert_all_close([got], [want], atol=2e-5, rtol=1e-5)
    g = torch.randn_like(got)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    leaves = [x, *m.parameters()]
    ga = torch.autograd.grad((got * g).sum(), leaves)
    gb = torch.autograd.grad((want * g).sum(), leaves)
    for name, p, q in zip(names, ga, gb, strict=True):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")


def test_default_heads_follow_head_size_32() -> None:
    """Official ``num_heads = C // 32`` with head width 32 (so C=48 attends at width 32)."""
    for C, heads in ((32, 1), (48, 1), (64, 2), (256, 8)):
        m = az.build_mixer("moat", d_model=C)
        assert m.cfg.heads == heads and m.qkv.out_features == 3 * 32 * heads
    m = randomise(az.build_mixer("moat", d_model=48))
    x = torch.randn(1, 3, 4, 48)
    with torch.no_grad():
        torch.testing.assert_close(m(x), moat_naive(m, x), atol=2e-5, rtol=1e-5)


def test_window_equal_to_grid_is_global() -> None:
    g = randomise(az.build_mixer("moat", d_model=16, head_dim=8))
    w = az.build_mixer("moat", d_model=16, head_dim=8, window_size=6).eval()
    w.load_state_dict(g.state_dict())
    x = torch.randn(2, 6, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(w(x), g(x))


@pytest.mark.parametrize("hw", [(7, 7), (13, 7), (7, 30), (30, 13)])
def test_grids_handled_or_named(hw: tuple[int, int]) -> None:
    """Global attention takes any grid; 7x7 windows need h and w divisible by 7."""
    x = torch.randn(1, *hw, 32)
    y = az.build_mixer("moat", d_model=32).eval()(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    win = az.build_mixer("moat", d_model=32, window_size=7).eval()
    if hw == (7, 7):
        assert win(x).shape == x.shape
    else:
        msg = f"moat: h and w must be divisible by window_size=7, got h={hw[0]}, w={hw[1]}"
        with pytest.raises(ValueError, match=msg):
            win(x)


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
        ({"window_size": 0}, ValueError, "window_size must be >= 1, got 0"),
        ({"head_dim": 0}, ValueError, "head_dim must be >= 1, got 0"),
        ({"se_ratio": 0.0}, ValueError, "se_ratio must be in \\(0, 1\\] or None, got 0.0"),
        ({"bn_eps": 0.0}, ValueError, "bn_eps must be > 0"),
        ({"window_size": 7.0}, TypeError, "config 'window_size' must be int \\| None"),
        ({"causal": True}, ValueError, "moat does not support causal=True"),
        ({"window": 7}, TypeError, "did you mean 'window_size'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("moat", d_model=32, **kw)


def test_bad_calls_are_named() -> None:
    m = az.build_mixer("moat", d_model=32)
    with pytest.raises(ValueError, match=r"moat: x must be \[B, h, w, C\] \(channels-last\)"):
        m(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="x last dim must be 32"):
        m(torch.randn(2, 4, 4, 16))
