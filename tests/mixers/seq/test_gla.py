"""gla mixer (causal and ViG-style bidirectional): every impl (``reference``, ``chunk``,
``native``, ``recurrent``) equal to fla's ``GatedLinearAttention`` layer written out by hand over
fla's naive recurrent GLA as the peer (outputs and input gradients, norm weights away from 1),
step == forward on every impl, the bidirectional form seeing the future and the causal one not,
the gate projection's width per direction, the bidirectional form refusing to stream, the window
masks it refuses, FLOPs linear in length, and config errors. (Call errors, streaming errors,
step == forward, attention maps and the gate: tests/contract.)

Also the pieces shared with ViG (:func:`fla_gla`, :func:`rms`,
:func:`check_flops_linear_in_length`), which tests/mixers/vision/test_vig.py uses.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import attnzoo as az
from attnzoo.testing import randomise, stream


# ---- shared with vig ------------------------------------------------------------------------
def fla_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:
    """fla's naive step loop: ``[B, T, H, K]`` in and out, scale ``K**-0.5`` (ours by default)."""
    from fla.ops.gla.naive import naive_recurrent_gla

    return naive_recurrent_gla(q, k, v, gk)[0]


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def check_flops_linear_in_length(name: str) -> None:
    m = az.build_mixer(name, d_model=64)
    f1, f2 = m.flops(2, 256), m.flops(2, 512)
    assert f1 > 0 and f2 == 2 * f1, name


# ---- gla ------------------------------------------------------------------------------------
def gla_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """fla's GatedLinearAttention layer written out (defaults: no short conv, swish output gate),
    with ViG's bidirectional form when ``causal=False``: forward gates on x, backward gates on
    the flipped sequence, outputs averaged."""
    H = m.cfg.heads
    split = lambda t: rearrange(t, "b t (h d) -> b t h d", h=H)  # noqa: E731
    q, k, v = split(m.q_proj(x)), split(m.k_proj(x)), split(m.v_proj(x))
    gk = F.logsigmoid(m.gk_proj[1](x @ m.gk_proj[0].weight.T)) / 16
    if m.cfg.causal:
        o = fla_gla(q, k, v, split(gk))
    else:
        gf, gb = (split(g) for g in gk.chunk(2, dim=-1))
        o_b = fla_gla(q.flip(1), k.flip(1), v.flip(1), gb.flip(1)).flip(1)
        o = (fla_gla(q, k, v, gf) + o_b) / 2
    o = rms(o, m.g_norm.weight) * F.silu(split(m.g_proj(x)))
    return m.o_proj(rearrange(o, "b t h d -> b t (h d)"))


# the only constant parameter of gla is the RMSNorm weight (ones): constant_only redraws just
# it, U(0.5, 1.5), so the norm weight matters to the comparisons


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
@pytest.mark.parametrize("causal", [True, False])
def test_gla_matches_layer_by_hand(causal: bool, impl: str) -> None:
    m = az.build_mixer("gla", d_model=64, num_heads=2, causal=causal, impl=impl, chunk_size=8)
    randomise(m, constant_only=True)
    x = torch.randn(2, 21, 64, requires_grad=True)
    got, want = m(x), gla_by_hand(m, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad((got * g).sum(), x)
    (gx_want,) = torch.autograd.grad((want * g).sum(), x)
    torch.testing.assert_close(gx, gx_want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
def test_gla_step_equals_forward(impl: str) -> None:
    m = az.build_mixer("gla", d_model=48, num_heads=3, causal=True, impl=impl, chunk_size=4)
    randomise(m, constant_only=True)
    m = m.double()
    x = torch.randn(2, 13, 48, dtype=torch.float64)
    y = m(x)
    got, state = stream(m, x, dtype=torch.float64)
    assert state.position == 13
    torch.testing.assert_close(got, y, atol=1e-10, rtol=1e-10)


def test_gla_bidirectional_sees_the_future_and_causal_does_not() -> None:
    x = torch.randn(1, 12, 32)
    x2 = x.clone()
    x2[:, 8:] += 1.0
    for causal in (True, False):
        m = az.build_mixer("gla", d_model=32, causal=causal)
        changed = not torch.allclose(m(x)[:, :8], m(x2)[:, :8])
        assert changed is (not causal)


def test_gla_gate_width_per_direction() -> None:
    assert az.build_mixer("gla", d_model=64, causal=True).gk_proj[1].out_features == 32
    assert az.build_mixer("gla", d_model=64).gk_proj[1].out_features == 64  # fwd + bwd gates


def test_bidirectional_cannot_stream_and_windows_are_refused() -> None:
    bi = az.build_mixer("gla", d_model=32)
    with pytest.raises(ValueError, match="bidirectional .* needs the whole sequence"):
        bi.init_state(1)
    gla = az.build_mixer("gla", d_model=32, causal=True)
    with pytest.raises(ValueError, match="does not support mask kind"):
        gla(torch.randn(1, 5, 32), mask=az.Mask.sliding_window(2))


def test_flops_grow_linearly() -> None:
    check_flops_linear_in_length("gla")


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"num_heads": 3}, ValueError, "key_dim=32 .* multiple of num_heads=3"),
        ({"expand_k": 0.01}, ValueError, "key_dim=0 .* positive multiple"),
        ({"expand_v": 0.75, "num_heads": 32}, ValueError, "value_dim=48 .*num_heads=32"),
        ({"impl": "fast"}, TypeError, "config 'impl' must be 'auto' \\| 'reference'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("gla", d_model=64, **kw)
