"""The correctness gate (check_mixer): which path is the base, and its tolerance."""

from __future__ import annotations

import attnzoo as az
from attnzoo.bench.check import check_mixer


def test_base_is_the_first_explicit_impl_without_a_reference() -> None:
    """svga's impls are auto | roll | scan: 'roll' (the official loop) is the base, 'scan' is
    compared with it rather than skipped or failed."""
    rows = {r.impl: r for r in check_mixer(az.get_spec("svga"), d_model=16, length=9)}
    assert set(rows) == {"roll", "scan"}
    assert "shape/finite check" in rows["roll"].detail and rows["scan"].ok
    assert rows["scan"].max_abs_err < 1e-4


def test_tolerance_scales_with_each_tensor() -> None:
    """davit_channel's 'gram' path re-associates sums: its parameter gradients (magnitude ~1e2)
    differ from the reference by ~1e-3 in fp32, which is exact to ~1e-6 relative."""
    rows = {r.impl: r for r in check_mixer(az.get_spec("davit_channel"))}
    assert rows["gram"].ok
