"""combiner_attention: full support, the exact-softmax identities (one segment; one-token
segments), the reference against a per-query loop of the paper's factorisation and against the
official code's einsums (transcribed), ``segments`` against ``reference`` forward and backward
at lengths the segment does not divide, causality, errors and FLOPs."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnzoo.ops.combiner import (
    combiner_attention,
    combiner_flops,
    combiner_weights,
    segment_length,
)
from attnzoo.ops.softmax import softmax_attention
from tests.helpers import assert_all_close, fwd_bwd

# (variant, pool, row_summary): every summary choice of both variants
OPTIONS = [("fixed", "max", "none"), ("fixed", "mean", "none"), ("axial", "max", "none"),
           ("axial", "max", "wsum")]  # fmt: skip


def qkv(T: int, B: int = 2, H: int = 2, K: int = 4, dtype: torch.dtype = torch.float64):
    return [torch.randn(B, T, H, K, dtype=dtype) for _ in range(3)]


def opts(option: tuple[str, str, str], causal: bool, segment: int | None) -> dict:
    variant, pool, row_summary = option
    return {"causal": causal, "variant": variant, "segment": segment, "pool": pool,
            "row_summary": row_summary}  # fmt: skip


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,segment", [(13, 3), (13, 4), (16, 4), (10, None)])
def test_full_support_and_rows_sum_to_one(option, causal: bool, T: int, segment) -> None:
    q, k, _ = qkv(T)
    p = combiner_weights(q, k, **opts(option, causal, segment))  # [B, H, T, T]
    allowed = torch.ones(T, T, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    assert bool((p[..., allowed] > 0).all()), "an allowed pair got no weight"
    assert bool((p[..., ~allowed] == 0).all()), "a future key got weight"
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1], dtype=p.dtype))


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("impl", ["reference", "segments"])
@pytest.mark.parametrize("segment", [1, 11, 20], ids=["s=1", "s=T", "s>T"])
def test_one_segment_and_unit_segments_are_softmax(option, causal, impl, segment) -> None:
    """``s >= T``: one segment, no span: plain softmax attention. ``s = 1``: each span is one
    token, so ``k̄_r = k_r`` and ``v̄_r = v_r`` (the in-span softmax has one term): the joint
    softmax is again plain softmax attention, over the direct token and the one-token spans."""
    inputs = qkv(11)
    g = torch.randn(2, 11, 2, 4, dtype=torch.float64)
    mask = "causal" if causal else "full"
    want = fwd_bwd(lambda q, k, v: softmax_attention(q, k, v, mask=mask, impl="reference"),
                   inputs, g)  # fmt: skip
    kw = opts(option, causal, segment)
    got = fwd_bwd(lambda q, k, v: combiner_attention(q, k, v, impl=impl, **kw), inputs, g)
    assert_all_close(got, want, atol=1e-12, rtol=1e-12)


def _loop(q, k, v, s: int, causal: bool, variant: str, pool: str, row_summary: str):
    """The factorisation query by query (q already scaled): the direct keys of the own segment
    and one (logit, value) per span, one softmax, the weighted sum."""
    T = q.shape[1]
    segs = [list(range(a, min(a + s, T))) for a in range(0, T, s)]
    out = torch.zeros_like(v)
    for i in range(T):
        own = i // s
        logits = [(q[:, i] * k[:, j]).sum(-1) for j in segs[own] if not causal or j <= i]
        values = [v[:, j] for j in segs[own] if not causal or j <= i]
        for r, toks in enumerate(segs):
            if (r >= own) if causal else (r == own):
                continue
            kt, vt = k[:, toks], v[:, toks]  # [B, n_r, H, K]
            if variant == "fixed":
                red = (lambda t: t.amax(1)) if pool == "max" else (lambda t: t.mean(1))
                qs, ks = red(q[:, toks]), red(kt)
            else:
                m = toks[min(i % s, len(toks) - 1)]  # the query's column in row r
                qs, ks = q[:, m], k[:, m]
            w = torch.softmax((qs[:, None] * kt).sum(-1), dim=1)  # [B, n_r, H] p(j|Ω_r)
            if variant == "axial" and row_summary == "wsum":
                ks = (w[..., None] * kt).sum(1)
            logits.append((q[:, i] * ks).sum(-1))
            values.append((w[..., None] * vt).sum(1))
        p = torch.softmax(torch.stack(logits), dim=0)  # [n_i, B, H]
        out[:, i] = (p[..., None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,segment", [(14, 4), (12, 3), (9, 2)])
def test_reference_matches_a_per_query_loop(option, causal: bool, T: int, segment: int) -> None:
    q, k, v = qkv(T)
    kw = opts(option, causal, segment)
    got = combiner_attention(q, k, v, impl="reference", scale=1.0, **kw)
    want = _loop(q, k, v, segment, **{n: kw[n] for n in ("causal", "variant", "pool",
                                                          "row_summary")})  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def _official_sqrt_fixed_full(q, k, v, s: int):
    """``sqrt_fixed_full`` of the official TF code, causal, ``identity-max``, transcribed to
    torch einsum by einsum (q already scaled, as ``get_qkv`` does; -1e9 additive masks)."""
    B, T, H, K = q.shape
    n = T // s
    cq, ck, cv = (t.reshape(B, n, s, H, K) for t in (q, k, v))
    merged_query = cq.amax(2, keepdim=True)
    probs = torch.einsum("busnk,butnk->bunst", merged_query, ck).softmax(-1)
    span_val = torch.einsum("bunst,butnk->busnk", probs, cv).squeeze(2)
    span_key = ck.amax(2)
    big = -1e9
    local_logits = torch.einsum("bsqhd,bskhd->bsqhk", cq, ck)
    local_logits = local_logits + big * torch.ones(s, s).triu(1)[:, None, :]
    prev_mask = (big * torch.ones(n, n).triu()).repeat_interleave(s, 0)  # [T, n]
    prev_logits = torch.einsum("bqhd,bkhd->bqhk", q, span_key) + prev_mask[:, None, :]
    att = torch.cat([local_logits.reshape(B, T, H, s), prev_logits], -1).softmax(-1)
    local_att = att[..., :s].reshape(B, n, s, H, s)
    local_merged = torch.einsum("bsqhk,bskhd->bsqhd", local_att, cv)
    prev_merged = torch.einsum("bqhk,bkhd->bqhd", att[..., s:], span_val)
    return prev_merged + local_merged.reshape(B, T, H, K)


def _official_axial_rowmajor(q, k, v, s: int, row_summary: str):
    """``axial_rowmajor`` of the official TF code, causal, ``row_summary`` 'none' or 'wsum'."""
    B, T, H, K = q.shape
    n = T // s
    cq, ck, cv = (t.reshape(B, n, s, H, K) for t in (q, k, v))
    local_logits = torch.einsum("bsqhd,bskhd->bsqhk", cq, ck)
    row_probs = local_logits.softmax(-1)  # before the causal mask: the whole row
    row_attn_out = torch.einsum("bsqhk,bskhd->bsqhd", row_probs, cv)
    key_row = ck if row_summary == "none" else torch.einsum("bsqhk,bskhd->bsqhd", row_probs, ck)
    local_logits = local_logits + -1e9 * torch.ones(s, s).triu(1)[:, None, :]
    global_logits = torch.einsum("bqlhd,bklhd->bqlhk", cq, key_row)
    global_logits = global_logits + (-1e9 * torch.ones(n, n).triu())[:, None, None, :]
    att = torch.cat([local_logits, global_logits], -1).softmax(-1)
    local_merged = torch.einsum("bsqhk,bskhd->bsqhd", att[..., :s], cv)
    global_merged = torch.einsum("bqlhv,bvlhd->bqlhd", att[..., s:], row_attn_out)
    return (local_merged + global_merged).reshape(B, T, H, K)


@pytest.mark.parametrize("variant,row_summary", [("fixed", "none"), ("axial", "none"),
                                                 ("axial", "wsum")])  # fmt: skip
def test_causal_matches_the_official_einsums(variant: str, row_summary: str) -> None:
    """Where the official code is defined (causal, ``s | T``) ours is its math."""
    q, k, v = qkv(20)
    sc = 4**-0.5
    for impl in ("reference", "segments"):
        got = combiner_attention(q, k, v, causal=True, variant=variant, segment=5,
                                 row_summary=row_summary, impl=impl)  # fmt: skip
        if variant == "fixed":
            want = _official_sqrt_fixed_full(q * sc, k, v, 5)
        else:
            want = _official_axial_rowmajor(q * sc, k, v, 5, row_summary)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


SIZES = [(1, None), (2, None), (10, None), (23, 5), (23, 4), (37, 6), (9, 8)]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,segment", SIZES)
def test_segments_matches_reference(option, causal: bool, T: int, segment) -> None:
    inputs = qkv(T, H=4, dtype=torch.float32)
    inputs[1:] = [t[:, :, :2] for t in inputs[1:]]  # grouped-query: 2 kv heads for 4 heads
    g = torch.randn(2, T, 4, 4)
    kw = opts(option, causal, segment)
    want = fwd_bwd(lambda q, k, v: combiner_attention(q, k, v, impl="reference", **kw), inputs, g)
    got = fwd_bwd(lambda q, k, v: combiner_attention(q, k, v, impl="segments", **kw), inputs, g)
    assert_all_close(got, want)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("impl", ["reference", "segments"])
def test_causal_outputs_ignore_the_future(option, impl: str) -> None:
    q, k, v = qkv(17)
    kw = opts(option, True, 4)
    y = combiner_attention(q, k, v, impl=impl, **kw)
    for t in (3, 8, 13):  # the last token of a segment, its first, one inside
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, t:] += torch.randn_like(x[:, t:])
        y2 = combiner_attention(q2, k2, v2, impl=impl, **kw)
        torch.testing.assert_close(y2[:, :t], y[:, :t], atol=0, rtol=0)
        assert not torch.allclose(y2[:, t:], y[:, t:])


def test_default_segment_is_ceil_sqrt_of_the_length() -> None:
    assert [segment_length(T, None) for T in (0, 1, 2, 4, 5, 16, 17, 77)] == [
        1, 1, 2, 2, 3, 4, 5, 9]  # fmt: skip
    q, k, v = qkv(17)
    for variant, impl in itertools.product(("fixed", "axial"), ("reference", "segments")):
        a = combiner_attention(q, k, v, causal=False, variant=variant, impl=impl)
        b = combiner_attention(q, k, v, causal=False, variant=variant, segment=5, impl=impl)
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_errors() -> None:
    q, k, v = qkv(6)
    with pytest.raises(ValueError, match="impl must be one of"):
        combiner_attention(q, k, v, causal=True, impl="blocked")
    with pytest.raises(ValueError, match="variant must be one of .* got 'logsparse'"):
        combiner_attention(q, k, v, causal=True, variant="logsparse")
    with pytest.raises(ValueError, match="pool must be one of .* got 'sum'"):
        combiner_attention(q, k, v, causal=True, pool="sum")
    with pytest.raises(ValueError, match="row_summary must be one of .* got 'proj'"):
        combiner_attention(q, k, v, causal=True, variant="axial", row_summary="proj")
    for bad in (0, -2, True, 2.0):
        with pytest.raises(ValueError, match=f"segment must be an int >= 1 or None, got {bad!r}"):
            combiner_attention(q, k, v, causal=True, segment=bad)
    with pytest.raises(ValueError, match="self-attention only: k has S=4 tokens, q has T=6"):
        combiner_attention(q, k[:, :4], v[:, :4], causal=False)
    with pytest.raises(TypeError, match="causal must be a bool, got 1"):
        combiner_attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="scale must be a finite float"):
        combiner_weights(q, k, causal=True, scale=float("nan"))
    assert combiner_attention(q[:, :0], k[:, :0], v[:, :0], causal=True).shape == (2, 0, 2, 4)


def test_flops() -> None:
    # T=10, s=4: n=3 segments on 12 padded tokens; K=V=8
    Tp, s, n = 12, 4, 3
    assert combiner_flops(1, 1, 8, 8, 10, 4, "fixed", "none") == 2 * (
        Tp * s * 16 + Tp * n * 16 + Tp * 16)  # fmt: skip
    assert combiner_flops(1, 1, 8, 8, 10, 4, "axial", "none") == 2 * (
        Tp * s * 16 + Tp * n * 16 + Tp * s * 8)  # fmt: skip
    assert combiner_flops(1, 1, 8, 8, 10, 4, "axial", "wsum") == 2 * (
        Tp * s * 16 + Tp * n * 16 + Tp * s * 16)  # fmt: skip
    assert combiner_flops(3, 2, 8, 8, 10, 4, "fixed", "none") == 6 * combiner_flops(
        1, 1, 8, 8, 10, 4, "fixed", "none")  # fmt: skip
    # O(T·√T) at the default segment: 4x the tokens, 8x the work (plus the linear v̄ term)
    for variant in ("fixed", "axial"):
        f = [combiner_flops(1, 1, 8, 8, T, None, variant, "none") for T in (1024, 4096)]
        assert 7.9 < f[1] / f[0] <= 8.0
    assert combiner_flops(1, 1, 8, 8, 0, None, "fixed", "none") == 0
