"""axial_attention: ``sdpa`` vs ``reference`` (forward and backward) on 1-, 2- and 3-D grids at
odd sizes, along every axis, causal or not; the reference against softmax attention run line by
line (the identity: along one axis, axial attention *is* softmax attention on each line); the
weights; argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnzoo.ops.axial import axial_attention, axial_weights
from attnzoo.ops.softmax import softmax_attention
from tests.helpers import assert_all_close, fwd_bwd

GRIDS = [(1,), (7,), (13,), (5, 7), (1, 6), (3, 4, 5)]  # odd sizes, length-1 axes


def qkv(grid: tuple[int, ...], H: int = 3, K: int = 8, V: int = 5) -> list[torch.Tensor]:
    return [torch.randn(2, *grid, H, K), torch.randn(2, *grid, H, K), torch.randn(2, *grid, H, V)]


CASES = [(g, a, c) for g in GRIDS for a in range(len(g)) for c in (False, True)]


@pytest.mark.parametrize("grid,axis,causal", CASES, ids=str)
def test_sdpa_matches_reference(grid: tuple[int, ...], axis: int, causal: bool) -> None:
    inputs = qkv(grid)
    g = torch.randn(2, *grid, 3, 5)
    kw = {"axis": axis, "causal": causal}
    want = fwd_bwd(lambda q, k, v: axial_attention(q, k, v, impl="reference", **kw), inputs, g)
    for impl in ("sdpa", "auto"):
        got = fwd_bwd(lambda q, k, v, i=impl: axial_attention(q, k, v, impl=i, **kw), inputs, g)
        assert_all_close(got, want)


def by_lines(q, k, v, axis: int, causal: bool, scale: float | None = None) -> torch.Tensor:
    """Softmax attention (attnzoo's own op, reference path) called once per line: an explicit
    loop over every index of the other grid axes."""
    out = torch.zeros(*v.shape, dtype=v.dtype)
    grid = q.shape[1:-2]
    others = [range(n) if d != axis else [slice(None)] for d, n in enumerate(grid)]
    for b in range(q.shape[0]):
        for idx in itertools.product(*others):
            at = (slice(b, b + 1), *idx)  # one line: [1, L, H, K]
            out[at] = softmax_attention(q[at], k[at], v[at], mask="causal" if causal else None,
                                        scale=scale, impl="reference")  # fmt: skip
    return out


@pytest.mark.parametrize("grid,axis,causal", CASES, ids=str)
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_equals_softmax_attention_on_each_line(grid, axis, causal, impl) -> None:
    q, k, v = qkv(grid)
    got = axial_attention(q, k, v, axis=axis, causal=causal, impl=impl)
    torch.testing.assert_close(got, by_lines(q, k, v, axis, causal), atol=2e-6, rtol=1e-5)


def test_one_axis_grid_is_plain_softmax_attention() -> None:
    """A grid of one axis has one line: the op is softmax attention over the whole sequence,
    checked against torch's SDPA (nobody here wrote it)."""
    q, k, v = qkv((11,), V=8)
    for causal in (False, True):
        want = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal
        ).transpose(1, 2)
        for impl in ("reference", "sdpa"):
            got = axial_attention(q, k, v, axis=0, causal=causal, impl=impl)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_negative_axis_and_scale() -> None:
    q, k, v = qkv((4, 6))
    torch.testing.assert_close(
        axial_attention(q, k, v, axis=-1, scale=0.3), axial_attention(q, k, v, axis=1, scale=0.3)
    )
    torch.testing.assert_close(
        axial_attention(q, k, v, axis=-2, scale=0.3, impl="reference"),
        by_lines(q, k, v, 0, False, scale=0.3),
        atol=2e-6,
        rtol=1e-5,
    )


def test_weights() -> None:
    q, k, _ = qkv((4, 6))
    w = axial_weights(q, k, axis=0, causal=True)
    assert w.shape == (2, 6, 3, 4, 4)  # [B, w, H, L=h, L]
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6, 3, 4))
    assert (w.triu(1) == 0).all() and (w.diagonal(dim1=-2, dim2=-1) > 0).all()
    # the line at column 2: the same weights as the softmax op's on it
    from attnzoo.ops.softmax import softmax_weights

    line = softmax_weights(q[:, :, 2], k[:, :, 2], mask="causal")  # [B, H, h, h]
    torch.testing.assert_close(w[:, 2], line)


def test_empty_inputs() -> None:
    for grid in ((0, 5), (4, 0)):
        q, k, v = qkv(grid)
        for impl in ("reference", "sdpa"):
            assert axial_attention(q, k, v, axis=0, impl=impl).shape == v.shape


def test_errors() -> None:
    q, k, v = qkv((4, 6))
    with pytest.raises(ValueError, match=r"axis must be an int grid axis in \[-2, 2\).*got 2"):
        axial_attention(q, k, v, axis=2)
    with pytest.raises(ValueError, match="axis must be an int.*got True"):
        axial_attention(q, k, v, axis=True)
    with pytest.raises(ValueError, match="axis must be an int.*got 1.0"):
        axial_attention(q, k, v, axis=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl must be one of"):
        axial_attention(q, k, v, axis=0, impl="blocked")
    with pytest.raises(ValueError, match=r"k must have q's shape \(2, 4, 6, 3, 8\)"):
        axial_attention(q, k[:, :3], v, axis=0)
    with pytest.raises(ValueError, match="v must be q's shape but for the last dim"):
        axial_attention(q, k, v[:, :, :5], axis=0)
    with pytest.raises(ValueError, match="at least one grid axis"):
        axial_attention(q[:, 0, 0], k[:, 0, 0], v[:, 0, 0], axis=0)
    with pytest.raises(TypeError, match="share a dtype"):
        axial_attention(q, k.double(), v, axis=0)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        axial_attention(q.tolist(), k, v, axis=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        axial_attention(q.long(), k, v, axis=0)
    with pytest.raises(TypeError, match="causal must be a bool"):
        axial_attention(q, k, v, axis=0, causal=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale must be a finite float"):
        axial_attention(q, k, v, axis=0, scale=float("nan"))
