"""combiner mixer: the block is projections + the op (one segment, and one-token segments, give
exact softmax attention on the same projections), ``segments`` equals ``reference`` with every
parameter gradient at lengths the segment does not divide, the attention maps' full support,
causality, the per-call default segment, config errors and FLOPs. (Call errors, patterns, maps
reproducing forward, low precision, export and the gate: tests/contract.)"""

from __future__ import annotations

import pytest
import torch

import attnzoo as az
from attnzoo.ops.combiner import combiner_flops
from attnzoo.ops.softmax import softmax_attention
from tests.helpers import assert_paths_equal

VARIANTS = [{"variant": "fixed"}, {"variant": "fixed", "pool": "mean"}, {"variant": "axial"},
            {"variant": "axial", "row_summary": "wsum"}]  # fmt: skip


def _id(kw: dict) -> str:
    return "-".join(str(v) for v in kw.values())


@pytest.mark.parametrize("options", VARIANTS, ids=_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("segment", [1, 9, 50])
def test_degenerate_segments_are_softmax_attention(options: dict, causal: bool, segment) -> None:
    """Identity (no pip peer exists): with one segment (``s >= T``) or one-token segments the
    factorised probabilities are exactly softmax attention's."""
    m = az.build_mixer("combiner", d_model=16, num_heads=2, causal=causal, segment=segment,
                       bias=True, **options)  # fmt: skip
    x = torch.randn(2, 9, 16)
    q, k, v = m._project(x)
    want = m._out(softmax_attention(q, k, v, mask="causal" if causal else "full"))
    torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", VARIANTS, ids=_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,segment", [(23, 5), (19, None), (30, 7)])
def test_segments_matches_reference(options: dict, causal: bool, T: int, segment) -> None:
    kw = {"d_model": 16, "num_heads": 2, "causal": causal, "segment": segment, **options}
    ref = az.build_mixer("combiner", impl="reference", **kw)
    fast = az.build_mixer("combiner", impl="segments", **kw)
    fast.load_state_dict(ref.state_dict())
    assert_paths_equal(fast, ref, torch.randn(2, T, 16), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("options", VARIANTS, ids=_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_maps_have_full_support(options: dict, causal: bool) -> None:
    m = az.build_mixer("combiner", d_model=16, num_heads=2, causal=causal, segment=4, **options)
    maps = m.attention_maps(torch.randn(1, 14, 16))
    allowed = torch.ones(14, 14, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    assert bool((maps.weights[..., allowed] > 0).all())
    assert bool((maps.weights[..., ~allowed] == 0).all())
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(1, 2, 14))


@pytest.mark.parametrize("options", VARIANTS, ids=_id)
def test_causal_outputs_ignore_the_future(options: dict) -> None:
    m = az.build_mixer("combiner", d_model=16, num_heads=2, causal=True, **options)
    x = torch.randn(2, 20, 16)  # default segment 5
    y = m(x)
    for t in (4, 5, 12):
        x2 = x.clone()
        x2[:, t] += 1.0
        y2 = m(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], atol=0, rtol=0)
        assert not torch.allclose(y2[:, t], y[:, t])


def test_default_segment_follows_each_call_length() -> None:
    m = az.build_mixer("combiner", d_model=16, num_heads=2, causal=True)
    for T, s in ((16, 4), (17, 5), (40, 7)):
        fixed = az.build_mixer("combiner", d_model=16, num_heads=2, causal=True, segment=s)
        fixed.load_state_dict(m.state_dict())
        x = torch.randn(1, T, 16)
        torch.testing.assert_close(m(x), fixed(x), atol=0, rtol=0)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="pool='mean' applies to variant='fixed' only"):
        az.build_mixer("combiner", d_model=16, variant="axial", pool="mean")
    with pytest.raises(ValueError, match="row_summary='wsum' applies to variant='axial' only"):
        az.build_mixer("combiner", d_model=16, variant="fixed", row_summary="wsum")
    with pytest.raises(ValueError, match="segment must be >= 1, got 0"):
        az.build_mixer("combiner", d_model=16, segment=0)
    with pytest.raises((TypeError, ValueError), match="segment"):
        az.build_mixer("combiner", d_model=16, segment=True)
    with pytest.raises((TypeError, ValueError), match="variant"):
        az.build_mixer("combiner", d_model=16, variant="logsparse")
    with pytest.raises((TypeError, ValueError), match="impl"):
        az.build_mixer("combiner", d_model=16, impl="blocked")
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        az.build_mixer("combiner", d_model=16, num_heads=3)
    with pytest.raises(ValueError, match="no streaming state"):
        az.build_mixer("combiner", d_model=16, causal=True).init_state(1)


@pytest.mark.parametrize("options", VARIANTS, ids=_id)
def test_flops_are_projections_plus_the_op(options: dict) -> None:
    m = az.build_mixer("combiner", d_model=64, num_heads=4, **options)
    variant, summary = m.cfg.variant, m.cfg.row_summary
    for T in (100, 1000):
        proj = 2 * 3 * T * 64 * 4 * 64
        op = combiner_flops(3, 4, 16, 16, T, None, variant, summary)
        assert m.flops(3, T) == proj + op
    fixed = az.build_mixer("combiner", d_model=64, num_heads=4, segment=10, **options)
    assert fixed.flops(1, 100) == 2 * 100 * 64 * 4 * 64 + combiner_flops(
        1, 4, 16, 16, 100, 10, variant, summary)  # fmt: skip
