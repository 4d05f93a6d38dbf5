"""axial, axial3d, axial_ar: the grid blocks equal lucidrains' ``AxialAttention`` (both
``sum_axial_out`` settings, 2-D and 3-D, both paths: outputs, input and parameter gradients);
both grid blocks and the decoder equal a formulation over the flattened tokens with dense axial
masks (torch's SDPA with ``attn_mask``, the xformers ``axial_2d_pattern`` idea); the length-1
axis identity; the decoder's causality across row boundaries and its receptive field (the whole
causal prefix in one block), padding that never leaks; ``sdpa`` equal to ``reference`` at odd
sizes; FLOPs; config and weight-mapping errors. (Call errors, odd grids, export, low precision
and the gate: tests/contract.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from axial_attention import AxialAttention

import attnzoo as az
from attnzoo.mixers.vision.axial import AxialPass, load_peer_weights
from attnzoo.ops.common import attention_flops
from attnzoo.ops.softmax import softmax_attention
from attnzoo.testing import randomise
from tests.helpers import assert_paths_equal

TOL = dict(atol=2e-5, rtol=1e-5)
# two formulations of the same math in float64: chained passes with randomised weights amplify
# float32 rounding beyond a tight bound, float64 leaves only the formulations' differences
F64 = dict(atol=1e-10, rtol=1e-10)
GRIDS = {2: (5, 7), 3: (3, 4, 5)}
NAMES = {2: "axial", 3: "axial3d"}


def peer_pair(n: int, combine: str, impl: str, C: int = 32, H: int = 4):
    """The peer with weights and biases away from their init, copied into a mixer."""
    peer = AxialAttention(C, num_dimensions=n, heads=H, dim_index=-1,
                          sum_axial_out=combine == "sum")  # fmt: skip
    with torch.no_grad():
        for p in peer.parameters():
            p.normal_(0.0, 0.2)
    m = az.build_mixer(NAMES[n], d_model=C, num_heads=H, combine=combine, impl=impl)
    load_peer_weights(m, peer)
    return m, peer


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("combine", ["sum", "sequential"])
@pytest.mark.parametrize("n", [2, 3])
def test_matches_peer(n: int, combine: str, impl: str) -> None:
    torch.manual_seed(0)
    m, peer = peer_pair(n, combine, impl)
    x = torch.randn(2, *GRIDS[n], 32)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, want = m(x1), peer(x2)
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn(got.shape)
    (got * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    theirs = {k.replace("axial_attentions.", "passes.").replace(".fn.", "."): p
              for k, p in peer.named_parameters()}  # fmt: skip
    for name, p in m.named_parameters():
        scaled = 1e-4 * max(1.0, theirs[name].grad.abs().max().item())
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=scaled, rtol=1e-4, msg=name)


def dense_pass(p: AxialPass, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A pass over flattened tokens ``x [B, N, C]`` with a dense ``[N, N]`` mask, by torch's
    SDPA: the axial pattern written as a mask instead of lines."""
    q = p.to_q(x).unflatten(-1, (p.heads, -1)).transpose(1, 2)  # [B, H, N, K]
    k, v = (t.unflatten(-1, (p.heads, -1)).transpose(1, 2) for t in p.to_kv(x).chunk(2, -1))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, H, N, K]
    return p.to_out(o.transpose(1, 2).flatten(2))


def coords(grid: tuple[int, ...]) -> torch.Tensor:
    """Row-major grid coordinates of the flattened tokens: ``[N, n]``."""
    return torch.cartesian_prod(*(torch.arange(s) for s in grid)).reshape(-1, len(grid))


def line_mask(grid: tuple[int, ...], axis: int, causal: bool = False) -> torch.Tensor:
    """Token i sees token j iff they share every coordinate but ``axis`` (and, causal, j's
    coordinate along it is not after i's)."""
    c = coords(grid)
    others = [d for d in range(len(grid)) if d != axis]
    same = (c[:, None, others] == c[None, :, others]).all(-1)
    if causal:
        same &= c[None, :, axis] <= c[:, None, axis]
    return same


@pytest.mark.parametrize("combine", ["sum", "sequential"])
@pytest.mark.parametrize("n", [2, 3])
def test_grid_blocks_equal_dense_axial_masks(n: int, combine: str) -> None:
    grid = GRIDS[n]
    m = randomise(az.build_mixer(NAMES[n], d_model=24, num_heads=3, combine=combine), seed=1)
    m = m.double()
    x = torch.randn(2, *grid, 24, dtype=torch.float64)
    flat = x.flatten(1, -2)
    outs, h = [], flat
    for a, p in enumerate(m.passes):
        out = dense_pass(p, flat if combine == "sum" else h, line_mask(grid, a))
        outs.append(out)
        h = out
    want = sum(outs) if combine == "sum" else h
    torch.testing.assert_close(m(x).flatten(1, -2), want, **F64)


