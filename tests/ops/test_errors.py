"""Bad input to the ops gets a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops import Mask, sigmoid_attention, softmax_attention

OPS = [softmax_attention, sigmoid_attention]


def good() -> list[torch.Tensor]:
    return [torch.randn(2, 5, 4, 8), torch.randn(2, 6, 2, 8), torch.randn(2, 6, 2, 8)]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "change,exc,match",
    [
        (
            lambda q, k, v: (q[0], k, v),
            ValueError,
            r"q must have 4 dims \[B, T, H, K\], got shape \(5, 4, 8\)",
        ),
        (
            lambda q, k, v: (q, k[..., :4], v),
            ValueError,
            "q and k head dims differ: q has K=8, k has 4",
        ),
        (
            lambda q, k, v: (q[:, :, :3], k, v),
            ValueError,
            "H=3 must be a multiple of k/v heads Hkv=2",
        ),
        (
            lambda q, k, v: (q, k, v[:, :5]),
            ValueError,
            "k and v must have the same length S, got 6 and 5",
        ),
        (lambda q, k, v: (q, k, v[:1]), ValueError, "batch sizes differ"),
        (
            lambda q, k, v: (q.long(), k, v),
            TypeError,
            "q must be a floating-point tensor, got dtype torch.int64",
        ),
        (lambda q, k, v: (q, k.double(), v), TypeError, "must share a dtype"),
        (lambda q, k, v: (q.tolist(), k, v), TypeError, "q must be a torch.Tensor, got list"),
    ],
)
def test_bad_tensors(op, change, exc, match) -> None:  # noqa: ANN001
    with pytest.raises(exc, match=match):
        op(*change(*good()))


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_bad_options(op) -> None:  # noqa: ANN001
    q, k, v = good()
    with pytest.raises(ValueError, match="impl must be one of .* got 'fast'"):
        op(q, k, v, impl="fast")
    with pytest.raises(ValueError, match="documents lengths \\(2, 2\\) sum to 4 but there are T=5"):
        op(q, k, v, mask=Mask.document([2, 2], kv_lengths=[3, 3]))
    with pytest.raises(ValueError, match="block_q must be a positive int, got 0"):
        op(q, k, v, impl="blocked", block_q=0)
    with pytest.raises(ValueError, match="scale must be a finite float"):
        op(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="mask must be"):
        op(q, k, v, mask=torch.ones(5, 6, dtype=torch.bool))
