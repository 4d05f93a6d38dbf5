"""hyena mixer (1-D, causal): the block against the module docstring's formulas written as loops
(filter, short conv, gating recurrence and convolution sums by hand), the fast path against the
reference at odd lengths and orders, the implicit filter's positions and decay window as
configured, causality and prefix consistency past ``max_len``, streaming at other orders and
short kernels, FLOPs and config errors. (The identity FFT = direct convolution: tests/ops; call
errors, the gate, step == forward at defaults, maps and export: tests/contract.)"""

from __future__ import annotations

import math

import pytest
import torch

import attnzoo as az
from attnzoo.mixers.hyena_filter import decay_rates, positional_features
from attnzoo.mixers.seq.hyena import hyena_flops
from attnzoo.ops.longconv import long_conv_flops
from attnzoo.testing import randomise, stream
from tests.helpers import assert_all_close, fwd_bwd

F64 = torch.float64


def build(**cfg: object) -> az.Mixer:
    return randomise(az.build_mixer("hyena", d_model=8, causal=True, **cfg), seed=0).double()


def hyena_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """The module docstrings' formulas with explicit loops over time, from the parameters."""
    cfg = m.cfg
    D, N, k, E, L = cfg.d_model, cfg.order, cfg.short_filter_order, cfg.emb_dim, cfg.max_len
    B, T, _ = x.shape
    p = x @ m.in_proj.weight.T + m.in_proj.bias  # [B, T, (N+1) D]
    w = m.short_filter.weight[:, 0]  # [W, k]
    q = torch.zeros_like(p) + m.short_filter.bias
    for t in range(T):
        for j in range(k):  # output t sees p[t - k + 1 + j]
            if t - k + 1 + j >= 0:
                q[:, t] = q[:, t] + w[:, j] * p[:, t - k + 1 + j]
    *gates, v = q.split(D, dim=-1)
    # the implicit filter: features, FFN with shared sine frequency, exponential window
    pos = torch.arange(T, dtype=F64)
    t_ = pos / (L - 1)
    bands = (E - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands, dtype=F64)
    z = torch.cat([t_[:, None], torch.cos(2 * math.pi * f * pos[:, None] / L),
                   -torch.sin(2 * math.pi * f * pos[:, None] / L)], dim=-1)  # fmt: skip
    ffn = m.filter_fn.ffns[0]
    for layer in ffn.hidden:
        z = torch.sin(m.filter_fn.freq * (z @ layer.weight.T + layer.bias))
    rates = torch.linspace(math.log(1 / cfg.decay_target) / cfg.slow_decay_pct,
                           math.log(1 / cfg.decay_target) / cfg.fast_decay_pct, D * (N - 1),
                           dtype=F64)  # fmt: skip
    h = (z @ ffn.out.weight.T) * torch.exp(-t_[:, None] * rates)  # [T, (N-1) D]
    skip = m.filter_fn.bias
    z = v
    for o in range(N - 1):
        u = gates[N - 1 - o] * z
        ho, do = h[:, o * D : (o + 1) * D], skip[o * D : (o + 1) * D]
        y = torch.zeros_like(u)
        for t in range(T):
            for s in range(t + 1):
                y[:, t] = y[:, t] + ho[t - s] * u[:, s]
        z = y + do * u
    return (gates[0] * z) @ m.out_proj.weight.T + m.out_proj.bias


@pytest.mark.parametrize("order,short,emb", [(2, 3, 3), (3, 2, 5), (4, 1, 7)])
def test_block_equals_the_formulas_by_hand(order: int, short: int, emb: int) -> None:
    m = build(order=order, short_filter_order=short, emb_dim=emb, max_len=16, filter_order=6)
    x = torch.randn(2, 9, 8, dtype=F64)
    want = hyena_by_hand(m, x)
    torch.testing.assert_close(m(x), want)
    r = build(order=order, short_filter_order=short, emb_dim=emb, max_len=16, filter_order=6,
              impl="reference")  # fmt: skip
    r.load_state_dict(m.state_dict())
    torch.testing.assert_close(r(x), want)


@pytest.mark.parametrize("T", [1, 7, 100])
@pytest.mark.parametrize("order", [2, 3])
def test_fft_matches_reference(T: int, order: int) -> None:
    """Forward and every gradient (input and parameters), fp64; T = 100 > max_len = 64."""
    ref = build(order=order, max_len=64)
    fast = build(order=order, max_len=64, impl="fft")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, T, 8, dtype=F64)

    def run(m: az.Mixer) -> list[torch.Tensor]:
        torch.manual_seed(3)
        out = fwd_bwd(m, [x])
        return out + [p.grad for p in m.parameters()]

    assert_all_close(run(fast), run(ref), atol=1e-10, rtol=1e-10)


def test_positional_features_as_official() -> None:
    """``z = [t, Re exp(-i f w), Im exp(-i f w)]``, ``t = linspace(0, 1, L)``, ``w = 2 pi k / L``,
    ``f = linspace(1e-4, B - 1, B)``; positions past ``L`` continue the formulas."""
    L, E = 10, 7
    z, t = positional_features(14, L, E, device=torch.device("cpu"), dtype=F64)
    torch.testing.assert_close(t[:L], torch.linspace(0, 1, L, dtype=F64))
    k = torch.arange(14, dtype=F64)[:, None]
    f = torch.linspace(1e-4, 2, 3, dtype=F64)
    e = torch.exp(-1j * f * 2 * math.pi * k / L)
    torch.testing.assert_close(z, torch.cat([t[:, None], e.real, e.imag], dim=-1))
    assert t[13] == pytest.approx(13 / 9)
    z1, t1 = positional_features(1, 1, 3, device=torch.device("cpu"), dtype=F64)
    assert t1.tolist() == [0.0] and torch.isfinite(z1).all()


