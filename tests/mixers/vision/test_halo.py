"""halo mixer: both paths (``sdpa`` and ``reference``) equal to timm's ``HaloAttn`` (outputs,
input and parameter gradients) on grids timm accepts and to a by-hand block loop on every grid
(including the padded, masked ones timm rejects), the fast path equal to the reference,
attention maps against the block loop's weights, locality of the halo window, FLOPs, and config
and weight-mapping errors. (Call errors, odd grids and the gate: tests/contract.)

Layouts: timm's ``HaloAttn`` takes and returns ``[B, C, H, W]``; the mixer takes and returns
channels-last ``[B, h, w, C]``. The tests feed timm ``x.permute(0, 3, 1, 2)`` and compare its
output permuted back with ``.permute(0, 2, 3, 1)``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers.halo_attn import HaloAttn

import attnzoo as az
import attnzoo.ops.window as window_op
from attnzoo.mixers.vision.halo import load_timm_weights
from attnzoo.testing import randomise
from tests.helpers import assert_paths_equal

TOL = dict(atol=2e-5, rtol=1e-5)
GTOL = dict(atol=1e-4, rtol=1e-4)  # parameter gradients: fp32 sums over every query


IMPLS = ["sdpa", "reference"]


def pair(
    C: int,
    n: int,
    b: int,
    r: int,
    dk: int | None = None,
    bias: bool = False,
    spe: bool = False,
    impl: str = "auto",
) -> tuple[az.Mixer, HaloAttn]:
    """A timm HaloAttn with weights and biases away from their init, copied into a mixer."""
    t = HaloAttn(
        C, num_heads=n, dim_head=dk, block_size=b, halo_size=r, qkv_bias=bias, scale_pos_embed=spe
    )
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0.0, 0.2)
    m = az.build_mixer(
        "halo",
        d_model=C,
        num_heads=n,
        qk_dim_head=dk,
        block_size=b,
        halo_size=r,
        qkv_bias=bias,
        scale_pos_embed=spe,
        impl=impl,
    )
    load_timm_weights(m, t)
    return m, t


def timm_call(t: HaloAttn, x: torch.Tensor) -> torch.Tensor:
    return t(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # [B, h, w, C] -> timm -> back


def mapped_grads(m: az.Mixer, t: HaloAttn) -> dict[str, torch.Tensor]:
    """timm's parameter gradients pushed through the (linear) weight mapping."""
    gt = copy.deepcopy(t)
    with torch.no_grad():
        for p, p_src in zip(gt.parameters(), t.parameters(), strict=True):
            p.copy_(p_src.grad)
    gm = copy.deepcopy(m)
    load_timm_weights(gm, gt)
    return dict(gm.named_parameters())


CASES = [  # C, heads, block, halo, qk_dim_head, qkv_bias, scale_pos_embed, grid
    (32, 2, 4, 1, None, False, False, (8, 12)),
    (64, 4, 8, 3, 8, True, False, (16, 16)),  # dk=8 != dv=16: exercises the kv regrouping
    (48, 3, 4, 2, None, True, True, (8, 4)),
    (16, 1, 2, 0, None, False, False, (6, 4)),  # no halo: plain block attention
    (32, 2, 8, 2, None, False, False, (8, 8)),  # one block
]


def chunk_windows(monkeypatch, count: int, n: int, b: int, r: int) -> None:
    """Make the window op's fast path attend ``count`` windows (all ``n`` heads) per SDPA call."""
    monkeypatch.setattr(window_op, "CHUNK_ELEMENTS", count * n * b * b * (b + 2 * r) ** 2)


# the reference runs unchunked; chunking applies to the fast path only
PATHS = [("sdpa", False), ("sdpa", True), ("reference", False)]
PATH_IDS = ["sdpa", "sdpa-chunked", "reference"]


