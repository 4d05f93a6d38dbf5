"""linear mixer: the composition (projections, ``elu+1`` feature map, the op's reference) on
self, causal and cross calls, fla's naive recurrent linear attention as the peer (outputs and
input gradients, normalised and not), the fast paths (``chunk``, ``native``, ``recurrent``)
equal to the reference over several chunks, step == forward for other configs (ReLU and
identity maps, no normaliser, grouped k/v heads, ``qk_norm``) with the state's shape, the
window masks it refuses, FLOPs linear in length, and config errors. (Call errors, streaming
errors, step == forward, attention maps and the gate: tests/contract.)

Also the checks shared with lightning (:func:`check_impl_matches_reference`,
:func:`check_flops_linear_in_length`), which tests/mixers/seq/test_lightning.py runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.ops.linear import linear_attention

# the fast paths checked against the reference (``compiled`` is ``chunk`` through torch.compile)
FAST_IMPLS = ["chunk", "native", "recurrent"]


# ---- shared with lightning ------------------------------------------------------------------
def check_impl_matches_reference(name: str, causal: bool, impl: str) -> None:
    """The ``impl`` path of ``name`` equals its ``reference`` (same weights) over several
    chunks, the last one ragged (37 tokens, chunks of 8)."""
    x = torch.randn(2, 37, 32)
    kw = {"d_model": 32, "num_heads": 4, "causal": causal, "chunk_size": 8}
    ref = az.build_mixer(name, impl="reference", **kw)
    m = az.build_mixer(name, impl=impl, **kw)
    m.load_state_dict(ref.state_dict())
    torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)


def check_flops_linear_in_length(name: str) -> None:
    m = az.build_mixer(name, d_model=64, causal=True)
    f1, f2 = m.flops(1, 1000), m.flops(1, 2000)
    assert f2 == 2 * f1  # projections and the state form both scale with T


# ---- linear ---------------------------------------------------------------------------------
@pytest.mark.parametrize("causal,cross", [(False, False), (True, False), (False, True)])
def test_linear_is_projections_feature_map_and_op(causal: bool, cross: bool) -> None:
    m = az.build_mixer("linear", d_model=32, num_heads=2, causal=causal, qkv_bias=True)
    x = torch.randn(2, 9, 32)
    ctx = torch.randn(2, 4, 32) if cross else None
    q, k, v = m._project(x, x if ctx is None else ctx)
    o = linear_attention(
        F.elu(q) + 1, F.elu(k) + 1, v, causal=causal, normalize=True, impl="reference"
    )
    torch.testing.assert_close(m(x, context=ctx), m.out_proj(o.flatten(2)))


@pytest.mark.parametrize("normalize", [False, True])
def test_linear_causal_matches_fla_naive_recurrent(normalize: bool) -> None:
    """Peer: fla's naive recurrent linear attention (scale passed as 1, its eps is 1e-10 vs our
    1e-6: denominators here are >= 1, so the difference is far below the tolerance)."""
    pytest.importorskip("fla")
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

    m = az.build_mixer("linear", d_model=32, num_heads=2, causal=True, normalize=normalize)
    x = torch.randn(2, 20, 32, requires_grad=True)
    q, k, v = m._project(x, x)
    o, _ = naive_recurrent_linear_attn(
        F.elu(q) + 1, F.elu(k) + 1, v, scale=1.0, normalize=normalize
    )
    want = m.out_proj(o.flatten(2))
    got = m(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad((got * g).sum(), x, retain_graph=True)
    (gx_peer,) = torch.autograd.grad((want * g).sum(), x)
    torch.testing.assert_close(gx, gx_peer, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("causal", [False, True])
def test_impls_match_the_reference(causal: bool, impl: str) -> None:
    check_impl_matches_reference("linear", causal, impl)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalize": False, "feature_map": "relu"},
        {"num_heads": 4, "num_kv_heads": 2, "qk_norm": True},
        {"feature_map": "identity", "normalize": False, "impl": "recurrent"},
    ],
)
def test_linear_step_equals_forward_for_other_configs(kwargs: dict) -> None:
    m = az.build_mixer("linear", d_model=32, causal=True, **kwargs).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    assert (state.z is None) == (not m.cfg.normalize)
    ys = []
    for t in range(10):
        y, state = m.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), m(x), atol=1e-10, rtol=1e-10)
    K = m.cfg.dim_head
    assert state.position == 10 and state.kv.shape == (2, m.cfg.heads, K, K)


def test_window_masks_are_refused() -> None:
    m = az.build_mixer("linear", d_model=32)
    with pytest.raises(ValueError, match="does not support mask kind"):
        m(torch.randn(1, 5, 32), mask=az.Mask.sliding_window(2, causal=False))
    m = az.build_mixer("linear", d_model=32, causal=True)
    with pytest.raises(ValueError, match="does not support mask kind"):
        m(torch.randn(1, 5, 32), mask=az.Mask.sliding_window(2))


def test_flops_are_linear_in_length() -> None:
    check_flops_linear_in_length("linear")
    m = az.build_mixer("linear", d_model=64, num_heads=2, normalize=False)
    proj = 2 * (100 * 64 * 64 * 4)
    assert m.flops(1, 100) - proj == 2 * 2 * (100 + 100) * 32 * 32


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (
            {"feature_map": "elu"},
            ValueError,
            "linear: feature_map must be one of 'elu\\+1', 'relu', 'identity', got 'elu' "
            "\\(did you mean .*'elu\\+1'",
        ),
        ({"window": 4}, ValueError, "linear: window=4 is not supported"),
        ({"causal": True, "prefix": 2}, ValueError, "prefix=2 is not supported"),
        ({"normalize": 1}, TypeError, "config 'normalize' must be bool"),
        ({"impl": "fused"}, TypeError, "config 'impl' must be 'auto' \\| 'reference'"),
    ],
)
def test_bad_config(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("linear", d_model=32, **kwargs)