def test_size_one_axis_identity() -> None:
    """h = 1: the pass along h attends each token to itself only (weight 1), so it is the value
    projection then the output projection; the pass along w is plain softmax attention on the
    row. sum: ``out_h(v_h(x)) + out_w(softmax(q_w, k_w, v_w))``; sequential: the w pass applied
    to ``out_h(v_h(x))``."""
    x = torch.randn(2, 1, 9, 32)
    for combine in ("sum", "sequential"):
        m = randomise(az.build_mixer("axial", d_model=32, num_heads=4, combine=combine), seed=2)
        ph, pw = m.passes
        own = ph.to_out(ph.to_kv(x).chunk(2, -1)[1])  # [B, 1, w, C]: softmax over one key is 1

        def row(z: torch.Tensor, p: AxialPass = pw) -> torch.Tensor:
            q = p.to_q(z[:, 0]).unflatten(-1, (4, 8))  # [B, w, H, K]
            k, v = (t.unflatten(-1, (4, 8)) for t in p.to_kv(z[:, 0]).chunk(2, -1))
            return p.to_out(softmax_attention(q, k, v, impl="reference").flatten(2))[:, None]

        want = own + row(x) if combine == "sum" else row(own)
        for impl in ("reference", "sdpa"):
            m2 = az.build_mixer("axial", d_model=32, num_heads=4, combine=combine, impl=impl)
            m2.load_state_dict(m.state_dict())
            torch.testing.assert_close(m2(x), want, **TOL)


# ---- the autoregressive decoder ---------------------------------------------------------------
def ar(row_width: int | None = 5, impl: str = "auto", d: int = 24, seed: int = 3) -> az.Mixer:
    m = az.build_mixer("axial_ar", d_model=d, num_heads=3, causal=True, row_width=row_width,
                       impl=impl)  # fmt: skip
    return randomise(m, seed=seed)


def dense_ar(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """The decoder on flattened tokens: dense row / causal column / causal row masks on the
    padded ``R x W`` grid, the shift down as a shift by ``W`` tokens."""
    B, T, D = x.shape
    W = m.cfg.width(T)
    R = math.ceil(T / W)
    g = F.pad(x, (0, 0, 0, R * W - T))  # [B, R*W, D]
    c = dense_pass(m.outer_row, g, line_mask((R, W), 1))
    c = dense_pass(m.outer_col, c, line_mask((R, W), 0, causal=True))
    u = torch.cat([x.new_zeros(B, W, D), c[:, : (R - 1) * W]], dim=1)
    return dense_pass(m.inner_row, g + u, line_mask((R, W), 1, causal=True))[:, :T]


@pytest.mark.parametrize("T,row_width", [(23, 5), (25, 5), (4, 5), (1, 5), (17, None), (30, 1)])
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_decoder_equals_dense_masks(T: int, row_width: int | None, impl: str) -> None:
    m = ar(row_width, impl).double()
    x = torch.randn(2, T, 24, dtype=torch.float64)
    torch.testing.assert_close(m(x), dense_ar(m, x), **F64)


@pytest.mark.parametrize("s", [0, 4, 5, 9, 10, 14, 19, 20, 22])  # row boundaries at 5, 10, ...
def test_decoder_causality_across_rows(s: int) -> None:
    """T = 23 in rows of 5 (the last row 3 tokens + 2 padded): perturbing token s changes no
    output before s and the output at s and every later one."""
    m = ar(5)
    x = torch.randn(2, 23, 24)
    x2 = x.clone()
    x2[:, s] += torch.randn(2, 24) * 3
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :s], y2[:, :s], atol=0, rtol=0)
    changed = (y[:, s:] - y2[:, s:]).abs().amax(dim=(0, 2))
    assert (changed > 1e-6).all(), changed


@pytest.mark.parametrize("row_width", [5, None])
def test_decoder_receptive_field_is_the_whole_prefix(row_width: int | None) -> None:
    """One block: output t depends on every input s <= t (rows above through the outer decoder
    and the shift down, its own row through the masked row pass) and on none s > t. The
    Jacobian's token blocks are exactly lower triangular."""
    m = ar(row_width, d=12).double()
    T = 17
    x = torch.randn(1, T, 12, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda z: m(z)[0], x)[:, :, 0]  # [T, D, T, D]
    reach = J.abs().sum((1, 3))  # [T, T]: output t, input s
    lower = torch.ones(T, T, dtype=torch.bool).tril()
    assert (reach[~lower] == 0).all()
    assert (reach[lower] > 1e-8).all()


def test_decoder_padding_never_leaks() -> None:
    """With a fixed row width, the outputs for the first T' tokens are the block's outputs on
    x[:, :T'] alone, whatever T' (a partial last row is zero-padded)."""
    m = ar(5)
    x = torch.randn(2, 23, 24)
    y = m(x)
    for t in (1, 3, 5, 6, 11, 20, 22):
        torch.testing.assert_close(m(x[:, :t]), y[:, :t], **TOL)


