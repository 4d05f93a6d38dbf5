"""lightning mixer: the ALiBi slopes (power-of-two and interleaved head counts) and TNL's depth
factor, fla's naive recurrent simple GLA (``g = -slope``, scale 1) as the peer (outputs and
input gradients), the fast paths (``chunk``, ``native``, ``recurrent``) equal to the reference
over several chunks, the window masks it refuses, FLOPs linear in length, and config errors.
(Call errors, the causal-self-only pattern, streaming errors, step == forward, attention maps
and the gate: tests/contract.)

The impl and FLOP checks are shared with linear (tests/mixers/seq/test_linear.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.mixers.seq.lightning import alibi_slopes, lightning_slopes
from tests.mixers.seq.test_linear import (
    FAST_IMPLS,
    check_flops_linear_in_length,
    check_impl_matches_reference,
)


def test_lightning_slopes_values() -> None:
    # power of two: s_h = 2^(-8(h+1)/H); H=8 gives 1/2, 1/4, ..., 1/256
    m = az.build_mixer("lightning", d_model=64, num_heads=8, causal=True)
    want = torch.tensor([2.0 ** (-(h + 1)) for h in range(8)])
    torch.testing.assert_close(m.slopes, want)
    # ALiBi extension, H=6: the 4 slopes of H=4, then slopes 0 and 2 of H=8
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    assert alibi_slopes(1) == [2**-8]
    # TNL's depth factor, only with num_layers > 1
    deep = lightning_slopes(8, layer_idx=2, num_layers=5)
    torch.testing.assert_close(deep, want.double() * (1 - 2 / 4 + 1e-5))
    torch.testing.assert_close(lightning_slopes(8, 0, 1), want.double())
    last = az.build_mixer(
        "lightning", d_model=64, num_heads=8, layer_idx=4, num_layers=5, causal=True
    )
    torch.testing.assert_close(last.slopes, want * 1e-5)


def test_lightning_matches_fla_simple_gla() -> None:
    """Peer: fla's naive recurrent simple GLA with g = -slope per head broadcast over (B, T) and
    scale=1 (fla's default is 1/sqrt(K); Lightning has no scale), on our SiLU'd projections."""
    pytest.importorskip("fla")
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    m = az.build_mixer("lightning", d_model=32, num_heads=4, causal=True, chunk_size=8)
    x = torch.randn(2, 30, 32, requires_grad=True)
    qkv = F.silu(m.qkv_proj(x)).unflatten(-1, (3, 4, 8))  # [B, T, 3, H, K]
    q, k, v = qkv.unbind(2)
    g = (-m.slopes)[None, None].expand(2, 30, 4)
    o, _ = naive_recurrent_simple_gla(q, k, v, g, scale=1.0)
    want = m.out_proj(o.flatten(2))
    got = m(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gr = torch.randn_like(got)
    (gx,) = torch.autograd.grad((got * gr).sum(), x, retain_graph=True)
    (gx_peer,) = torch.autograd.grad((want * gr).sum(), x)
    torch.testing.assert_close(gx, gx_peer, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_impls_match_the_reference(impl: str) -> None:
    # lightning is causal only (the paper defines no other form)
    check_impl_matches_reference("lightning", True, impl)


def test_window_masks_are_refused() -> None:
    m = az.build_mixer("lightning", d_model=32, causal=True)
    with pytest.raises(ValueError, match="does not support mask kind"):
        m(torch.randn(1, 5, 32), mask=az.Mask.sliding_window(2))


def test_flops_are_linear_in_length() -> None:
    check_flops_linear_in_length("lightning")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"num_heads": 5}, ValueError, "d_model=32 is not divisible by num_heads=5"),
        (
            {"layer_idx": 3, "num_layers": 3},
            ValueError,
            "layer_idx must be in \\[0, num_layers=3\\), got 3",
        ),
        ({"slope": 1}, TypeError, "unknown config key 'slope'"),
    ],
)
def test_bad_config(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("lightning", d_model=32, **kwargs)
