"""linear_attention impl='native' (the fused C++ kernel) vs the reference, forward and backward;
its dispatch from impl='auto', its input checks and what happens when it cannot be built."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from attnzoo import native
from attnzoo.ops import linear as linear_mod
from attnzoo.ops.linear import feature_map, linear_attention
from tests.helpers import assert_all_close, fwd_bwd, spy

B, H, K, V = 2, 3, 8, 5
DECAYS = {
    "none": None,
    "mild": torch.tensor([-0.5, -0.05, -0.004]),  # lambda from 0.61 to 0.996
    "strong": torch.tensor([-50.0, -1.0, 0.0]),  # lambda^63 flushes to exact zero in head 0
}


def inputs(T: int, dtype: torch.dtype = torch.float32, Hkv: int = H) -> list[torch.Tensor]:
    q = feature_map(torch.randn(B, T, H, K, dtype=dtype), "elu+1")
    k = feature_map(torch.randn(B, T, Hkv, K, dtype=dtype), "elu+1")
    return [q, k, torch.randn(B, T, Hkv, V, dtype=dtype)]


def run(impl: str, decay: torch.Tensor | None, **kw: object):
    """q, k, v -> output; the decay is a constant (the native path does not learn it)."""

    def fn(q, k, v):
        d = None if decay is None else decay.to(q.dtype)
        return linear_attention(q, k, v, causal=True, decay=d, impl=impl, **kw)

    return fn


@pytest.mark.parametrize("T", [1, 7, 16, 63, 100, 257])
@pytest.mark.parametrize("decay", list(DECAYS), ids=list(DECAYS))
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
def test_native_matches_reference_fwd_bwd(T: int, decay: str, normalize: bool) -> None:
    """Chunks of 16: exact multiples, partial last chunks and a single short chunk."""
    xs = inputs(T)
    kw = {"normalize": normalize, "scale": 0.3}
    g = torch.randn(B, T, H, V)
    want = fwd_bwd(run("reference", DECAYS[decay], **kw), xs, g)
    got = fwd_bwd(run("native", DECAYS[decay], chunk_size=16, **kw), xs, g)
    assert_all_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 500])
def test_native_float64_is_exact_for_any_chunk(chunk_size: int) -> None:
    """In float64 the chunked sums equal the quadratic form to ~1e-12 whatever the chunking."""
    xs = inputs(130, dtype=torch.float64)
    g = torch.randn(B, 130, H, V, dtype=torch.float64)
    d = DECAYS["mild"]
    want = fwd_bwd(run("reference", d, scale=0.5), xs, g)
    got = fwd_bwd(run("native", d, scale=0.5, chunk_size=chunk_size), xs, g)
    assert_all_close(got, want, atol=1e-11, rtol=1e-11)


def test_native_gradcheck_and_double_backward() -> None:
    """The backward is made of the (anti-causal) kernel itself, so second derivatives exist."""
    xs = [x[:1, :, :2].clone().requires_grad_(True) for x in inputs(11, dtype=torch.float64)]
    fn = run("native", DECAYS["mild"][:2], scale=0.7, chunk_size=4)
    assert torch.autograd.gradcheck(fn, xs)
    assert torch.autograd.gradgradcheck(fn, xs)


@pytest.mark.compile
def test_native_compiles_in_one_graph() -> None:
    """A registered custom op: torch.compile traces it without a graph break."""
    xs = inputs(50)
    fn = run("native", DECAYS["mild"], chunk_size=16)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(*xs), fn(*xs))


def test_native_reads_strided_and_grouped_inputs() -> None:
    """q as a transposed view, k/v with one kv head (expanded, head stride 0) and a v whose last
    dim is not unit-stride (copied first): the same numbers as contiguous inputs."""
    T = 90
    q = torch.randn(B, H, T, K).transpose(1, 2)  # [B, T, H, K], rows K apart
    k = torch.randn(B, T, 1, K)
    v = torch.randn(B, T, 1, 2 * V)[..., ::2]  # [B, T, 1, V], stride 2 in the last dim
    d = DECAYS["mild"]
    g = torch.randn(B, T, H, V)
    want = fwd_bwd(run("reference", d), [q, k, v], g)
    got = fwd_bwd(run("native", d), [q, k, v], g)
    assert_all_close(got, want, atol=1e-4, rtol=1e-5)


def test_native_long_sequence_with_strong_decay_stays_finite() -> None:
    """T = 16k, chunks of 64, decay down to -50 (weights flushed to zero) and up to 0 (no decay):
    the native output equals the portable chunk path and is finite."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16384, H, 16) * 0.5 for _ in range(3))
    d = DECAYS["strong"]
    got = linear_attention(q, k, v, causal=True, decay=d, impl="native")
    assert torch.isfinite(got).all()
    want = linear_attention(q, k, v, causal=True, decay=d, impl="chunk")
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-4)  # head 2 sums 16k raw terms


