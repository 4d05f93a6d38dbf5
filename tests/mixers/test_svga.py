"""svga mixer (MobileViG Grapher with SVGA): against a by-hand formulation with an explicit loop
over row/column offsets, forward and backward, for both aggregation paths; ties; grouped and
Grapher-less forms; train-mode BatchNorm; odd grids; FLOPs; config / input errors.

The by-hand code follows ``models/mobilevig.py`` of the official repository
(https://github.com/SLDGroup/MobileViG): ``MRConv4d`` starts from ``x - x`` and takes, for
``i = K, 2K, ... < H`` (then ``< W``), the maximum with ``x - x[(r - i) mod H]`` (the
``torch.cat([x[:, :, -i:], x[:, :, :-i]])`` roll, written here as an index gather), concatenates
``[x, x_j]`` on channels, then 1x1 conv, BatchNorm, GELU; the ``Grapher`` wraps it in ``fc1``
(1x1 conv + BN) and ``fc2`` (1x1 conv 2C -> C + BN). Tensors are channels-last throughout, the
1x1 convolutions are einsums over the channel axis.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnzoo as az
from attnzoo.mixers.vision.svga import max_relative_roll, max_relative_scan
from tests.mixers.naive import bn_by_hand


def max_relative_by_hand(x: torch.Tensor, hop: int) -> torch.Tensor:
    """x ``[B, h, w, C]``: the official loop over offsets with explicit index arithmetic."""
    B, h, w, C = x.shape
    x_j = x - x
    for i in range(hop, h, hop):
        rows = [(r - i) % h for r in range(h)]
        x_j = torch.max(x_j, x - x[:, rows])
    for i in range(hop, w, hop):
        cols = [(c - i) % w for c in range(w)]
        x_j = torch.max(x_j, x - x[:, :, cols])
    return x_j


def gelu_by_hand(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * t * (1 + torch.erf(t / math.sqrt(2.0)))


def conv1x1_by_hand(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int):
    """A grouped 1x1 convolution on channels-last ``t``; weight ``[out, in/groups]``."""
    ins, outs = t.chunk(groups, dim=-1), weight.chunk(groups, dim=0)
    y = torch.cat(
        [torch.einsum("bhwi,oi->bhwo", a, wg) for a, wg in zip(ins, outs, strict=True)], -1
    )
    return y + bias


def mixer_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    cfg = m.cfg
    u = x
    if cfg.grapher:
        u = bn_by_hand(u @ m.fc1.weight.T + m.fc1.bias, m.bn1)
    z = torch.cat([u, max_relative_by_hand(u, cfg.hop)], dim=-1)  # [B, h, w, 2C]
    g = conv1x1_by_hand(z, m.graph_weight, m.graph_bias, cfg.groups)
    g = gelu_by_hand(bn_by_hand(g, m.graph_bn))
    if not cfg.grapher:
        return g
    return bn_by_hand(g @ m.fc2.weight.T + m.fc2.bias, m.bn2)


def randomise(m: az.Mixer) -> az.Mixer:
    """BatchNorm affine parameters and running statistics away from their init."""
    torch.manual_seed(11)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm1d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0.0, 0.3)
                bn.running_mean.normal_(0.0, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
        m.graph_bias.normal_(0.0, 0.3)
    return m.eval()


def grads(y: torch.Tensor, g: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((y * g).sum(), leaves))


@pytest.mark.parametrize("impl", ["roll", "scan", "auto"])
@pytest.mark.parametrize(
    "grid,hop",
    [
        ((7, 7), 2),
        ((7, 13), 2),
        ((13, 7), 3),
        ((30, 30), 2),
        ((1, 1), 2),
        ((2, 9), 1),
        ((8, 12), 4),
    ],
)
def test_mixer_matches_offset_loop(impl: str, grid: tuple[int, int], hop: int) -> None:
    """fp64: the Kaiming-initialised 1x1 convolutions make fp32 parameter gradients large."""
    torch.manual_seed(0)
    m = randomise(az.build_mixer("svga", d_model=32, hop=hop, impl=impl)).double()
    x = torch.randn(2, *grid, 32, dtype=torch.float64, requires_grad=True)
    got, want = m(x), mixer_by_hand(m, x)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(got)
    leaves = [x, m.fc1.weight, m.graph_weight, m.graph_bias, m.fc2.weight, m.bn1.weight]
    for a, b in zip(grads(got, g, leaves), grads(want, g, leaves), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("grapher,groups", [(False, 1), (True, 4), (False, 2)])
def test_grouped_and_grapherless_forms(grapher: bool, groups: int) -> None:
    torch.manual_seed(1)
    m = randomise(az.build_mixer("svga", d_model=32, grapher=grapher, groups=groups))
    assert m.graph_weight.shape == (m.cfg.out_width, 64 // groups)
    x = torch.randn(2, 9, 6, 32, requires_grad=True)
    got, want = m(x), mixer_by_hand(m, x)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    g = torch.randn_like(got)
    for a, b in zip(
        grads(got, g, [x, m.graph_weight]), grads(want, g, [x, m.graph_weight]), strict=True
    ):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("hop", [1, 2, 3, 5])
def test_aggregation_paths_agree_with_ties(hop: int) -> None:
    """Small integers make ties everywhere: both paths give the loop's values on every grid up
    to 12 x 12 (including sides shorter than, equal to and not divisible by the hop)."""
    torch.manual_seed(2)
    for h in range(1, 13):
        for w in (1, 2, 5, 6, 11, 12):
            x = torch.randint(-2, 3, (2, h, w, 3)).double()
            want = max_relative_by_hand(x, hop)
            assert torch.equal(max_relative_roll(x, hop), want), (h, w)
            assert torch.equal(max_relative_scan(x, hop), want), (h, w)


def test_scan_matches_loop_on_large_grids_forward_and_backward() -> None:
    torch.manual_seed(3)
    for grid, hop in (((64, 57), 2), ((45, 64), 3)):
        x = torch.randn(1, *grid, 4, dtype=torch.float64, requires_grad=True)
        a, b = max_relative_scan(x, hop), max_relative_by_hand(x, hop)
        assert torch.equal(a, b)
        g = torch.randn_like(a)
        torch.testing.assert_close(grads(a, g, [x])[0], grads(b, g, [x])[0])


def test_neighbours_are_every_hop_th_pixel_of_row_and_column() -> None:
    """Raising one pixel's value lowers the aggregate exactly at the pixels that have it as a
    neighbour: same column at row distance i = hop, 2*hop, ... (going down, wrapping) and same
    row likewise; no others."""
    h, w, hop = 7, 9, 2
    x = torch.zeros(1, h, w, 1)
    x[0, 3, 4, 0] = -5.0  # every pixel that sees (3, 4) gets x_j = 0 - (-5) = 5
    y = max_relative_scan(x, hop)[0, :, :, 0]
    want = torch.zeros(h, w)
    for i in range(hop, h, hop):
        want[(3 + i) % h, 4] = 5.0
    for j in range(hop, w, hop):
        want[3, (4 + j) % w] = 5.0
    torch.testing.assert_close(y, want)


@pytest.mark.parametrize("groups", [1, 4])
def test_train_mode_uses_batch_statistics(groups: int) -> None:
    """Train mode normalises with batch statistics (eval mode folds the running ones into the
    1x1 convolutions); channels-last BatchNorm1d over [B*h*w, C] is BatchNorm2d on
    [B, C, h, w], running statistics included."""
    torch.manual_seed(4)
    m = randomise(az.build_mixer("svga", d_model=16, groups=groups)).double().train()
    x = torch.randn(3, 5, 7, 16, dtype=torch.float64, requires_grad=True)
    got, want = m(x), mixer_by_hand(m, x)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(got)
    leaves = [x, m.fc1.weight, m.graph_weight, m.graph_bn.weight, m.fc2.bias]
    for a, b in zip(grads(got, g, leaves), grads(want, g, leaves), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    ref = torch.nn.BatchNorm2d(16)
    m2 = az.build_mixer("svga", d_model=16).train()
    u = m2.fc1(x.detach().float())
    torch.testing.assert_close(
        m2.bn1(u.reshape(-1, 16)).view(u.shape),
        ref(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1),
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(m2.bn1.running_var, ref.running_var)


@pytest.mark.parametrize("grid", [(7, 13), (13, 30), (30, 7), (30, 30)])
def test_odd_grids_shape_finite_gradients(grid: tuple[int, int]) -> None:
    m = az.build_mixer("svga", d_model=48).eval()
    x = torch.randn(2, *grid, 48, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_flops() -> None:
    B, T, C = 2, 91, 64
    assert az.build_mixer("svga", d_model=C).flops(B, T) == 2 * B * T * (4 * C * C + 3 * C * C)
    assert az.build_mixer("svga", d_model=C, groups=4).flops(B, T) == 2 * B * T * (
        C * C + 3 * C * C
    )
    assert az.build_mixer("svga", d_model=C, grapher=False).flops(B, T) == 2 * B * T * 2 * C * C


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"hop": 0}, ValueError, "svga: hop must be >= 1 .*got 0"),
        ({"groups": 0}, ValueError, "groups must be >= 1, got 0"),
        ({"groups": 3}, ValueError, "groups=3 must divide .*2\\*d_model=64 and output width 64"),
        ({"bn_eps": 0.0}, ValueError, "bn_eps must be > 0, got 0.0"),
        ({"impl": "loop"}, TypeError, "config 'impl' must be 'auto' \\| 'roll' \\| 'scan'"),
        ({"causal": True}, ValueError, "svga does not support causal=True"),
        ({"K": 2}, TypeError, "unknown config key 'K'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("svga", d_model=32, **kw)


def test_bad_calls_are_named() -> None:
    m = az.build_mixer("svga", d_model=32)
    with pytest.raises(ValueError, match=r"svga: x must be \[B, h, w, C\] \(channels-last\)"):
        m(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match="x last dim must be 32"):
        m(torch.randn(2, 4, 4, 16))
    with pytest.raises(ValueError, match="svga does not support pattern 'noncausal-cross'"):
        m(torch.randn(1, 4, 4, 32), context=torch.randn(1, 3, 32))