@pytest.mark.parametrize("impl,chunked", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"C{c[0]}n{c[1]}b{c[2]}r{c[3]}")
def test_matches_timm_halo_attn(case: tuple, impl: str, chunked: bool, monkeypatch) -> None:
    C, n, b, r, dk, bias, spe, grid = case
    if chunked:  # three windows per SDPA call, a shorter last chunk
        chunk_windows(monkeypatch, 3, n, b, r)
    torch.manual_seed(0)
    m, t = pair(C, n, b, r, dk, bias, spe, impl)
    x = torch.randn(2, *grid, C)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, want = m(x1), timm_call(t, x2)
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn_like(got)
    (got * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    mapped = mapped_grads(m, t)
    for name, p in m.named_parameters():
        torch.testing.assert_close(p.grad, mapped[name], **GTOL, msg=lambda s, k=name: f"{k}: {s}")
    # timm's first 2r relative rows are never read: no gradient, which is why ours drop them
    for rel in (t.pos_embed.height_rel, t.pos_embed.width_rel):
        assert (rel.grad[: 2 * r] == 0).all() and rel.grad[2 * r :].abs().max() > 0


def halo_by_hand(m: az.Mixer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loops over blocks and window pixels. A window key inside the image is the projected
    pixel; one outside the image but within ``halo`` of it is a zero key/value (timm's zero
    padding after the projection); one farther out (only reachable when ``block_size`` does not
    divide the grid) is left out of the softmax.

    Returns the output ``[B, h, w, C]`` and the softmax weights ``[B, n, h*w, M]`` scattered over
    the key grid of the attention maps: the grid rounded up to whole blocks, zero-padded by the
    halo, row-major (key pixel ``(py, px)`` is column ``(py + r) * (w' + 2r) + px + r``)."""
    cfg = m.cfg
    B, H, W, C = x.shape
    n, dk, dv, b, r = cfg.heads, cfg.dim_qk, cfg.dim_v, cfg.block_size, cfg.halo_size
    q, k, v = F.linear(x, m.qkv.weight, m.qkv.bias).split([n * dk, n * dk, n * dv], -1)
    q, k, v = q.unflatten(-1, (n, dk)), k.unflatten(-1, (n, dk)), v.unflatten(-1, (n, dv))
    out = x.new_zeros(B, H, W, n, dv)
    key_h, key_w = -(-H // b) * b + 2 * r, -(-W // b) * b + 2 * r
    weights = x.new_zeros(B, n, H * W, key_h * key_w)
    scale = dk**-0.5
    for by in range(0, H, b):
        for bx in range(0, W, b):
            keys, vals, offs = [], [], []
            for ky in range(b + 2 * r):
                for kx in range(b + 2 * r):
                    py, px = by - r + ky, bx - r + kx  # key pixel
                    if not (-r <= py < H + r and -r <= px < W + r):
                        continue  # beyond the zero border: masked
                    inside = 0 <= py < H and 0 <= px < W
                    keys.append(k[:, py, px] if inside else k.new_zeros(B, n, dk))
                    vals.append(v[:, py, px] if inside else v.new_zeros(B, n, dv))
                    offs.append((ky, kx))
            kk, vv = torch.stack(keys, 2), torch.stack(vals, 2)  # [B, n, S, d]
            oy, ox = torch.tensor(offs).T  # [S] window offsets of the keys
            qys = [(qy, qx) for qy in range(b) for qx in range(b) if by + qy < H and bx + qx < W]
            qy, qx = torch.tensor(qys).T  # [Q] block offsets of the queries
            qq = q[:, by + qy, bx + qx].transpose(1, 2)  # [B, n, Q, dk]
            rel = m.rel_h[oy - qy[:, None] + b - 1] + m.rel_w[ox - qx[:, None] + b - 1]
            qk = torch.einsum("bnqd,bnsd->bnqs", qq, kk)
            pos = torch.einsum("bnqd,qsd->bnqs", qq, rel)  # rel: [Q, S, dk]
            logits = (qk + pos) * scale if cfg.scale_pos_embed else qk * scale + pos
            p = logits.softmax(-1)  # [B, n, Q, S]
            out[:, by + qy, bx + qx] = torch.einsum("bnqs,bnsd->bqnd", p, vv)
            rows = (by + qy) * W + bx + qx  # [Q] query pixels, row-major
            cols = (by + oy) * key_w + bx + ox  # [S] key pixels (py + r, px + r) in the key grid
            weights[:, :, rows[:, None], cols[None, :]] = p
    return out.flatten(-2), weights


@pytest.mark.parametrize(
    "grid,b,r,spe",
    [
        ((7, 13), 4, 1, False),
        ((13, 30), 8, 3, False),
        ((30, 7), 8, 3, True),
        ((7, 7), 8, 2, False),
        ((1, 1), 4, 2, False),
        ((8, 12), 4, 2, False),  # divisible: the by-hand loop is timm (checked below)
    ],
)
@pytest.mark.parametrize("impl,chunked", PATHS, ids=PATH_IDS)
def test_any_grid_matches_block_loop(
    grid: tuple[int, int], b: int, r: int, spe: bool, impl: str, chunked: bool, monkeypatch
) -> None:
    if chunked:  # three windows per SDPA call: the border mask must follow the chunk
        chunk_windows(monkeypatch, 3, 2, b, r)
    torch.manual_seed(1)
    m, t = pair(32, 2, b, r, bias=True, spe=spe, impl=impl)
    x = torch.randn(2, *grid, 32, requires_grad=True)
    got, want = m(x), halo_by_hand(m, x)[0]
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn_like(got)
    leaves = [x, m.qkv.weight, m.qkv.bias, m.rel_h, m.rel_w]
    got_g = torch.autograd.grad((got * g).sum(), leaves)
    want_g = torch.autograd.grad((want * g).sum(), leaves)
    torch.testing.assert_close(got_g[0], want_g[0], **TOL)
    for a, c in zip(got_g[1:], want_g[1:], strict=True):
        torch.testing.assert_close(a, c, **GTOL)
    if grid[0] % b == 0 and grid[1] % b == 0:
        torch.testing.assert_close(want, timm_call(t, x), **TOL)


@pytest.mark.parametrize(
    "grid,b,r,spe,bias",
    [((11, 13), 8, 3, False, True), ((7, 13), 4, 1, True, False), ((9, 4), 2, 0, False, True)],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_sdpa_equals_reference(
    grid: tuple[int, int], b: int, r: int, spe: bool, bias: bool, chunked: bool, monkeypatch
) -> None:
    """The fast path against the library's reference in float64, outputs and every gradient."""
    if chunked:
        chunk_windows(monkeypatch, 2, 2, b, r)
    kw = dict(d_model=32, num_heads=2, block_size=b, halo_size=r, qkv_bias=bias,
              scale_pos_embed=spe)  # fmt: skip
    ref = randomise(az.build_mixer("halo", impl="reference", **kw), seed=4, std=0.2).double()
    fast = az.build_mixer("halo", impl="sdpa", **kw).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, *grid, 32, dtype=torch.float64)
    assert_paths_equal(fast, ref, x, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(
    "grid,b,r,spe", [((7, 13), 4, 1, False), ((8, 12), 4, 2, True), ((1, 1), 4, 2, False)]
)
def test_attention_maps_match_block_loop(grid: tuple[int, int], b: int, r: int, spe: bool) -> None:
    """The maps' weights are the block loop's softmax weights over the rounded grid zero-padded
    by the halo (border keys take weight; keys past the border weigh 0), and reproduce forward."""
    m = randomise(
        az.build_mixer("halo", d_model=32, num_heads=2, block_size=b, halo_size=r,
                       qkv_bias=True, scale_pos_embed=spe),
        seed=5, std=0.3,
    ).double()  # fmt: skip
    x = torch.randn(2, *grid, 32, dtype=torch.float64)
    maps = m.attention_maps(x)
    out, weights = halo_by_hand(m, x)
    M = (-(-grid[0] // b) * b + 2 * r) * (-(-grid[1] // b) * b + 2 * r)
    assert maps.weights.shape == (2, 2, grid[0] * grid[1], M)
    torch.testing.assert_close(maps.weights, weights, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(maps.output(), m(x), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(maps.output(), out, atol=1e-12, rtol=1e-10)


def test_timm_rejects_what_the_mixer_pads() -> None:
    """The reason for the padding: timm asserts divisibility."""
    m, t = pair(32, 2, 8, 3)
    x = torch.randn(1, 13, 30, 32)
    with pytest.raises(AssertionError):
        timm_call(t, x)
    assert m(x).shape == x.shape


@pytest.mark.parametrize("impl", IMPLS)
def test_receptive_field_is_the_block_window(impl: str) -> None:
    """Block (0, 0) of side 4 with halo 1 sees rows and columns -1..4: a change at pixel (4, 4)
    reaches it, one at (5, 5) does not; every block whose window holds (5, 5) changes."""
    torch.manual_seed(2)
    m = az.build_mixer("halo", d_model=16, num_heads=2, block_size=4, halo_size=1, impl=impl)
    x = torch.randn(1, 12, 12, 16)
    for pix, reaches in (((4, 4), True), ((5, 5), False)):
        x2 = x.clone()
        x2[:, pix[0], pix[1]] += 3.0
        d = (m(x) - m(x2)).abs().amax(-1)[0]  # [12, 12]
        assert (d[:4, :4].max() > 1e-4) == reaches
        assert d[4:8, 4:8].min() > 0  # its own block: every query sees it
        if not reaches:
            assert d[8:, 8:].max() == 0 and d[:4, 8:].max() == 0


def test_flops() -> None:
    m = az.build_mixer("halo", d_model=64, num_heads=4, qk_dim_head=8, block_size=8, halo_size=3)
    B, T, C, n, dk, dv, s = 2, 256, 64, 4, 8, 16, 14
    want = 2 * B * T * C * n * (2 * dk + dv) + 2 * B * n * T * s * s * (2 * dk + dv)
    assert m.flops(B, T) == want
    assert m.flops(B, 2 * T) == 2 * want  # linear in the pixel count


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"block_size": 0}, ValueError, "halo: block_size must be >= 1, got 0"),
        ({"halo_size": -1}, ValueError, "halo: halo_size must be >= 0, got -1"),
        ({"num_heads": 3}, ValueError, "d_model=64 is not divisible by num_heads=3"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"qk_dim_head": 0}, ValueError, "qk_dim_head must be >= 1, got 0"),
        ({"block_size": 8.0}, TypeError, "config 'block_size' must be int"),
        ({"causal": True}, ValueError, "halo does not support causal=True"),
        ({"halo": 2}, TypeError, "unknown config key 'halo' \\(did you mean 'halo_size'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("halo", d_model=64, **kw)


def test_weight_mapping_mismatches_are_named() -> None:
    m = az.build_mixer("halo", d_model=32, num_heads=2, block_size=4, halo_size=1)
    with pytest.raises(ValueError, match="halo.load_timm_weights: .*halo_size=1"):
        load_timm_weights(m, HaloAttn(32, num_heads=2, block_size=4, halo_size=2))
    with pytest.raises(ValueError, match="does not match"):
        load_timm_weights(m, HaloAttn(32, num_heads=2, block_size=4, halo_size=1, qkv_bias=True))
    with pytest.raises(ValueError, match="heads=2, qk_dim_head=16"):
        load_timm_weights(m, HaloAttn(32, num_heads=4, dim_head=16, block_size=4, halo_size=1))
    with pytest.raises(ValueError, match="stride-1"):
        load_timm_weights(m, HaloAttn(32, num_heads=2, block_size=4, halo_size=1, stride=2))
    with pytest.raises(ValueError, match="scale_pos_embed"):
        load_timm_weights(
            m, HaloAttn(32, num_heads=2, block_size=4, halo_size=1, scale_pos_embed=True)
        )


def test_exports_a_dynamic_grid_of_multiples() -> None:
    """What the spec's ``ExportSupport.dynamic`` says: sides declared as multiples of the block
    (``Dim(...)*8``) export, and the program equals eager at another such grid."""
    m = randomise(az.build_mixer("halo", d_model=16), seed=0, constant_only=True).eval()
    h, w = (torch.export.Dim(n, min=2, max=8) for n in "hw")
    x = torch.randn(2, 16, 24, 16)
    ep = torch.export.export(m, (x,), dynamic_shapes={"x": {1: h * 8, 2: w * 8}})
    x2 = torch.randn(2, 24, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x2), m(x2))
