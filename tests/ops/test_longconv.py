"""The long convolution op (Hyena's): the identity the mechanism is verified by, ``fft`` equal
to the direct convolution in float64 at odd sizes on 1, 2 and 3 axes, causal (one-orthant) and
centred, forward and backward; the reference against the convolution sum written as loops and
against the materialised matrix; the official codes' two FFT normalisations; low precision;
FLOPs; errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnzoo.ops.longconv import FFT_CONSTANT, long_conv, long_conv_flops, long_conv_matrix
from tests.helpers import assert_all_close, fwd_bwd

F64 = torch.float64
SIZES = [(1,), (7,), (33,), (1, 4), (5, 7), (6, 3), (3, 4, 5), (1, 3, 2)]


def filter_shape(sizes: tuple[int, ...], causal: bool) -> tuple[int, ...]:
    return sizes if causal else tuple(2 * n - 1 for n in sizes)


def by_loops(u: torch.Tensor, h: torch.Tensor, causal: bool) -> torch.Tensor:
    """``y[p] = sum_q h[p - q (+ n - 1)] u[q]`` over every pair of positions, as written."""
    sizes = tuple(u.shape[1:-1])
    y = torch.zeros_like(u)
    for p in itertools.product(*(range(n) for n in sizes)):
        for q in itertools.product(*(range(n) for n in sizes)):
            lag = [a - b if causal else a - b + n - 1 for a, b, n in zip(p, q, sizes, strict=True)]
            if min(lag) < 0:
                continue
            y[(slice(None), *p)] += h[tuple(lag)] * u[(slice(None), *q)]
    return y


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_fft_equals_the_direct_convolution(sizes: tuple, causal: bool, skip: bool) -> None:
    """The identity (no pip peer exists): FFT path = direct convolution, fp64, fwd + bwd."""
    C = 3
    u = torch.randn(2, *sizes, C, dtype=F64)
    h = torch.randn(*filter_shape(sizes, causal), C, dtype=F64)
    d = torch.randn(C, dtype=F64)
    inputs = [u, h, d] if skip else [u, h]

    def run(impl: str) -> list[torch.Tensor]:
        torch.manual_seed(1)
        if skip:
            return fwd_bwd(
                lambda u, h, d: long_conv(u, h, causal=causal, skip=d, impl=impl), inputs
            )
        return fwd_bwd(lambda u, h: long_conv(u, h, causal=causal, impl=impl), inputs)

    assert_all_close(run("fft"), run("reference"), atol=1e-11, rtol=1e-11)
    assert_all_close(run("auto"), run("fft"), atol=0, rtol=0)


def test_fft_equals_the_direct_convolution_on_a_long_signal() -> None:
    u = torch.randn(1, 1001, 2, dtype=F64)
    h = torch.randn(1001, 2, dtype=F64) * torch.exp(-torch.arange(1001.0, dtype=F64) / 300)[:, None]
    for causal, k in ((True, h), (False, torch.cat([h.flip(0)[:-1], h]))):
        torch.testing.assert_close(
            long_conv(u, k, causal=causal, impl="fft"),
            long_conv(u, k, causal=causal, impl="reference"),
            atol=1e-10,
            rtol=1e-10,
        )


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sizes", [(6,), (3, 4), (2, 3, 2)], ids=lambda s: "x".join(map(str, s)))
def test_reference_is_the_convolution_sum(sizes: tuple, causal: bool) -> None:
    u = torch.randn(2, *sizes, 2, dtype=F64)
    h = torch.randn(*filter_shape(sizes, causal), 2, dtype=F64)
    want = by_loops(u, h, causal)
    torch.testing.assert_close(long_conv(u, h, causal=causal, impl="reference"), want)
    n = math.prod(sizes)
    m = long_conv_matrix(h, sizes, causal=causal)  # [C, N, N]
    got = torch.einsum("cpq,bqc->bpc", m, u.reshape(2, n, 2)).reshape(u.shape)
    torch.testing.assert_close(got, want)


def test_causal_support_is_one_orthant() -> None:
    """``causal=True``: output ``p`` sees input ``q`` only where ``q <= p`` on every axis (lower
    triangular on tokens); ``causal=False``: every pair."""
    h = torch.rand(4, 5, 1, dtype=F64) + 0.5
    m = long_conv_matrix(h, (4, 5), causal=True)[0]  # [20, 20]
    p = torch.cartesian_prod(torch.arange(4), torch.arange(5))  # row-major positions
    below = (p[None, :, :] <= p[:, None, :]).all(-1)  # [p, q]: q <= p on both axes
    assert ((m != 0) == below).all()
    assert (
        long_conv_matrix(torch.rand(7, 2, dtype=F64) + 0.5, (7,), causal=True).triu(1) == 0
    ).all()
    two_sided = long_conv_matrix(torch.rand(7, 9, 1, dtype=F64) + 0.5, (4, 5), causal=False)
    assert (two_sided != 0).all()


def test_hand_made_filters() -> None:
    """A unit tap at lag 0 is the identity; at lag 1 a shift with a zero entering; the centred
    form's index ``n - 1`` is lag 0."""
    u = torch.arange(1.0, 6.0, dtype=F64).view(1, 5, 1)
    for impl in ("reference", "fft"):
        delta = torch.zeros(5, 1, dtype=F64)
        delta[0] = 1
        torch.testing.assert_close(long_conv(u, delta, causal=True, impl=impl), u)
        shift = torch.zeros(5, 1, dtype=F64)
        shift[1] = 1
        got = long_conv(u, shift, causal=True, impl=impl).flatten()
        torch.testing.assert_close(got, torch.tensor([0, 1, 2, 3, 4], dtype=F64))
        centred = torch.zeros(9, 1, dtype=F64)
        centred[3] = 1  # lag -1: y[p] = u[p + 1]
        got = long_conv(u, centred, causal=False, impl=impl).flatten()
        torch.testing.assert_close(got, torch.tensor([2, 3, 4, 5, 0], dtype=F64))
        skip = long_conv(u, delta * 0, causal=True, skip=torch.tensor([2.0], dtype=F64), impl=impl)
        torch.testing.assert_close(skip, 2 * u)


