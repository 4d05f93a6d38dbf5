"""aaren mixer: every impl (``auto``, ``reference``, ``scan``, ``recurrent``) equal to torch
SDPA with the learned query repeated at every position (outputs and the gradients of the input,
the query and the k/v weights), step == forward on every streaming impl with the state's shape,
a constant-size state, large scores staying finite, the causal mask accepted and others refused,
the ``head_dim`` override, the config's ``impl`` reaching the op, ``step`` checking the token's
width, exact FLOPs (``scan`` vs ``recurrent``), and config errors. (Call errors, the
causal-self-only pattern, streaming errors, step == forward and the gate: tests/contract.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

import attnzoo as az
from attnzoo.mixers.seq.aaren import Aaren, AarenState
from attnzoo.testing import stream


def build(**kw: object) -> Aaren:
    m = az.build_mixer("aaren", d_model=kw.pop("d_model", 32), causal=True, **kw)
    assert isinstance(m, Aaren)
    return m


def sdpa_mixer_peer(m: Aaren, x: torch.Tensor) -> torch.Tensor:
    """The mixer recomputed with torch SDPA: its query repeated at every position, causal mask."""
    H, T = m.cfg.heads, x.shape[1]
    k, v = rearrange(m.kv_proj(x), "b t (two h k) -> two b h t k", two=2, h=H)
    q = repeat(m.query, "h k -> b h t k", b=x.shape[0], t=T)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=m.cfg.score_scale)
    return m.out_proj(rearrange(o, "b h t k -> b t (h k)"))


@pytest.mark.parametrize("impl", ["auto", "reference", "scan", "recurrent"])
def test_matches_sdpa_peer_forward_and_backward(impl: str) -> None:
    m = build(d_model=48, num_heads=3, kv_bias=True, impl=impl)
    x = torch.randn(2, 19, 48, requires_grad=True)
    got, want = m(x), sdpa_mixer_peer(m, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    params = [x, m.query, m.kv_proj.weight]
    grads = torch.autograd.grad((got * g).sum(), params)
    grads_peer = torch.autograd.grad((want * g).sum(), params)
    for a, b in zip(grads, grads_peer, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["auto", "scan", "recurrent"])
def test_step_equals_forward(impl: str) -> None:
    m = build(d_model=64, num_heads=4, impl=impl).double()
    x = torch.randn(3, 13, 64, dtype=torch.float64)
    y = m(x)
    assert m.init_state(3).w.shape == (3, 4, 16)
    got, state = stream(m, x, dtype=torch.float64)
    assert isinstance(state, AarenState) and state.position == 13
    torch.testing.assert_close(got, y, atol=1e-10, rtol=1e-10)


def test_state_size_is_constant() -> None:
    m = build()
    state = m.init_state(2)
    sizes = {sum(t.numel() for t in (state.m, state.u, state.w))}
    for _ in range(20):
        _, state = m.step(torch.randn(2, 32), state)
        sizes.add(sum(t.numel() for t in (state.m, state.u, state.w)))
    assert sizes == {2 * 1 * (1 + 1 + 32)}


def test_large_scores_stay_finite() -> None:
    m = build(scale=50.0)  # scores in the hundreds
    x = torch.randn(2, 40, 32, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(y, sdpa_mixer_peer(m, x), atol=1e-4, rtol=1e-4)


def test_causal_mask_accepted_other_masks_refused() -> None:
    m = build()
    x = torch.randn(1, 6, 32)
    torch.testing.assert_close(m(x, mask=az.Mask.causal_()), m(x))
    with pytest.raises(ValueError, match="does not support mask kind"):
        m(x, mask=az.Mask.sliding_window(3))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"num_heads": 5}, ValueError, "d_model=32 is not divisible by num_heads=5"),
        ({"impl": "fast"}, TypeError, "'impl' must be 'auto' \\| 'reference'"),
    ],
)
def test_config_errors(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        build(**kwargs)


def test_head_dim_override() -> None:
    m = build(num_heads=3, head_dim=7)
    assert m.query.shape == (3, 7) and m.kv_proj.out_features == 2 * 3 * 7
    assert m(torch.randn(2, 4, 32)).shape == (2, 4, 32)


def test_flops_grow_like_t_log_t_for_scan() -> None:
    spec = az.get_spec("aaren")
    scan = build(impl="scan").cfg
    rec = build(impl="recurrent").cfg
    assert spec.flops(scan, 1, 1024) > spec.flops(rec, 1, 1024) > 0
    # projections dominate both; the recurrence part is linear in T
    assert spec.flops(rec, 2, 200) == 2 * spec.flops(rec, 2, 100)


def test_step_checks_width() -> None:
    m = build()
    with pytest.raises(ValueError, match="x last dim must be 32"):
        m.step(torch.randn(2, 16), m.init_state(2))


@pytest.mark.parametrize("impl", ["reference", "scan", "recurrent"])
def test_config_impl_reaches_the_op(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import attnzoo.mixers.seq.aaren as mod

    seen: list[str] = []
    real = mod.aaren_scan

    def spy(s: torch.Tensor, v: torch.Tensor, *, impl: str) -> torch.Tensor:
        seen.append(impl)
        return real(s, v, impl=impl)

    monkeypatch.setattr(mod, "aaren_scan", spy)
    build(impl=impl)(torch.randn(1, 3, 32))
    assert seen == [impl]


def test_mixer_flops_exact() -> None:
    # d_model 32 -> 1 head of width 32; T = 4: k/v/out projections, scores, scan (d = 1, 2)
    cfg = build(impl="scan").cfg
    B, T, D, K = 2, 4, 32, 32
    proj = 2 * B * T * (D * 2 * K + K * D)
    scores = 2 * B * T * K
    scan = B * ((3 + 2) * (3 * K + 8) + T * K)
    assert az.get_spec("aaren").flops(cfg, B, T) == proj + scores + scan
