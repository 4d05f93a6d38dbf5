"""gated_linear_attention: every impl vs reference (fwd + bwd), long-sequence stability, the
fla-core peer, the reverse / bidirectional forms, and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.gla import bidirectional_gla, gated_linear_attention
from tests.helpers import assert_all_close, fwd_bwd

LENGTHS = [1, 7, 63, 100, 257]
B, H, K, V = 2, 2, 16, 8


def inputs(
    T: int, gates: str = "normal", b: int = B, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """q, k, v and log gates gk <= 0. ``normal``: logsigmoid of a Gaussian (mostly mild decay);
    ``strong``: uniform in [-5, 0] per step (state forgets fast; cumulative gates reach -1000s)."""
    kw = {"dtype": dtype}
    q, k, v = (
        torch.randn(b, T, H, K, **kw),
        torch.randn(b, T, H, K, **kw),
        torch.randn(b, T, H, V, **kw),
    )
    if gates == "normal":
        gk = F.logsigmoid(torch.randn(b, T, H, K, **kw))
    else:
        gk = -5.0 * torch.rand(b, T, H, K, **kw)
    return [q, k, v, gk]


def op(impl: str, **kw: object):  # noqa: ANN201
    return lambda q, k, v, g: gated_linear_attention(q, k, v, g, impl=impl, **kw)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("gates", ["normal", "strong"])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize(
    "impl,chunk_size",
    [("chunk", 16), ("chunk", 64), ("native", 16), ("native", 64), ("recurrent", 16)],
)
def test_impl_matches_reference(
    impl: str, chunk_size: int, T: int, gates: str, reverse: bool
) -> None:
    x = inputs(T, gates)
    g = torch.randn(B, T, H, V)
    # chunk sizes 16 and 64 divide none of 7, 63, 100, 257: the last chunk is partial. 64 also
    # runs the sub-chunk (matmul) form inside chunks (T=100, 257); 16 only the pairwise form.
    want = fwd_bwd(op("reference", reverse=reverse), x, g)
    got = fwd_bwd(op(impl, reverse=reverse, chunk_size=chunk_size), x, g)
    # strong gates in chunks of 64: within-chunk cumulative gates reach -320 and their fp32
    # differences are off by ~eps*320 (see test_sub_chunked_intra_chunk_form); errors seen ~2e-5
    loose = impl in ("chunk", "native") and chunk_size > 16 and gates == "strong"
    assert_all_close(got, want, *((1e-4, 1e-4) if loose else ()))


@pytest.mark.parametrize("chunk_size", [32, 48, 128])
def test_sub_chunked_intra_chunk_form(chunk_size: int) -> None:
    """Chunks of 2, 3 and 8 sub-chunks (T=300 leaves a partial last chunk). With strong gates the
    within-chunk cumulative gate reaches -5·C, and a difference of two such fp32 numbers is off
    by about eps·5·C (3e-5 at C=128): the tolerance allows for it (the step loop has no such
    cancellation)."""
    x = inputs(300, "strong")
    g = torch.randn(B, 300, H, V)
    want = fwd_bwd(op("recurrent"), x, g)
    assert_all_close(fwd_bwd(op("chunk", chunk_size=chunk_size), x, g), want, atol=1e-4, rtol=1e-4)


def test_auto_and_default_chunk_size_handle_partial_chunks() -> None:
    x = inputs(150)
    want = gated_linear_attention(*x, impl="reference")
    torch.testing.assert_close(gated_linear_attention(*x), want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(
        gated_linear_attention(*x, impl="chunk", chunk_size=1000), want, atol=2e-5, rtol=1e-5
    )


@pytest.mark.parametrize("impl", ["chunk", "native"])
def test_long_sequence_with_strong_gates_is_stable(impl: str) -> None:
    """T=2048, gates down to -5 per step: the cumulative log decay reaches about -5000, so
    exp(G_t) * exp(-G_s) would overflow; the chunk path only exponentiates differences <= 0
    and must stay finite and equal to the step loop, forward and backward."""
    x = inputs(2048, "strong", b=1)
    assert float(x[3].sum(dim=1).min()) < -4000  # the claim above holds for this draw
    g = torch.randn(1, 2048, H, V)
    want = fwd_bwd(op("recurrent"), x, g)
    got = fwd_bwd(op(impl, chunk_size=64), x, g)
    for t in got:
        assert torch.isfinite(t).all()
    assert_all_close(got, want, atol=1e-4, rtol=1e-4)


def test_custom_scale() -> None:
    x = inputs(20)
    got = gated_linear_attention(*x, scale=0.3, impl="chunk", chunk_size=8)
    q, k, v, gk = x
    want = gated_linear_attention(q * 0.3 * K**0.5, k, v, gk, impl="reference")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


# ---- peer: fla-core's pure-PyTorch step loop --------------------------------------------------
def fla_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:
    """``fla.ops.gla.naive.naive_recurrent_gla``. Conventions, checked in its source: inputs
    ``[B, T, H, K]`` (it transposes to ``[B, H, T, K]`` inside and back on output); ``gk`` is the
    log forget gate, ``S_t = exp(gk_t)[:, None] * S_{t-1} + k_t^T v_t``; the scale is fixed at
    ``K**-0.5`` and multiplies q; it returns ``(o, final_state)`` and computes in float32. Ours
    with ``scale=None`` uses the same scale and layout, so no conversion is needed beyond
    taking ``[0]``."""
    from fla.ops.gla.naive import naive_recurrent_gla

    return naive_recurrent_gla(q, k, v, gk)[0]


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
@pytest.mark.parametrize("gates", ["normal", "strong"])
@pytest.mark.parametrize("T", [7, 100])
def test_matches_fla_naive_recurrent_gla(impl: str, gates: str, T: int) -> None:
    x = inputs(T, gates)
    g = torch.randn(B, T, H, V)
    want = fwd_bwd(fla_naive, x, g)
    got = fwd_bwd(op(impl, chunk_size=16), x, g)
    assert_all_close(got, want)


def test_reverse_matches_fla_on_flipped_sequence() -> None:
    """Peer for ``reverse=True``: fla's forward scan on time-flipped inputs, flipped back."""
    x = inputs(33)
    g = torch.randn(B, 33, H, V)
    want = fwd_bwd(lambda *t: fla_naive(*(a.flip(1) for a in t)).flip(1), x, g)
    got = fwd_bwd(op("chunk", reverse=True, chunk_size=8), x, g)
    assert_all_close(got, want)