def test_the_official_normalisations() -> None:
    """What the module docstring says of the official codes, on their formulas: safari's 1-D
    ``irfft(rfft(u) * rfft(k) / 2L, norm="forward")`` is the true convolution; Hyena N-D's
    ``irfft2(rfft2(u) * rfft2(k) / 2L)`` is the true convolution divided by 2L (ours: exact)."""
    L = 6
    u, k = torch.randn(2, 3, L, dtype=F64), torch.randn(3, L, dtype=F64)
    n = 2 * L
    safari = torch.fft.irfft(
        torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n) / n, n=n, norm="forward"
    )[..., :L]
    ours = long_conv(u.transpose(1, 2), k.T, causal=True).transpose(1, 2)
    torch.testing.assert_close(safari, ours)
    u2, k2 = torch.randn(2, 3, L, L, dtype=F64), torch.randn(3, L, L, dtype=F64)
    s = (n, n)
    hyena_nd = torch.fft.irfft2(torch.fft.rfft2(u2, s=s) * torch.fft.rfft2(k2, s=s) / n, s=s)
    ours2 = long_conv(u2.movedim(1, -1), k2.movedim(0, -1), causal=True).movedim(-1, 1)
    torch.testing.assert_close(hyena_nd[..., :L, :L] * n, ours2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["reference", "fft"])
def test_low_precision_runs_in_float32(dtype: torch.dtype, impl: str) -> None:
    u, h = torch.randn(2, 5, 6, 4).to(dtype), torch.randn(5, 6, 4).to(dtype)
    y = long_conv(u, h, causal=True, skip=torch.ones(4, dtype=dtype), impl=impl)
    assert y.dtype == dtype
    want = long_conv(u.float(), h.float(), causal=True, skip=torch.ones(4), impl="reference")
    # float32 inside: only the final rounding to the dtype differs (one unit at most)
    torch.testing.assert_close(y, want.to(dtype))


def test_empty_signal() -> None:
    u = torch.randn(0, 4, 2)
    assert long_conv(u, torch.randn(4, 2), causal=True).shape == (0, 4, 2)
    u = torch.randn(2, 0, 3, 2, requires_grad=True)
    y = long_conv(u, torch.randn(0, 3, 2), causal=True)
    assert y.shape == u.shape
    y.sum().backward()


def test_flops_grow_as_n_log_n() -> None:
    P = 2 * 1024
    fft = FFT_CONSTANT * P * math.log2(P)
    assert long_conv_flops(1, 1, 1024, 1) == int(3 * fft + 6 * (P // 2) + 2 * 1024)
    assert long_conv_flops(3, 5, 1024, 1) == int(15 * (2 * fft + 6 * (P // 2) + 2048) + 5 * fft)
    # a 32 x 32 grid has the points of 1024 tokens, twice padded on two axes
    assert long_conv_flops(1, 1, 1024, 2) > 2 * long_conv_flops(1, 1, 1024, 1)
    ratio = long_conv_flops(2, 8, 2**16, 1) / long_conv_flops(2, 8, 2**15, 1)
    # more than linear, at most P log P (2^17 vs 2^16 points: 2 * 17 / 16)
    assert 2.1 < ratio <= 2 * 17 / 16
    assert long_conv_flops(2, 8, 0, 1) == 0


U, H = torch.randn(2, 5, 3), torch.randn(5, 3)


@pytest.mark.parametrize(
    "u,h,kwargs,exc,match",
    [
        (U, torch.randn(4, 3), {}, ValueError, r"h must be \[\*K, C\] = \(5, 3\)"),
        (U, H, {"causal": False}, ValueError,
         r"= \(9, 3\) \(2 n - 1 per side n \(centred\), causal=False\)"),
        (U, torch.randn(5, 2), {}, ValueError, r"h must be \[\*K, C\]"),
        (U[0], H, {}, ValueError, r"u must be \[B, \*S, C\] with 1 to 3"),
        (torch.randn(1, 2, 2, 2, 2, 3), torch.randn(2, 2, 2, 2, 3), {}, ValueError, "1 to 3 axes"),
        (U, H, {"skip": torch.randn(2)}, ValueError, r"skip must be \[C\] = \(3,\), got \(2,\)"),
        (U, H.double(), {}, TypeError, "must share a dtype"),
        (U, H, {"impl": "direct"}, ValueError,
         "impl must be one of 'auto', 'reference', 'fft', got 'direct'"),
        (U, H, {"causal": 1}, TypeError, "causal must be a bool"),
        (U.long(), H, {}, TypeError, "u must be a floating"),
        ([1.0], H, {}, TypeError, "u must be a torch.Tensor, got list"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(u, h, kwargs, exc, match) -> None:  # noqa: ANN001
    kwargs = {"causal": True, **kwargs}
    with pytest.raises(exc, match=match):
        long_conv(u, h, **kwargs)
