"""The chunked linear-family helpers: the chunk layout round trip."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.chunks import from_chunks, to_chunks


@pytest.mark.parametrize("T,C", [(1, 4), (12, 4), (13, 4), (5, 8)])
def test_chunks_round_trip_and_zero_tail(T: int, C: int) -> None:
    x = torch.randn(2, T, 3, 5)
    c = to_chunks(x, C)
    N = -(-T // C)
    assert c.shape == (6, N, C, 5) and c.is_contiguous()
    flat = c.view(2, 3, N * C, 5)
    assert torch.equal(flat[:, :, T:], torch.zeros_like(flat[:, :, T:]))
    assert torch.equal(from_chunks(c, 2, T), x)