@pytest.mark.parametrize("peer", ["recurrent", "chunk"])
def test_peer_fla_simple_gla_with_a_constant_decay(peer: str) -> None:
    """fla's naive simple-GLA with g = the per-step log-decay broadcast over B and T, scale given
    explicitly (fla defaults to 1/sqrt(K), we to 1): output and q, k, v gradients."""
    pytest.importorskip("fla")
    from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_recurrent_simple_gla

    T, s = 100, K**-0.5
    xs = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)]
    d = DECAYS["mild"]
    gt = d[None, None, :].expand(B, T, H)

    def theirs(q, k, v):
        if peer == "recurrent":
            return naive_recurrent_simple_gla(q, k, v, gt, scale=s)[0]
        return naive_chunk_simple_gla(q, k, v, gt, scale=s, chunk_size=32)[0]

    g = torch.randn(B, T, H, V)
    got = fwd_bwd(run("native", d, scale=s), xs, g)
    assert_all_close(got, fwd_bwd(theirs, xs, g), atol=1e-4, rtol=1e-5)


def test_native_errors_name_the_value_and_the_way_out() -> None:
    q, k, v = inputs(5)
    with pytest.raises(
        TypeError, match="impl='native' takes float32 or float64, got torch.bfloat16"
    ):
        linear_attention(*(x.bfloat16() for x in (q, k, v)), causal=True, impl="native")
    learned = torch.tensor([-0.5, -0.1, -0.01], requires_grad=True)
    with pytest.raises(ValueError, match="decay as a constant, got a decay that requires grad"):
        linear_attention(q, k, v, causal=True, decay=learned, impl="native")
    meta = [x.to("meta") for x in (q, k, v)]
    with pytest.raises(ValueError, match="runs on the CPU, got tensors on meta"):
        linear_attention(*meta, causal=True, impl="native")


def test_auto_takes_native_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, linear_mod, "native_linear_causal")
    q, k, v = inputs(40)
    d = DECAYS["mild"]
    ref = linear_attention(q, k, v, causal=True, decay=d, impl="reference")
    torch.testing.assert_close(linear_attention(q, k, v, causal=True, decay=d), ref)
    assert len(calls) == 1
    # a learned decay: auto differentiates through the chunk path instead
    learned = d.clone().requires_grad_(True)
    out = linear_attention(q, k, v, causal=True, decay=learned)
    out.sum().backward()
    assert len(calls) == 1 and learned.grad is not None and learned.grad.abs().sum() > 0
    # bf16: chunk path too
    linear_attention(*(x.bfloat16() for x in (q, k, v)), causal=True)
    assert len(calls) == 1


def test_when_the_kernels_cannot_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """impl='native' raises with the reason; impl='auto' warns once with it and runs 'chunk'."""
    monkeypatch.setattr(native, "_STATE", {"error": "attnzoo's native CPU kernels could not be "
                                           "built: no compiler (test)"})  # fmt: skip
    q, k, v = inputs(20)
    with pytest.raises(native.NativeUnavailable, match="no compiler \\(test\\)"):
        linear_attention(q, k, v, causal=True, impl="native")
    with pytest.warns(RuntimeWarning, match="uses the portable 'chunk' path because .*no compiler"):
        got = linear_attention(q, k, v, causal=True)
    torch.testing.assert_close(got, linear_attention(q, k, v, causal=True, impl="chunk"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        linear_attention(q, k, v, causal=True)


def test_kernel_builds_here() -> None:
    """This machine has g++ and ninja: the build must succeed (a failure here is a real one)."""
    assert native.available(), native.unavailable_reason()


def test_a_first_build_is_announced_a_cached_one_is_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The first call that builds goes quiet for ~40 s: it says so on stderr first, naming the
    cache; with the build cached it says nothing. (torch's loader is replaced: no real build.)"""
    import torch.utils.cpp_extension as ext

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    built: list[str] = []
    monkeypatch.setattr(ext, "load", lambda name, *a, **kw: built.append(name) or name)
    name = native._build()
    err = capsys.readouterr().err
    assert built == [name] and "compiling the native CPU kernels" in err and str(tmp_path) in err
    (tmp_path / name / f"{name}.so").write_bytes(b"")  # what torch's loader leaves
    assert native._build() == name and capsys.readouterr().err == ""