# ---- bidirectional (ViG) ----------------------------------------------------------------------
def explicit_scans(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gf: torch.Tensor, gb: torch.Tensor
) -> torch.Tensor:
    """Written out here: a left-to-right scan with gf and a right-to-left scan with gb, averaged."""
    Bn, T = q.shape[:2]
    q = q * q.shape[-1] ** -0.5
    out = torch.zeros(Bn, T, H, V)
    for order, gate in ((range(T), gf), (range(T - 1, -1, -1), gb)):
        S = torch.zeros(Bn, H, K, V)
        for t in order:
            S = gate[:, t].exp().unsqueeze(-1) * S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
            out[:, t] += torch.einsum("bhk,bhkv->bhv", q[:, t], S) / 2
    return out


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
@pytest.mark.parametrize("T", [1, 7, 63])
def test_bidirectional_equals_forward_plus_reverse_scans(impl: str, T: int) -> None:
    q, k, v, gf = inputs(T)
    gb = -5.0 * torch.rand(B, T, H, K)  # different gates per direction
    x = [q, k, v, gf, gb]
    g = torch.randn(B, T, H, V)
    want = fwd_bwd(explicit_scans, x, g)
    got = fwd_bwd(lambda *t: bidirectional_gla(*t, impl=impl, chunk_size=16), x, g)
    assert_all_close(got, want)


def test_bidirectional_equals_op_with_reverse() -> None:
    q, k, v, gf = inputs(40)
    gb = F.logsigmoid(torch.randn(B, 40, H, K))
    want = (
        gated_linear_attention(q, k, v, gf, impl="reference")
        + gated_linear_attention(q, k, v, gb, reverse=True, impl="reference")
    ) / 2
    torch.testing.assert_close(bidirectional_gla(q, k, v, gf, gb), want, atol=2e-5, rtol=1e-5)


