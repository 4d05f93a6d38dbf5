"""hyena_nd (grid2d) and hyena_3d (grid3d): the block against the module docstring's formulas
written as loops (joint filter on both axes' features, one-quadrant convolution sums), the
filter support as documented (one quadrant; the opposite one for ``seq``; every position for
``4dir``), identities between the directional modes, the joint and product filters and their
decay windows, positions normalised by the call's sides, the fast path against the reference on
odd grids for every mode, FLOPs and config errors. (The identity FFT = direct convolution:
tests/ops; the gate, maps, odd grids and export: tests/contract.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import attnzoo as az
from attnzoo.mixers.vision.hyena_nd import hyena_nd_flops
from attnzoo.ops.longconv import long_conv_flops
from attnzoo.testing import randomise
from tests.helpers import assert_all_close, fwd_bwd

F64 = torch.float64
MODES = {"hyena_nd": ("standard", "seq", "4dir"), "hyena_3d": ("standard", "seq", "8dir")}


def build(name: str = "hyena_nd", **cfg: object) -> az.Mixer:
    m = az.build_mixer(name, d_model=4, filter_order=6, **cfg)
    return randomise(m, seed=0).double()


def by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """``hyena_nd``, order 2, ``standard``, ``joint``: the formulas with loops over positions."""
    C, E = m.cfg.d_model, m.cfg.emb_dim
    B, H, W, _ = x.shape
    p = x @ m.in_proj.weight.T + m.in_proj.bias  # [B, H, W, 3C]
    w = m.short_filter.weight[:, 0]  # [3C, 3, 3], centred
    q = torch.zeros_like(p) + m.short_filter.bias
    for i, j, a, b in itertools.product(range(H), range(W), range(3), range(3)):
        if 0 <= i + a - 1 < H and 0 <= j + b - 1 < W:
            q[:, i, j] = q[:, i, j] + w[:, a, b] * p[:, i + a - 1, j + b - 1]
    x0, x1, v = q.split(C, dim=-1)

    def feats(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.arange(n, dtype=F64)
        t = k / max(n - 1, 1)
        f = torch.linspace(1e-4, (E - 1) // 2 - 1, (E - 1) // 2, dtype=F64)
        ang = 2 * math.pi * f * k[:, None] / n
        return torch.cat([t[:, None], torch.cos(ang), -torch.sin(ang)], -1), t

    (zi, ti), (zj, tj) = feats(H), feats(W)
    h = torch.zeros(H, W, C, dtype=F64)
    rates = torch.linspace(math.log(100) / 1.5, math.log(100) / 0.3, C, dtype=F64)
    ffn = m.filter_fn.ffns[0]
    for i, j in itertools.product(range(H), range(W)):
        z = torch.cat([zi[i], zj[j]])
        for layer in ffn.hidden:
            z = torch.sin(m.filter_fn.freq * (layer.weight @ z + layer.bias))
        h[i, j] = (ffn.out.weight @ z) * torch.exp(-rates * ti[i]) * torch.exp(-rates * tj[j])
    u = x1 * v
    y = torch.zeros_like(u)
    for i, j in itertools.product(range(H), range(W)):
        for a, b in itertools.product(range(i + 1), range(j + 1)):  # the quadrant q <= p
            y[:, i, j] = y[:, i, j] + h[i - a, j - b] * u[:, a, b]
    y = y + m.filter_fn.bias * u
    return (x0 * y) @ m.out_proj.weight.T + m.out_proj.bias


@pytest.mark.parametrize("sizes", [(3, 4), (5, 2), (1, 3)])
def test_block_equals_the_formulas_by_hand(sizes: tuple) -> None:
    m = build()
    x = torch.randn(2, *sizes, 4, dtype=F64)
    want = by_hand(m, x)
    torch.testing.assert_close(m(x), want)
    r = build(impl="reference")
    r.load_state_dict(m.state_dict())
    torch.testing.assert_close(r(x), want)


def support(m: az.Mixer, sizes: tuple) -> torch.Tensor:
    """``[N, N]``: where ``H(u)`` weighs input ``q`` in output ``p`` (any batch or channel)."""
    x = torch.randn(2, *sizes, 4, dtype=F64)
    return (m.attention_maps(x).weights != 0).any(0).any(0)


@pytest.mark.parametrize("name,sizes", [("hyena_nd", (4, 5)), ("hyena_3d", (2, 3, 4))])
def test_filter_support_is_one_quadrant(name: str, sizes: tuple) -> None:
    """The documented support: ``standard`` sees ``q <= p`` on every axis, ``seq`` (order 2)
    ``q >= p``, the multi-directional mode every position."""
    pos = torch.cartesian_prod(*(torch.arange(n) for n in sizes))  # row-major [N, d]
    below = (pos[None, :, :] <= pos[:, None, :]).all(-1)  # [p, q]
    above = (pos[None, :, :] >= pos[:, None, :]).all(-1)
    assert (support(build(name), sizes) == below).all()
    assert (support(build(name, directional_mode="seq"), sizes) == above).all()
    assert support(build(name, directional_mode=MODES[name][2]), sizes).all()
    h = build(name).filter_fn(sizes, sizes)
    assert h.shape == (*sizes, 4)  # one tap per lag >= 0: the grid's own sides


def test_directional_modes_agree_where_they_should() -> None:
    """``4dir`` with mixing weights (1, 0, 0, 0) is ``standard``; with (0, 1, 0, 0) (both axes
    flipped) it is ``seq`` at order 2; with mixing bias b it adds ``b W_out``."""
    x = torch.randn(2, 5, 6, 4, dtype=F64)
    four = build(directional_mode="4dir")
    state = {k: v for k, v in four.state_dict().items() if not k.startswith("linear_mix")}
    for mode, onehot in (("standard", 0), ("seq", 1)):
        other = build(directional_mode=mode)
        other.load_state_dict(state)
        with torch.no_grad():
            four.linear_mix.weight.zero_()
            four.linear_mix.weight[0, onehot] = 1
            four.linear_mix.bias.zero_()
        torch.testing.assert_close(four(x), other(x))
    with torch.no_grad():
        four.linear_mix.bias.fill_(0.5)
    shift = 0.5 * four.out_proj.weight.sum(-1)
    torch.testing.assert_close(four(x), other(x) + shift)


def test_joint_filter_and_its_window() -> None:
    """``joint``: ``FFN([z_i, z_j]) * exp(-r t_i) exp(-r t_j)`` with positions of the call's sides;
    on a square grid the positions are the official ``linspace(0, 1, L)``."""
    m = build(fast_decay_pct=0.25, slow_decay_pct=0.5, decay_target=0.1)
    raw, window = m.filter_fn.raw((5, 9), (5, 9))
    r = torch.linspace(math.log(10) / 0.5, math.log(10) / 0.25, 4, dtype=F64)
    ti, tj = torch.linspace(0, 1, 5, dtype=F64), torch.linspace(0, 1, 9, dtype=F64)
    want = torch.exp(-(ti[:, None, None] + tj[None, :, None]) * r)
    torch.testing.assert_close(window, want)
    # the last channel is at the target a quarter of the way along one axis, the first at half
    torch.testing.assert_close(window[0, 2, -1], torch.tensor(0.1, dtype=F64))
    torch.testing.assert_close(window[0, 4, 0], torch.tensor(0.1, dtype=F64))
    torch.testing.assert_close(m.filter_fn((5, 9), (5, 9)), raw * window)
    flat = build(modulate=False)
    assert (flat.filter_fn.raw((3, 3), (3, 3))[1] == 1).all()


@pytest.mark.parametrize("name,sizes", [("hyena_nd", (4, 6)), ("hyena_3d", (2, 3, 4))])
def test_product_filter_is_separable(name: str, sizes: tuple) -> None:
    """``product``: one FFN per axis times its window, multiplied: ``h(i, j) h(0, 0) =
    h(i, 0) h(0, j)`` per channel (rank one), with one FFN per axis."""
    m = build(name, filter_mode="product")
    assert len(m.filter_fn.ffns) == len(sizes)
    h = m.filter_fn(sizes, sizes)  # [*S, C]
    if len(sizes) == 2:
        torch.testing.assert_close(h * h[0, 0], h[:, :1] * h[:1, :])
    else:
        torch.testing.assert_close(h * h[0, 0, 0] ** 2, h[:, :1, :1] * h[:1, :, :1] * h[:1, :1, :])


@pytest.mark.parametrize("filter_mode", ["joint", "product"])
@pytest.mark.parametrize(
    "name,sizes,mode",
    [(n, s, m) for n, s in (("hyena_nd", (5, 7)), ("hyena_3d", (3, 2, 5))) for m in MODES[n]],
)
def test_fft_matches_reference(name: str, sizes: tuple, mode: str, filter_mode: str) -> None:
    """Forward and every gradient on odd grids, order 3, fp64."""
    kw = {"directional_mode": mode, "filter_mode": filter_mode, "order": 3}
    ref, fast = build(name, impl="reference", **kw), build(name, impl="fft", **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, *sizes, 4, dtype=F64)

    def run(m: az.Mixer) -> list[torch.Tensor]:
        torch.manual_seed(3)
        return fwd_bwd(m, [x]) + [p.grad for p in m.parameters()]

    assert_all_close(run(fast), run(ref), atol=1e-10, rtol=1e-10)


def test_flops() -> None:
    spec = az.get_spec("hyena_nd")
    cfg = spec.config(d_model=16, filter_order=8)
    T = 14 * 14
    proj = 2 * 2 * T * (16 * 48 + 48 * 9 + 16 * 16)
    ffn = 2 * (6 * 8 + 2 * 8 * 8 + 8 * 16) + 3 * 2 * 8
    want = proj + 2 * T * 16 * 2 + long_conv_flops(2, 16, T, 2) + T * (ffn + 2 * 16)
    assert hyena_nd_flops(cfg, 2, T, None, None) == want
    four = hyena_nd_flops(spec.config(d_model=16, directional_mode="4dir"), 2, T, None, None)
    one = hyena_nd_flops(spec.config(d_model=16), 2, T, None, None)
    recurrence = 2 * T * 16 * 2 + long_conv_flops(2, 16, T, 2)
    assert four == one + 3 * recurrence + 2 * 2 * T * 16 * 4  # 4 directions and their mix
    product = hyena_nd_flops(spec.config(d_model=16, filter_mode="product"), 2, T, None, None)
    assert product < one
    three = az.get_spec("hyena_3d")
    assert three.flops(three.config(d_model=16), 2, 4**3, None, None) > 0


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("hyena_nd", {"directional_mode": "8dir"}, r"'8dir' is for 3-D grids; on 2-D .* '4dir'"),
        ("hyena_3d", {"directional_mode": "4dir"}, r"'4dir' is for 2-D grids; on 3-D .* '8dir'"),
        ("hyena_nd", {"short_filter_order": 4}, "short_filter_order must be odd on a grid"),
        ("hyena_3d", {"order": 1}, "hyena_3d: order must be >= 2, got 1"),
        ("hyena_nd", {"slow_decay_pct": 0.1}, "fast_decay_pct=0.3 must be <= slow_decay_pct"),
    ],
)
def test_config_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        az.build_mixer(name, d_model=8, **kwargs)
    with pytest.raises(TypeError, match="filter_mode"):
        az.build_mixer(name, d_model=8, filter_mode="separable")
    with pytest.raises(ValueError, match=f"{name} does not support causal=True"):
        az.build_mixer(name, d_model=8, causal=True)