@pytest.mark.parametrize(
    "name,sizes,cfg",
    [("axial", (5, 7), {"combine": "sum"}), ("axial", (1, 9), {"combine": "sequential"}),
     ("axial", (6, 1), {"combine": "sum"}), ("axial3d", (2, 5, 3), {"combine": "sequential"}),
     ("axial3d", (1, 1, 4), {"combine": "sum"}), ("axial_ar", (23,), {"row_width": 5}),
     ("axial_ar", (31,), {}), ("axial_ar", (3,), {"row_width": 8})],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sdpa_matches_reference(name: str, sizes: tuple[int, ...], cfg: dict, dtype) -> None:
    """Forward, input and parameter gradients. float64: tight; float32: within 1e-4 of each
    tensor's largest entry or 1 (randomised weights make outputs ~30 and gradients ~1e3, up to
    three chained passes round at every step, and the q/k gradients of a pass along a length-1
    axis are 0 in the reference but rounding noise in SDPA; the gate's bound)."""
    causal = name == "axial_ar"
    ref = az.build_mixer(name, d_model=24, num_heads=3, causal=causal, impl="reference", **cfg)
    randomise(ref, seed=4)
    fast = az.build_mixer(name, d_model=24, num_heads=3, causal=causal, impl="sdpa", **cfg)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, *sizes, 24, dtype=dtype)
    if dtype == torch.float64:
        assert_paths_equal(fast.double(), ref.double(), x, **F64)
        return
    outs = []
    for m in (fast, ref):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view(y.shape)).sum().backward()
        outs.append([y, xi.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4 * max(1.0, b.abs().max().item()), rtol=0)


def test_row_width_default() -> None:
    cfg = az.build_mixer("axial_ar", d_model=8, causal=True).cfg
    assert [cfg.width(T) for T in (1, 2, 4, 5, 9, 10, 16, 17, 77)] == [1, 2, 2, 3, 3, 4, 4, 5, 9]


# ---- FLOPs ------------------------------------------------------------------------------------
def test_flops() -> None:
    B, C, H = 2, 32, 4
    K = C // H
    proj = lambda n: 2 * B * n * C * 4 * H * K  # noqa: E731  q, k, v, out of one pass
    m = az.build_mixer("axial", d_model=C, num_heads=H)
    N = 12 * 12  # a square grid: each pass, every token attends to the 12 of its line
    want = 2 * (proj(N) + attention_flops(B, H, K, K, N * 12))
    assert m.flops(B, N) == want
    # the attention part grows as N^1.5: doubling the side multiplies it by 8
    attn = lambda s: m.flops(B, s * s) - 2 * proj(s * s)  # noqa: E731
    assert attn(24) == 8 * attn(12)
    m3 = az.build_mixer("axial3d", d_model=C, num_heads=H)
    assert m3.flops(B, 125) == 3 * (proj(125) + attention_flops(B, H, K, K, 125 * 5))
    d = az.build_mixer("axial_ar", d_model=C, num_heads=H, causal=True, row_width=5)
    R, W, P = 5, 5, 25  # T = 23 in rows of 5: 5 rows, padded to 25
    pairs = P * W + W * R * (R + 1) // 2 + R * W * (W + 1) // 2
    assert d.flops(B, 23) == 3 * proj(P) + attention_flops(B, H, K, K, pairs)
    d0 = az.build_mixer("axial_ar", d_model=C, num_heads=H, causal=True)
    assert d0.flops(B, 100) == 3 * proj(100) + attention_flops(
        B, H, K, K, 100 * 10 + 10 * 55 + 10 * 55
    )


# ---- errors -----------------------------------------------------------------------------------
def test_config_errors() -> None:
    with pytest.raises(TypeError, match="axial: config 'combine' must be 'sum' | 'sequential'"):
        az.build_mixer("axial", d_model=32, combine="product")
    with pytest.raises(ValueError, match="axial_ar: row_width must be >= 1, got 0"):
        az.build_mixer("axial_ar", d_model=32, causal=True, row_width=0)
    with pytest.raises(ValueError, match="axial3d: d_model=30 is not divisible by num_heads=4"):
        az.build_mixer("axial3d", d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="axial_ar does not support causal=False"):
        az.build_mixer("axial_ar", d_model=32)
    with pytest.raises(ValueError, match="axial does not support causal=True"):
        az.build_mixer("axial", d_model=32, causal=True)


def test_peer_mapping_errors() -> None:
    m = az.build_mixer("axial", d_model=32, num_heads=4)
    with pytest.raises(ValueError, match="num_dimensions=2 and dim_index=-1"):
        load_peer_weights(m, AxialAttention(32, num_dimensions=3, heads=4, dim_index=-1))
    with pytest.raises(ValueError, match="num_dimensions=2 and dim_index=-1"):
        load_peer_weights(m, AxialAttention(32, num_dimensions=2, heads=4, dim_index=1))
    with pytest.raises(ValueError, match="sum_axial_out=False but the mixer has combine='sum'"):
        load_peer_weights(m, AxialAttention(32, heads=4, dim_index=-1, sum_axial_out=False))
    biased = az.build_mixer("axial", d_model=32, num_heads=4, qkv_bias=True)
    with pytest.raises(ValueError, match="state_dict keys .* do not match ours"):
        load_peer_weights(biased, AxialAttention(32, heads=4, dim_index=-1))
