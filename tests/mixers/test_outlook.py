"""outlook mixer: equal to timm's ``OutlookAttention`` (outputs, input and parameter gradients)
on odd and even grids, strides 1-3 and kernels 1, 3, 5, equal to an independent by-hand
window loop, the written-out softmax, the receptive field, FLOPs, and config / input /
weight-mapping errors.

Layouts: timm's ``OutlookAttention`` already takes and returns channels-last ``[B, H, W, C]``,
like the mixer, so both get the same tensor; parameters share names and layouts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.volo import OutlookAttention

import attnzoo as az
from attnzoo.mixers.vision import outlook as outlook_module
from attnzoo.mixers.vision.outlook import load_timm_weights, softmax_last

TOL = dict(atol=2e-5, rtol=1e-5)
GTOL = dict(atol=1e-4, rtol=1e-4)  # parameter gradients: fp32 sums over every pixel


def pair(C: int, n: int, k: int, s: int, bias: bool = False) -> tuple[az.Mixer, OutlookAttention]:
    """A timm OutlookAttention with biases away from zero, copied into a mixer."""
    t = OutlookAttention(C, n, kernel_size=k, padding=k // 2, stride=s, qkv_bias=bias)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
    m = az.build_mixer("outlook", d_model=C, num_heads=n, kernel_size=k, stride=s, qkv_bias=bias)
    load_timm_weights(m, t)
    return m, t


CASES = [  # C, heads, kernel, stride, qkv_bias, grid
    (32, 2, 3, 1, False, (7, 13)),
    (32, 2, 3, 2, True, (13, 30)),  # odd H: ceil pooled grid, a half-empty last window
    (48, 3, 3, 2, False, (30, 7)),
    (48, 6, 3, 2, False, (8, 8)),
    (32, 1, 5, 2, False, (7, 9)),
    (32, 4, 3, 3, True, (13, 7)),
    (16, 1, 1, 1, False, (5, 4)),  # 1x1 window: softmax over one weight
    (32, 2, 5, 5, False, (11, 6)),
    (32, 2, 3, 2, False, (1, 1)),
]


@pytest.mark.parametrize(
    "case,chunked",
    [(c, False) for c in CASES] + [(c, True) for c in CASES[:4]],
    ids=lambda c: (
        f"C{c[0]}n{c[1]}k{c[2]}s{c[3]}-{c[5]}" if isinstance(c, tuple) else f"chunked={c}"
    ),
)
def test_matches_timm_outlook_attention(case: tuple, chunked: bool, monkeypatch) -> None:
    C, n, k, s, bias, grid = case
    if chunked:  # two samples per chunk: batch 3 leaves a shorter last chunk
        windows = math.ceil(grid[0] / s) * math.ceil(grid[1] / s) * k * k * C
        monkeypatch.setattr(outlook_module, "CHUNK_ELEMENTS", 2 * windows)
    torch.manual_seed(0)
    m, t = pair(C, n, k, s, bias)
    x = torch.randn(3, *grid, C)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, want = m(x1), t(x2)
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn_like(got)
    (got * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    theirs = dict(t.named_parameters())
    for name, p in m.named_parameters():
        torch.testing.assert_close(
            p.grad, theirs[name].grad, **GTOL, msg=lambda msg, k=name: f"{k}: {msg}"
        )


def outlook_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """Loops over pooled positions (y, x) and window offsets; the centre token is the plain mean
    of the in-image pixels of the stride x stride cell."""
    cfg = m.cfg
    B, H, W, C = x.shape
    n, k, s = cfg.heads, cfg.kernel_size, cfg.stride
    d, p = C // n, k // 2
    v = F.linear(x, m.v.weight, m.v.bias).unflatten(-1, (n, d))  # [B, H, W, n, d]
    out = x.new_zeros(B, H, W, n, d)
    for y in range(math.ceil(H / s)):
        for xx in range(math.ceil(W / s)):
            centre = x[:, y * s : y * s + s, xx * s : xx * s + s].mean((1, 2))  # [B, C]
            a = F.linear(centre, m.attn.weight, m.attn.bias).reshape(B, n, k * k, k * k)
            a = (a * d**-0.5).softmax(-1)
            pix = [(y * s + i // k - p, xx * s + i % k - p) for i in range(k * k)]
            inside = [0 <= py < H and 0 <= px < W for py, px in pix]
            win = torch.stack(  # [B, n, k², d]: zeros outside the image
                [
                    v[:, py, px] if inside[i] else v.new_zeros(B, n, d)
                    for i, (py, px) in enumerate(pix)
                ],
                2,
            )
            o = a @ win  # [B, n, k², d]
            for i, (py, px) in enumerate(pix):
                if inside[i]:
                    out[:, py, px] = out[:, py, px] + o[:, :, i]
    return F.linear(out.flatten(-2), m.proj.weight, m.proj.bias)


@pytest.mark.parametrize("k,s,grid", [(3, 2, (7, 13)), (3, 1, (6, 5)), (5, 3, (13, 7))])
def test_matches_window_loop(k: int, s: int, grid: tuple[int, int]) -> None:
    torch.manual_seed(1)
    m, _ = pair(32, 2, k, s, bias=True)
    x = torch.randn(2, *grid, 32, requires_grad=True)
    got, want = m(x), outlook_by_hand(m, x)
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn_like(got)
    leaves = [x, m.v.weight, m.attn.weight, m.attn.bias, m.proj.weight]
    got_g = torch.autograd.grad((got * g).sum(), leaves)
    want_g = torch.autograd.grad((want * g).sum(), leaves)
    torch.testing.assert_close(got_g[0], want_g[0], **TOL)
    for a, c in zip(got_g[1:], want_g[1:], strict=True):
        torch.testing.assert_close(a, c, **GTOL)


def test_softmax_last_matches_softmax_and_is_stable() -> None:
    torch.manual_seed(2)
    a = torch.randn(4, 5, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(softmax_last(a, 0.3), (0.3 * a).softmax(-1))
    big = softmax_last(a * 1e4, 1.0)  # exp would overflow without the shift
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big, (a * 1e4).softmax(-1))
    a.requires_grad_(True)
    g = torch.randn_like(a)
    got = torch.autograd.grad((softmax_last(a, 0.3) * g).sum(), a)[0]
    want = torch.autograd.grad(((0.3 * a).softmax(-1) * g).sum(), a)[0]
    torch.testing.assert_close(got, want)


def test_receptive_field() -> None:
    """Stride 1, kernel 3: a pixel's value reaches windows centred within 1 and, through them,
    outputs within 2 (Chebyshev); the weights of a window come from its centre only."""
    torch.manual_seed(3)
    m = az.build_mixer("outlook", d_model=16, num_heads=2, stride=1)
    x = torch.randn(1, 11, 11, 16)
    x2 = x.clone()
    x2[:, 5, 5] += 3.0
    d = (m(x) - m(x2)).abs().amax(-1)[0]  # [11, 11]
    assert d[3:8, 3:8].min() > 0
    d[3:8, 3:8] = 0
    assert d.max() == 0


@pytest.mark.parametrize("grid", [(7, 13), (13, 30), (30, 7), (1, 1)])
@pytest.mark.parametrize("stride", [1, 2])
def test_odd_grids_shape_finite_gradients(grid: tuple[int, int], stride: int) -> None:
    m = az.build_mixer("outlook", d_model=48, num_heads=3, stride=stride)
    x = torch.randn(2, *grid, 48, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_defaults_are_volo_stage_one() -> None:
    m = az.build_mixer("outlook", d_model=192, num_heads=6)
    assert (m.cfg.kernel_size, m.cfg.stride, m.cfg.qkv_bias) == (3, 2, False)
    assert m.attn.out_features == 6 * 81 and m.v.bias is None


def test_flops() -> None:
    m = az.build_mixer("outlook", d_model=48, num_heads=3, stride=2)
    B, T, C, n = 2, 28 * 28, 48, 3
    P = 14 * 14
    want = 4 * B * T * C * C + 2 * B * P * C * n * 81 + 2 * B * P * 81 * C
    assert m.flops(B, T) == want


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"kernel_size": 4}, ValueError, "outlook: kernel_size must be a positive odd int.*got 4"),
        ({"kernel_size": 0}, ValueError, "kernel_size must be .*got 0"),
        ({"stride": 0}, ValueError, "stride must be in \\[1, kernel_size=3\\].*got 0"),
        ({"stride": 4}, ValueError, "stride must be in \\[1, kernel_size=3\\].*got 4"),
        ({"num_heads": 5}, ValueError, "d_model=64 is not divisible by num_heads=5"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"stride": 2.0}, TypeError, "config 'stride' must be int"),
        ({"causal": True}, ValueError, "outlook does not support causal=True"),
        ({"kernel": 3}, TypeError, "unknown config key 'kernel' \\(did you mean 'kernel_size'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("outlook", d_model=64, **kw)


def test_weight_mapping_mismatches_are_named() -> None:
    m = az.build_mixer("outlook", d_model=32, num_heads=2, stride=2)
    with pytest.raises(
        ValueError, match=r"stride\)=\(2, 3, 1, 1\), the mixer needs \(2, 3, 1, 2\)"
    ):
        load_timm_weights(m, OutlookAttention(32, 2, stride=1))
    with pytest.raises(ValueError, match="padding"):
        load_timm_weights(m, OutlookAttention(32, 2, padding=0, stride=2))
    with pytest.raises(ValueError, match="does not match"):
        load_timm_weights(m, OutlookAttention(32, 2, stride=2, qkv_bias=True))


def test_bad_calls_are_named() -> None:
    m = az.build_mixer("outlook", d_model=32)
    with pytest.raises(ValueError, match=r"outlook: x must be \[B, h, w, C\] \(channels-last\)"):
        m(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="x last dim must be 32"):
        m(torch.randn(2, 4, 4, 16))
    with pytest.raises(ValueError, match="outlook does not support pattern 'noncausal-cross'"):
        m(torch.randn(1, 4, 4, 32), context=torch.randn(1, 3, 32))
