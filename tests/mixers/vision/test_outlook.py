"""outlook mixer: both paths equal to timm's ``OutlookAttention`` (outputs, input and parameter
gradients) on odd and even grids, strides 1-5 and kernels 1, 3, 5; the ``unfold`` path equal to
``impl="reference"`` (loops over kernel offsets), the written-out softmax, the receptive field,
FLOPs, and config / weight-mapping errors. Shapes on odd grids and bad calls are the contract
tests'.

Layouts: timm's ``OutlookAttention`` already takes and returns channels-last ``[B, H, W, C]``,
like the mixer, so both get the same tensor; parameters share names and layouts.
"""

from __future__ import annotations

import math

import pytest
import torch
from timm.models.volo import OutlookAttention

import attnzoo as az
from attnzoo.mixers.vision import outlook as outlook_module
from attnzoo.mixers.vision.outlook import load_timm_weights, softmax_last
from attnzoo.testing import randomise

TOL = dict(atol=2e-5, rtol=1e-5)
GTOL = dict(atol=1e-4, rtol=1e-4)  # parameter gradients: fp32 sums over every pixel


def pair(
    C: int, n: int, k: int, s: int, bias: bool = False, impl: str = "auto"
) -> tuple[az.Mixer, OutlookAttention]:
    """A timm OutlookAttention with biases away from zero, copied into a mixer."""
    t = OutlookAttention(C, n, kernel_size=k, padding=k // 2, stride=s, qkv_bias=bias)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
    cfg = dict(d_model=C, num_heads=n, kernel_size=k, stride=s, qkv_bias=bias, impl=impl)
    m = az.build_mixer("outlook", **cfg)
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
    "case,impl",
    [(c, i) for c in CASES for i in ("reference", "unfold")]
    + [(c, "unfold-chunked") for c in CASES[:4]],
    ids=lambda c: f"C{c[0]}n{c[1]}k{c[2]}s{c[3]}-{c[5]}" if isinstance(c, tuple) else c,
)
def test_matches_timm_outlook_attention(case: tuple, impl: str, monkeypatch) -> None:
    C, n, k, s, bias, grid = case
    if impl == "unfold-chunked":  # two samples per chunk: batch 3 leaves a shorter last chunk
        windows = math.ceil(grid[0] / s) * math.ceil(grid[1] / s) * k * k * C
        monkeypatch.setattr(outlook_module, "CHUNK_ELEMENTS", 2 * windows)
    torch.manual_seed(0)
    m, t = pair(C, n, k, s, bias, impl=impl.removesuffix("-chunked"))
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


@pytest.mark.parametrize(
    "k,s,grid", [(3, 2, (7, 13)), (3, 1, (6, 5)), (5, 3, (13, 7)), (5, 5, (11, 6))]
)
def test_unfold_matches_reference(k: int, s: int, grid: tuple[int, int]) -> None:
    torch.manual_seed(1)
    ref, _ = pair(32, 2, k, s, bias=True, impl="reference")
    m = az.build_mixer("outlook", d_model=32, num_heads=2, kernel_size=k, stride=s,
                       qkv_bias=True, impl="unfold")  # fmt: skip
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, *grid, 32, requires_grad=True)
    got, want = m(x), ref(x)
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn_like(got)
    got_g = torch.autograd.grad((got * g).sum(), [x, *m.parameters()])
    want_g = torch.autograd.grad((want * g).sum(), [x, *ref.parameters()])
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


def test_defaults_are_volo_stage_one() -> None:
    m = az.build_mixer("outlook", d_model=192, num_heads=6)
    assert (m.cfg.kernel_size, m.cfg.stride, m.cfg.qkv_bias) == (3, 2, False)
    assert m.attn.out_features == 6 * 81 and m.v.bias is None
    assert m.cfg.impl == "auto" and az.get_spec("outlook").fast_impls == ("unfold",)


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
        ({"stride": 0}, ValueError, "outlook: stride must be >= 1, got 0"),
        ({"stride": 4}, ValueError, "stride must be in \\[1, kernel_size=3\\].*got 4"),
        ({"num_heads": 5}, ValueError, "d_model=64 is not divisible by num_heads=5"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"stride": 2.0}, TypeError, "config 'stride' must be int"),
        ({"causal": True}, ValueError, "outlook does not support causal=True"),
        ({"impl": "fold"}, TypeError, "outlook: config 'impl' must be 'auto' \\| 'reference'"),
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


def test_exports_a_dynamic_grid_of_multiples() -> None:
    """What the spec's ``ExportSupport.dynamic`` says: even sides (``Dim(...)*2``, the
    stride) export, and the program equals eager at another such grid."""
    m = randomise(az.build_mixer("outlook", d_model=16), seed=0, constant_only=True).eval()
    h, w = (torch.export.Dim(n, min=2, max=8) for n in "hw")
    x = torch.randn(2, 4, 6, 16)
    ep = torch.export.export(m, (x,), dynamic_shapes={"x": {1: h * 2, 2: w * 2}})
    x2 = torch.randn(2, 6, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x2), m(x2))
