"""Contract tests for every block on a grid layout (``grid2d``, ``grid3d``): odd and
non-square grids either work or raise a ``ValueError`` naming the block and the size."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

import attnzoo as az
from tests.contract.inputs import all_specs, call, expected_shape, ids, inputs

GRID_SPECS = [s for s in all_specs() if s.layout != "tokens"]
ODD_SIDES = {2: (7, 13, 30), 3: (3, 5, 7)}


def grids(spec: az.MixerSpec) -> list[tuple[int, ...]]:
    """Every combination of odd sides (includes 7x13 and 13x7)."""
    rank = len(az.LAYOUTS[spec.layout].axes)
    return list(itertools.product(ODD_SIDES[rank], repeat=rank))


CASES = [(s, g) for s in GRID_SPECS for g in grids(s)]


@pytest.mark.parametrize(
    "spec,grid",
    CASES,
    ids=lambda v: ids(v) if isinstance(v, az.MixerSpec) else "x".join(map(str, v)),
)
def test_odd_grids_work_or_raise_a_naming_value_error(spec: az.MixerSpec, grid: tuple) -> None:
    """Any grid either works (shape, finite, gradients) or raises ``ValueError`` naming the
    block and an offending size; never another exception type."""
    pattern = spec.patterns[0]
    m = az.build_mixer(spec.name, d_model=32, causal=pattern.startswith("causal"))
    x, ctx = inputs(spec, m, pattern)
    x = az.LAYOUTS[spec.layout].example(2, grid, 32).requires_grad_(True)
    try:
        y = call(m, x, ctx)
    except ValueError as e:
        msg = str(e)
        assert spec.name in msg, f"{spec.name}: the error does not name the block: {msg!r}"
        sides = "|".join(str(s) for s in set(grid))
        assert re.search(rf"(?<!\d)({sides})(?!\d)", msg), (
            f"{spec.name}: the error for a {grid} grid does not name the offending size: {msg!r}"
        )
        return
    except Exception as e:  # any other type is the failure under test
        pytest.fail(f"{spec.name} on a {grid} grid raised {type(e).__name__}, not ValueError: {e}")
    assert y.shape == expected_shape(spec, x, m) and y.dtype == x.dtype
    assert torch.isfinite(y).all(), f"{spec.name}: non-finite output on a {grid} grid"
    (y * torch.randn(y.shape)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


BACKBONES = {
    "grid2d": ("metaformer_tiny", (2, 3, 32, 32)),
    "grid3d": ("metaformer3d_tiny", (2, 1, 32, 32, 32)),
}
BACKBONE_SPECS = [s for s in GRID_SPECS if s.role == "mixer" and "noncausal-self" in s.patterns]


@pytest.mark.parametrize("spec", BACKBONE_SPECS, ids=ids)
def test_trains_in_the_metaformer_of_its_layout(spec: az.MixerSpec) -> None:
    """Every grid mixer is a MetaFormer token mixer of its layout (2-D images, 3-D volumes):
    one training step gives every parameter a finite gradient."""
    name, shape = BACKBONES[spec.layout]
    model = az.create_model(name, mixer=spec.name, dims=(16, 32, 32, 32), num_classes=3)
    y = model(torch.randn(shape))
    assert y.shape == (2, 3)
    torch.nn.functional.cross_entropy(y, torch.tensor([0, 2])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{spec.name}: {pname}"
