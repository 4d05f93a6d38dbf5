"""linear_attention: every impl vs reference (fwd + bwd), peers from fla-core's naive functions."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.linear import feature_map, linear_attention
from tests.helpers import assert_all_close, fwd_bwd

LENGTHS = [1, 7, 63, 100, 257]
CHUNK = 16  # divides none of LENGTHS except via the padded tail
B, H, K, V = 2, 3, 8, 5


def inputs(T: int, S: int | None = None, Hkv: int = H) -> list[torch.Tensor]:
    """Non-negative q, k (elu+1 features) so the normaliser stays well away from zero."""
    S = T if S is None else S
    q = feature_map(torch.randn(B, T, H, K), "elu+1")
    k = feature_map(torch.randn(B, S, Hkv, K), "elu+1")
    return [q, k, torch.randn(B, S, Hkv, V)]


def log_decay() -> torch.Tensor:
    return -torch.tensor([0.5, 0.05, 0.004])  # [H]: lambda from 0.61 to 0.996


MODES = [(False, False), (True, False), (True, True)]  # (causal, decay); no decay if non-causal


@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("causal,use_decay", MODES, ids=["full", "causal", "causal-decay"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
def test_impl_matches_reference(
    impl: str, T: int, causal: bool, use_decay: bool, normalize: bool
) -> None:
    xs = inputs(T) + ([log_decay()] if use_decay else [])
    kw = {"causal": causal, "normalize": normalize, "scale": 0.3}

    def run(impl_: str, **extra: int):
        def fn(q, k, v, decay=None):
            return linear_attention(q, k, v, decay=decay, impl=impl_, **kw, **extra)

        return fn

    g = torch.randn(B, T, H, V)
    want = fwd_bwd(run("reference"), xs, g)
    got = fwd_bwd(run(impl, chunk_size=CHUNK), xs, g)
    # raw sums over up to 257 tokens reach ~1e3: relative tolerance matters there
    assert_all_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("impl", ["chunk", "native", "recurrent"])
@pytest.mark.parametrize("normalize", [False, True])
def test_noncausal_cross_and_gqa(impl: str, normalize: bool) -> None:
    xs = inputs(11, S=6, Hkv=1)
    kw = {"causal": False, "normalize": normalize}
    g = torch.randn(B, 11, H, V)
    want = fwd_bwd(lambda q, k, v: linear_attention(q, k, v, impl="reference", **kw), xs, g)
    got = fwd_bwd(lambda q, k, v: linear_attention(q, k, v, impl=impl, **kw), xs, g)
    assert_all_close(got, want, atol=1e-4)
    # grouped-query: one kv head equals that head repeated
    q, k, v = xs
    rep = linear_attention(q, k.expand(-1, -1, H, -1), v.expand(-1, -1, H, -1), impl=impl, **kw)
    torch.testing.assert_close(linear_attention(q, k, v, impl=impl, **kw), rep)


def test_default_scale_is_one_and_auto_matches_reference() -> None:
    q, k, v = inputs(20)
    d = log_decay()
    ref = linear_attention(q, k, v, causal=True, decay=d, scale=1.0, impl="reference")
    torch.testing.assert_close(linear_attention(q, k, v, causal=True, decay=d), ref)


def test_reference_is_the_spec_formula() -> None:
    """The reference equals the formula written out with loops (independent of every path)."""
    q, k, v = inputs(6)
    d = log_decay()
    lam = d.exp()
    o = torch.zeros(B, 6, H, V)
    z = torch.zeros(B, 6, H, 1)
    for t in range(6):
        for s in range(t + 1):
            w = lam ** (t - s) * (q[:, t] * k[:, s]).sum(-1) * 0.5  # [B, H]
            o[:, t] += w[..., None] * v[:, s]
            z[:, t] += w[..., None]
    kw = {"causal": True, "decay": d, "scale": 0.5, "impl": "reference"}
    torch.testing.assert_close(linear_attention(q, k, v, **kw), o)
    torch.testing.assert_close(
        linear_attention(q, k, v, normalize=True, eps=1e-3, **kw), o / (z + 1e-3)
    )


def test_chunk_is_stable_for_strong_decay_and_long_chunks() -> None:
    """exp of only non-positive log-decays: lambda^-i would overflow with decay -50 at C=64."""
    q, k, v = inputs(130)
    d = torch.tensor([-50.0, -1.0, 0.0])
    got = linear_attention(q, k, v, causal=True, decay=d, impl="chunk", chunk_size=64)
    want = linear_attention(q, k, v, causal=True, decay=d, impl="reference")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_chunk_carries_state_across_super_blocks() -> None:
    """Chunks of 2 tokens, 16 per super-block: T = 70 spans three super-blocks (the last one
    partial), with strong, mild and no decay."""
    q, k, v = inputs(70)
    for d in (torch.tensor([-200.0, -0.3, 0.0]), None):
        got = linear_attention(q, k, v, causal=True, decay=d, impl="chunk", chunk_size=2)
        want = linear_attention(q, k, v, causal=True, decay=d, impl="recurrent")
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
def test_empty_sequence(impl: str) -> None:
    q, k, v = inputs(0)
    assert linear_attention(q, k, v, causal=True, impl=impl).shape == (B, 0, H, V)
    q, k, v = inputs(4, S=0)
    out = linear_attention(q, k, v, causal=False, normalize=True, impl=impl)
    assert torch.equal(out, torch.zeros(B, 4, H, V))


# ---- peers: fla-core's pure-PyTorch naive functions ------------------------------------------
# Conventions converted explicitly:
# - layout: fla uses [B, T, H, K] like us (no conversion);
# - scale: fla defaults to 1/sqrt(K), ours to 1 -> both get scale = K ** -0.5 explicitly;
# - normaliser: fla divides by (q*scale . cumsum(k) + 1e-10) -> we pass eps=1e-10;
# - decay: simple_gla takes g [B, T, H], the log-decay of every step; our per-head decay [H]
#   is the same log(lambda) broadcast over B and T (its gradient is the sum of g's over B, T).
SCALE = K**-0.5


def _fla() -> tuple:
    pytest.importorskip("fla")
    from fla.ops.linear_attn.naive import naive_chunk_linear_attn, naive_recurrent_linear_attn
    from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_recurrent_simple_gla

    return (
        naive_recurrent_linear_attn,
        naive_chunk_linear_attn,
        naive_recurrent_simple_gla,
        naive_chunk_simple_gla,
    )


@pytest.mark.parametrize("impl", ["reference", "chunk", "native", "recurrent"])
@pytest.mark.parametrize("normalize", [False, True])
def test_peer_fla_naive_recurrent_linear_attn(impl: str, normalize: bool) -> None:
    fla_rec, *_ = _fla()
    xs = inputs(100)
    g = torch.randn(B, 100, H, V)
    want = fwd_bwd(lambda q, k, v: fla_rec(q, k, v, scale=SCALE, normalize=normalize)[0], xs, g)
    got = fwd_bwd(
        lambda q, k, v: linear_attention(
            q, k, v, causal=True, scale=SCALE, normalize=normalize, eps=1e-10, impl=impl
        ),
        xs,
        g,
    )
    assert_all_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_peer_fla_naive_chunk_linear_attn(normalize: bool) -> None:
    _, fla_chunk, *_ = _fla()
    xs = inputs(128)  # fla's naive chunk form needs T divisible by its chunk of 64
    g = torch.randn(B, 128, H, V)
    want = fwd_bwd(lambda q, k, v: fla_chunk(q, k, v, scale=SCALE, normalize=normalize), xs, g)
    got = fwd_bwd(
        lambda q, k, v: linear_attention(
            q, k, v, causal=True, scale=SCALE, normalize=normalize, eps=1e-10, chunk_size=CHUNK
        ),
        xs,
        g,
    )
    assert_all_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "chunk", "recurrent"])
@pytest.mark.parametrize("peer", ["recurrent", "chunk"])
def test_peer_fla_simple_gla_is_decayed_form(impl: str, peer: str) -> None:
    _, _, fla_rec, fla_chunk = _fla()
    T = 100
    q, k, v = (torch.randn_like(x) for x in inputs(T))  # signed inputs: no normaliser here
    xs = [q, k, v, log_decay()]
    g = torch.randn(B, T, H, V)

    def theirs(q, k, v, d):
        gt = d[None, None, :].expand(B, T, H)  # [B, T, H] log-decay per step
        if peer == "recurrent":
            return fla_rec(q, k, v, gt, scale=SCALE)[0]
        return fla_chunk(q, k, v, gt, scale=SCALE, chunk_size=32)[0]  # T=100: fla pads too

    def ours(q, k, v, d):
        return linear_attention(
            q, k, v, causal=True, decay=d, scale=SCALE, impl=impl, chunk_size=CHUNK
        )

    assert_all_close(fwd_bwd(ours, xs, g), fwd_bwd(theirs, xs, g), atol=1e-4, rtol=1e-5)


# ---- errors ---------------------------------------------------------------------------------
def test_errors_name_argument_value_and_expectation() -> None:
    q, k, v = inputs(5)
    with pytest.raises(ValueError, match="decay requires causal=True"):
        linear_attention(q, k, v, causal=False, decay=log_decay())
    with pytest.raises(ValueError, match=r"decay must have shape \[H\]=\[3\], got \(2,\)"):
        linear_attention(q, k, v, causal=True, decay=torch.zeros(2))
    with pytest.raises(ValueError, match="decay is log\\(lambda\\) and must be <= 0"):
        linear_attention(q, k, v, causal=True, decay=torch.tensor([0.1, -1.0, -1.0]))
    with pytest.raises(TypeError, match="decay must be a torch.Tensor"):
        linear_attention(q, k, v, causal=True, decay=[-1.0, -1.0, -1.0])
    q2, k2, v2 = inputs(5, S=3)
    with pytest.raises(ValueError, match="causal=True needs .* got T=5, S=3; causal cross"):
        linear_attention(q2, k2, v2, causal=True)
    with pytest.raises(ValueError, match="impl must be one of .*'recurrent', got 'flash'"):
        linear_attention(q, k, v, causal=True, impl="flash")
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        linear_attention(q, k, v, causal=True, chunk_size=0)
    with pytest.raises(TypeError, match="causal must be a bool, got None"):
        linear_attention(q, k, v, causal=None)
    with pytest.raises(ValueError, match="eps must be a finite float >= 0, got -1"):
        linear_attention(q, k, v, causal=True, eps=-1)
    with pytest.raises(ValueError, match="scale must be a finite float or None, got nan"):
        linear_attention(q, k, v, causal=True, scale=float("nan"))
    with pytest.raises(ValueError, match="k and v must have the same length S"):
        linear_attention(q, k[:, :4], v, causal=False)


def test_feature_maps() -> None:
    x = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(feature_map(x, "elu+1"), torch.tensor([torch.exp(x[0]), 1.0, 4.0]))
    torch.testing.assert_close(feature_map(x, "relu"), torch.tensor([0.0, 0.0, 3.0]))
    assert feature_map(x, "identity") is x
    with pytest.raises(ValueError, match="got 'elu' \\(did you mean .*'elu\\+1'"):
        feature_map(x, "elu")


@pytest.mark.compile
@pytest.mark.parametrize(
    "use_decay,normalize", [(False, False), (True, True)], ids=["raw", "decay-norm"]
)
def test_compiled_chunk_matches_reference_fwd_bwd(use_decay: bool, normalize: bool) -> None:
    """The inductor-compiled chunk path (T=100, chunks of 16: a partial last chunk)."""
    xs = inputs(100) + ([log_decay()] if use_decay else [])
    kw = {"causal": True, "normalize": normalize, "scale": 0.3}

    def run(impl: str):
        def fn(q, k, v, decay=None):
            return linear_attention(q, k, v, decay=decay, impl=impl, chunk_size=CHUNK, **kw)

        return fn

    g = torch.randn(B, 100, H, V)
    want = fwd_bwd(run("reference"), xs, g)
    assert_all_close(fwd_bwd(run("compiled"), xs, g), want, atol=1e-4, rtol=1e-5)


@pytest.mark.compile
def test_compiled_chunk_serves_many_lengths_without_hitting_the_recompile_limit() -> None:
    """More lengths than torch._dynamo's recompile_limit (8): partial chunks, one and several
    super-blocks. The compiled super-block compiles a few times (its chunk count is a dynamic
    shape), never logs "hit config.recompile_limit" (after which calls run uncompiled) and
    every length equals ``chunk``."""
    import logging

    import torch._dynamo

    torch._dynamo.reset()  # this test's compilations only
    counted = torch._dynamo.utils.counters["stats"]
    before = counted["unique_graphs"]
    lengths = [5, 17, 40, 63, 100, 129, 200, 255, 256, 300, 513]
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            for T in lengths:
                q, k, v = inputs(T)
                kw = {"causal": True, "decay": log_decay(), "chunk_size": CHUNK}
                got = linear_attention(q, k, v, impl="compiled", **kw)
                assert_all_close(got, linear_attention(q, k, v, impl="chunk", **kw),
                                 atol=1e-5, rtol=1e-5)  # fmt: skip
    finally:
        logger.removeHandler(handler)
    hits = [r.getMessage() for r in records if "recompile_limit" in r.getMessage()]
    assert not hits, hits
    graphs = counted["unique_graphs"] - before
    assert 1 <= graphs <= 4, f"{graphs} compilations for {len(lengths)} lengths"


@pytest.mark.parametrize("impl", ["auto", "reference", "chunk", "recurrent"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_float16_sums_run_in_float32(impl: str, causal: bool) -> None:
    """float16 inputs are computed in float32: the normaliser of 1500 elu+1 keys (~1e5) passes
    float16's 65504, which gave zeros; the float16 output stays within its rounding of the
    float32 result on the same rounded inputs, with finite gradients."""
    g = torch.Generator().manual_seed(0)
    q, k = (feature_map(torch.randn(1, 1500, 1, 16, generator=g) * 2, "elu+1") for _ in range(2))
    v = torch.randn(1, 1500, 1, 16, generator=g)
    half = [t.half().requires_grad_(True) for t in (q, k, v)]
    got = linear_attention(*half, causal=causal, normalize=True, impl=impl)
    want = linear_attention(*(t.float() for t in half), causal=causal, normalize=True)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=2e-3, rtol=2e-3)
    got.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in half)