# ---- edge cases and errors --------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
def test_empty_sequence(impl: str) -> None:
    out = gated_linear_attention(*inputs(0), impl=impl)
    assert out.shape == (B, 0, H, V)


def test_float64_paths_agree_tightly() -> None:
    x = inputs(45, "strong", dtype=torch.float64)  # values not representable in fp32
    want = gated_linear_attention(*x, impl="recurrent")
    for impl in ("reference", "chunk", "native"):
        got = gated_linear_attention(*x, impl=impl, chunk_size=10)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "change,kw,exc,match",
    [
        (lambda q, k, v, g: (q, k, v, g[..., :4]), {}, ValueError, "gk must have the shape of k"),
        (lambda q, k, v, g: (q, k, v, g.double()), {}, TypeError, "gk must share k's dtype"),
        (lambda q, k, v, g: (q, k, v, g.tolist()), {}, TypeError, "gk must be a torch.Tensor"),
        (
            lambda q, k, v, g: (q, k[:, :5], v[:, :5], g[:, :5]),
            {},
            ValueError,
            "k/v length S=5 must equal the q length T=9",
        ),
        (
            lambda q, k, v, g: (q, k[:, :, :1], v[:, :, :1], g[:, :, :1]),
            {},
            ValueError,
            "k/v heads 1 must equal q heads 2",
        ),
        (lambda q, k, v, g: (q[0], k, v, g), {}, ValueError, r"q must have 4 dims"),
        (lambda *t: t, {"impl": "fast"}, ValueError, "impl must be one of .*got 'fast'"),
        (lambda *t: t, {"chunk_size": 0}, ValueError, "chunk_size must be a positive int, got 0"),
        (lambda *t: t, {"reverse": 1}, TypeError, "reverse must be a bool, got 1"),
        (lambda *t: t, {"scale": float("nan")}, ValueError, "scale must be a finite float"),
    ],
)
def test_bad_input_is_named(change, kw, exc, match) -> None:  # noqa: ANN001
    x = change(*inputs(9))
    with pytest.raises(exc, match=match):
        gated_linear_attention(*x, **kw)


def test_bidirectional_checks_backward_gate() -> None:
    q, k, v, g = inputs(9)
    with pytest.raises(ValueError, match="gk_bwd must have the shape of k"):
        bidirectional_gla(q, k, v, g, g[:, :3])


def test_chunks_with_mild_and_strong_decay_mixed() -> None:
    """The one-GEMM intra-chunk form covers chunks whose decay span is at most SPAN_LIMIT; the
    others are recomputed with the sub-chunk form. A sequence with mild gates in its first half
    and strong ones in its second takes both, per chunk, and must equal the step loop."""
    from attnzoo.ops.gla_chunk import SPAN_LIMIT

    q, k, v, gk = inputs(256, "normal", b=1)
    gk = torch.cat([gk[:, :128] / 16, -5.0 * torch.rand_like(gk[:, 128:])], dim=1)
    spans = -gk.view(1, 4, 64, H, K).sum(2).amin(-1)  # [1, chunks, H]
    assert bool((spans <= SPAN_LIMIT).any()) and bool((spans > SPAN_LIMIT).any())
    x, g = [q, k, v, gk], torch.randn(1, 256, H, V)
    want = fwd_bwd(op("recurrent"), x, g)
    got = fwd_bwd(op("chunk", chunk_size=64), x, g)
    assert_all_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["auto", "reference", "chunk", "recurrent"])
def test_float16_runs_in_float32(impl: str) -> None:
    """float16 inputs are computed in float32: gates of -0.3 per step sum to -19 over a chunk of
    64, and the chunk path's ``e^{-b}`` (1.8e8) passed float16's 65504, which gave NaN."""
    q, k, v, _ = inputs(128)
    gk = torch.full_like(k, -0.3)
    half = [t.half().requires_grad_(True) for t in (q, k, v, gk)]
    got = gated_linear_attention(*half, impl=impl)
    want = gated_linear_attention(*(t.float() for t in half), impl="reference")
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=2e-3, rtol=2e-3)
    got.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in half)
