"""svga mixer (MobileViG Grapher with SVGA): the ``roll``, ``scan`` and ``auto`` paths against
``impl="reference"`` (an explicit loop over row/column offsets, written-out 1x1 convolutions and
BatchNorm), forward and backward; the aggregation functions with ties and on large grids; which
pixels are neighbours; grouped and Grapher-less forms; train-mode BatchNorm; FLOPs; config
errors.

The reference follows ``models/mobilevig.py`` of the official repository
(https://github.com/SLDGroup/MobileViG): ``MRConv4d`` starts from ``x - x`` and takes, for
``i = K, 2K, ... < H`` (then ``< W``), the maximum with ``x - x[(r - i) mod H]`` (the
``torch.cat([x[:, :, -i:], x[:, :, :-i]])`` roll, written as an index gather), concatenates
``[x, x_j]`` on channels, then 1x1 conv, BatchNorm, GELU; the ``Grapher`` wraps it in ``fc1``
(1x1 conv + BN) and ``fc2`` (1x1 conv 2C -> C + BN).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import attnzoo as az
from attnzoo.mixers.vision.svga import (
    max_relative_reference,
    max_relative_roll,
    max_relative_scan,
)
from attnzoo.testing import randomise


def pair(impl: str, dtype: torch.dtype = torch.float32, **kw: object) -> tuple[az.Mixer, az.Mixer]:
    """``(mixer with impl, its impl="reference" twin)``, same weights, eval mode. The Kaiming
    weights stay; biases, BatchNorm affine parameters and running statistics move off their
    init."""
    m = az.build_mixer("svga", d_model=kw.pop("d_model", 32), impl=impl, **kw)
    m = randomise(m, seed=11, std=0.3, constant_only=True).to(dtype).eval()
    ref = az.build_mixer("svga", **{**m.cfg.to_dict(), "impl": "reference"}).to(dtype).eval()
    ref.load_state_dict(m.state_dict())
    return m, ref


def grads(y: torch.Tensor, g: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((y * g).sum(), leaves))


def compare(
    m: az.Mixer, ref: az.Mixer, x: torch.Tensor, names: list[str], atol: float, rtol: float
) -> None:
    """Output and the gradients of ``x`` and the named parameters."""
    x = x.clone().requires_grad_(True)
    got, want = m(x), ref(x)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    g = torch.randn_like(got)
    ours, theirs = dict(m.named_parameters()), dict(ref.named_parameters())
    ga = grads(got, g, [x] + [ours[n] for n in names])
    gb = grads(want, g, [x] + [theirs[n] for n in names])
    for n, a, b in zip(["x", *names], ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda e, n=n: f"{n}: {e}")


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
def test_fast_paths_match_reference(impl: str, grid: tuple[int, int], hop: int) -> None:
    """fp64: the Kaiming-initialised 1x1 convolutions make fp32 parameter gradients large."""
    torch.manual_seed(0)
    m, ref = pair(impl, torch.float64, hop=hop)
    x = torch.randn(2, *grid, 32, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x), atol=1e-10, rtol=1e-10)
    names = ["fc1.weight", "graph_weight", "graph_bias", "fc2.weight", "bn1.weight"]
    compare(m, ref, x, names, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("grapher,groups", [(False, 1), (True, 4), (False, 2)])
@pytest.mark.parametrize("impl", ["roll", "scan"])
def test_grouped_and_grapherless_forms(grapher: bool, groups: int, impl: str) -> None:
    torch.manual_seed(1)
    m, ref = pair(impl, grapher=grapher, groups=groups)
    assert m.graph_weight.shape == (m.cfg.out_width, 64 // groups)
    compare(m, ref, torch.randn(2, 9, 6, 32), ["graph_weight"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("hop", [1, 2, 3, 5])
def test_aggregation_paths_agree_with_ties(hop: int) -> None:
    """Small integers make ties everywhere: both paths give the loop's values on every grid up
    to 12 x 12 (including sides shorter than, equal to and not divisible by the hop)."""
    torch.manual_seed(2)
    for h in range(1, 13):
        for w in (1, 2, 5, 6, 11, 12):
            x = torch.randint(-2, 3, (2, h, w, 3)).double()
            want = max_relative_reference(x, hop)
            assert torch.equal(max_relative_roll(x, hop), want), (h, w)
            assert torch.equal(max_relative_scan(x, hop), want), (h, w)


def test_scan_matches_loop_on_large_grids_forward_and_backward() -> None:
    torch.manual_seed(3)
    for grid, hop in (((64, 57), 2), ((45, 64), 3)):
        x = torch.randn(1, *grid, 4, dtype=torch.float64, requires_grad=True)
        a, b = max_relative_scan(x, hop), max_relative_reference(x, hop)
        assert torch.equal(a, b)
        g = torch.randn_like(a)
        torch.testing.assert_close(grads(a, g, [x])[0], grads(b, g, [x])[0])


@pytest.mark.parametrize("agg", [max_relative_reference, max_relative_roll, max_relative_scan])
def test_neighbours_are_every_hop_th_pixel_of_row_and_column(
    agg: Callable[[torch.Tensor, int], torch.Tensor],
) -> None:
    """Raising one pixel's value lowers the aggregate exactly at the pixels that have it as a
    neighbour: same column at row distance i = hop, 2*hop, ... (going down, wrapping) and same
    row likewise; no others."""
    h, w, hop = 7, 9, 2
    x = torch.zeros(1, h, w, 1)
    x[0, 3, 4, 0] = -5.0  # every pixel that sees (3, 4) gets x_j = 0 - (-5) = 5
    y = agg(x, hop)[0, :, :, 0]
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
    m, ref_mixer = pair("auto", torch.float64, d_model=16, groups=groups)
    m.train()
    ref_mixer.train()
    x = torch.randn(3, 5, 7, 16, dtype=torch.float64)
    names = ["fc1.weight", "graph_weight", "graph_bn.weight", "fc2.bias"]
    compare(m, ref_mixer, x, names, atol=1e-9, rtol=1e-9)
    with torch.no_grad():  # batch statistics differ from the running ones
        assert (ref_mixer(x) - ref_mixer.eval()(x)).abs().max() > 1e-2
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
        ({"hop": 0}, ValueError, "svga: hop must be >= 1, got 0"),
        ({"groups": 0}, ValueError, "groups must be >= 1, got 0"),
        ({"groups": 3}, ValueError, "groups=3 must divide .*2\\*d_model=64 and output width 64"),
        ({"bn_eps": 0.0}, ValueError, "bn_eps must be > 0, got 0.0"),
        (
            {"impl": "loop"},
            TypeError,
            "config 'impl' must be 'auto' \\| 'reference' \\| 'roll' \\| 'scan'",
        ),
        ({"causal": True}, ValueError, "svga does not support causal=True"),
        ({"K": 2}, TypeError, "unknown config key 'K'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("svga", d_model=32, **kw)
