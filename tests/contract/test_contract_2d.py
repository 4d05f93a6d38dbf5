"""Contract tests for every registered 2-D mixer (channels-last ``[B, h, w, C]``).

``test_contract.py`` already covers, for 2-D mixers too: building from ``d_model`` alone (32, 48,
64), output shape/dtype in fp32 and fp64, finiteness and non-zero gradients at width 32. This
file adds odd and non-square grids and the forward/backward contract at the other widths.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch

import attnzoo as az
from tests.contract.inputs import grid_for, ids

SPECS_2D = az.list_mixers(dims=2)
ODD_SIDES = (7, 13, 30)
GRIDS = list(itertools.product(ODD_SIDES, ODD_SIDES))  # includes 7x13 and 13x7


@pytest.mark.parametrize("spec", SPECS_2D, ids=ids)
@pytest.mark.parametrize("hw", GRIDS, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_odd_grids_work_or_raise_a_naming_value_error(
    spec: az.MixerSpec, hw: tuple[int, int]
) -> None:
    """Any ``h x w`` either works (shape, finite) or raises ``ValueError`` naming the mixer and
    the offending size; never another exception type."""
    h, w = hw
    m = az.build_mixer(spec.name, d_model=32)
    x = torch.randn(2, h, w, 32)
    try:
        with torch.no_grad():
            y = m(x)
    except ValueError as e:
        msg = str(e)
        assert spec.name in msg, f"{spec.name}: the error does not name the mixer: {msg!r}"
        assert re.search(rf"(?<!\d)({h}|{w})(?!\d)", msg), (
            f"{spec.name}: the error for a {h}x{w} grid does not name the offending size: {msg!r}"
        )
        return
    except Exception as e:  # any other type is the failure under test
        pytest.fail(f"{spec.name} on a {h}x{w} grid raised {type(e).__name__}, not ValueError: {e}")
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all(), f"{spec.name}: non-finite output on a {h}x{w} grid"


@pytest.mark.parametrize("spec", SPECS_2D, ids=ids)
@pytest.mark.parametrize("d_model", [48, 64])
def test_forward_backward_at_other_widths(spec: az.MixerSpec, d_model: int) -> None:
    m = az.build_mixer(spec.name, d_model=d_model)
    h, w = grid_for(spec.name, d_model)
    x = torch.randn(2, h, w, d_model, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{spec.name}: parameter {name} got no gradient (C={d_model})"
        assert torch.isfinite(p.grad).all(), f"{spec.name}: {name}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{spec.name}: {name}: all-zero gradient (C={d_model})"


@pytest.mark.parametrize("spec", SPECS_2D, ids=ids)
def test_rejects_wrong_rank_and_width(spec: az.MixerSpec) -> None:
    m = az.build_mixer(spec.name, d_model=32)
    with pytest.raises(ValueError, match=r"\[B, h, w, C\]"):
        m(torch.randn(2, 49, 32))
    with pytest.raises(ValueError, match="last dim must be 32"):
        m(torch.randn(2, 7, 7, 16))
