"""The chunked linear-family helpers: layout round trip and the grouped exclusive scan (vs a loop)."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.chunks import GROUP, exclusive_scan, from_chunks, to_chunks
from tests.helpers import assert_all_close, fwd_bwd


@pytest.mark.parametrize("T,C", [(1, 4), (12, 4), (13, 4), (5, 8)])
def test_chunks_round_trip_and_zero_tail(T: int, C: int) -> None:
    x = torch.randn(2, T, 3, 5)
    c = to_chunks(x, C)
    N = -(-T // C)
    assert c.shape == (6, N, C, 5) and c.is_contiguous()
    flat = c.view(2, 3, N * C, 5)
    assert torch.equal(flat[:, :, T:], torch.zeros_like(flat[:, :, T:]))
    assert torch.equal(from_chunks(c, 2, T), x)


def loop_scan(x: torch.Tensor, log_decay: torch.Tensor | None) -> torch.Tensor:
    """The definition: y_0 = 0, y_n = d * y_{n-1} + x_{n-1}."""
    R, N, F = x.shape
    d = torch.ones(R, 1, dtype=x.dtype) if log_decay is None else torch.exp(log_decay)[:, None]
    y, out = x[:, 0] * 0, []  # (x * 0 keeps the graph when N = 1)
    for n in range(N):
        out.append(y)
        y = d * y + x[:, n]
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("N", [1, 5, GROUP, GROUP + 1, 3 * GROUP + 7])
@pytest.mark.parametrize("decay", [False, True], ids=["plain", "decay"])
def test_exclusive_scan_matches_loop_fwd_bwd(N: int, decay: bool) -> None:
    x = torch.randn(3, N, 7, dtype=torch.float64)
    xs = [x] + ([-torch.tensor([0.0, 0.3, 4.0], dtype=torch.float64)] if decay else [])
    g = torch.randn_like(x)
    want = fwd_bwd(lambda *a: loop_scan(a[0], a[1] if decay else None), xs, g)
    got = fwd_bwd(lambda *a: exclusive_scan(a[0], a[1] if decay else None), xs, g)
    assert_all_close(got, want, atol=1e-10, rtol=1e-10)


def test_exclusive_scan_strong_decay_stays_finite() -> None:
    """log-decay -200 per step: exp(+200) would overflow; only exp(<= 0) is ever taken."""
    x = torch.randn(2, 40, 4)
    y = exclusive_scan(x, torch.tensor([-200.0, -0.5]))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0, 1:], x[0, :-1])  # one step back, the rest decayed to 0