def test_filters_decay_as_configured() -> None:
    """The window of the first channel falls to ``decay_target`` at ``t = slow_decay_pct`` and
    that of the last at ``t = fast_decay_pct`` (fractions of ``max_len``); the filter is the
    FFN's output times that window, and ``modulate=False`` drops it."""
    m = build(order=3, max_len=101, fast_decay_pct=0.2, slow_decay_pct=0.8, decay_target=0.05)
    f = m.filter_fn
    C = 8 * 2
    r = decay_rates(C, 0.2, 0.8, 0.05)
    assert r[0] == pytest.approx(math.log(20) / 0.8) and r[-1] == pytest.approx(math.log(20) / 0.2)
    w = f.window(torch.tensor([0.0, 0.2, 0.8], dtype=F64))  # [3, C]
    assert torch.allclose(w[0], torch.ones(C, dtype=F64))
    assert w[1, -1].item() == pytest.approx(0.05) and w[2, 0].item() == pytest.approx(0.05)
    assert (w[1, 1:] < w[1, :-1]).all()  # later channels decay faster
    raw, window = f.raw((101,), (101,))
    torch.testing.assert_close(f((101,), (101,)), raw * window)
    torch.testing.assert_close(window[80, 0], torch.tensor(0.05, dtype=F64))  # t = 80/100
    torch.testing.assert_close(window[20, -1], torch.tensor(0.05, dtype=F64))
    flat = build(order=3, max_len=101, modulate=False)
    raw, window = flat.filter_fn.raw((101,), (101,))
    assert (window == 1).all()
    # filter o is channels o*D .. (o+1)*D: the second filter has the faster windows
    hs, _ = m._filters(101)
    torch.testing.assert_close(hs[1], f((101,), (101,))[:, 8:])


def test_causal_and_independent_of_the_length() -> None:
    """Outputs of a prefix equal those of the whole sequence (the filter is normalised by
    ``max_len``, not by ``T``), also past ``max_len``; no gradient flows from the future."""
    m = build(max_len=8)
    x = torch.randn(2, 13, 8, dtype=F64, requires_grad=True)
    y = m(x)
    for t in (1, 5, 8, 12):
        torch.testing.assert_close(m(x[:, :t]), y[:, :t])
    (g,) = torch.autograd.grad(y[:, 6].sum(), x)
    assert g[:, 7:].abs().max() < 1e-14 and (g[:, :7] != 0).any()  # the FFT's rounding
    ref = build(max_len=8, impl="reference")
    ref.load_state_dict(m.state_dict())
    (g,) = torch.autograd.grad(ref(x)[:, 6].sum(), x)
    assert (g[:, 7:] == 0).all() and (g[:, :7] != 0).any()  # the direct sum: exactly zero


@pytest.mark.parametrize("order,short", [(3, 3), (2, 1), (4, 4)])
def test_step_equals_forward(order: int, short: int) -> None:
    m = build(order=order, short_filter_order=short, max_len=5)
    x = torch.randn(2, 9, 8, dtype=F64)
    got, state = stream(m, x, dtype=F64)
    torch.testing.assert_close(got, m(x), atol=1e-12, rtol=1e-12)
    assert state.inputs.shape == (2, 9, order - 1, 8) and state.short.shape == (
        2,
        short - 1,
        8 * (order + 1),
    )


def test_flops_count_projections_gates_fft_and_filter() -> None:
    cfg = az.get_spec("hyena").config(d_model=16, causal=True, order=3, filter_order=8)
    T = 256
    proj = 2 * 2 * T * (16 * 64 + 64 * 3 + 16 * 16)
    gates = 2 * T * 16 * 3
    ffn = 2 * (3 * 8 + 2 * 8 * 8 + 8 * 32) + 3 * 2 * 8
    filt = T * (ffn + 2 * 32)
    want = proj + gates + 2 * long_conv_flops(2, 16, T, 1) + filt
    assert hyena_flops(cfg, 2, T, None, None) == want
    assert (
        az.build_mixer("hyena", d_model=16, causal=True, order=3, filter_order=8).flops(2, T)
        == want
    )
    # O(T log T): doubling T a bit more than doubles the count
    big = az.get_spec("hyena").config(d_model=16, causal=True)
    ratio = hyena_flops(big, 1, 2**14, None, None) / hyena_flops(big, 1, 2**13, None, None)
    assert 2.0 < ratio < 2 * 15 / 14


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"order": 1}, ValueError, "hyena: order must be >= 2, got 1"),
        ({"emb_dim": 4}, ValueError, "emb_dim must be an odd int >= 3, got 4"),
        ({"emb_dim": 1}, ValueError, "emb_dim must be"),
        ({"max_len": 1}, ValueError, "max_len must be >= 2, got 1"),
        ({"fast_decay_pct": 2.0}, ValueError, r"fast_decay_pct=2.0 must be <= slow_decay_pct=1.5"),
        ({"decay_target": 0.0}, ValueError, "decay_target must be > 0 and <= 1, got 0.0"),
        ({"short_filter_order": 0}, ValueError, "short_filter_order must be >= 1"),
        ({"impl": "direct"}, TypeError, "impl"),
        ({"num_heads": 2}, TypeError, "unknown config key 'num_heads'"),
    ],
)
def test_config_errors(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("hyena", d_model=8, causal=True, **kwargs)


def test_non_causal_is_refused() -> None:
    with pytest.raises(ValueError, match="hyena does not support causal=False"):
        az.build_mixer("hyena", d_model=8)
