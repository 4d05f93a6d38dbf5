"""The N-D window op: partition/merge round trips, the padding policy, and ``sdpa`` against the
dense ``reference`` (forward and backward) for 1-D, 2-D and 3-D grids with halos, masks, dilated
windows and biases; plus a by-hand window loop for the plain 2-D case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops import window as window_op
from attnzoo.ops.window import (
    crop_grid,
    key_windows,
    merge,
    pad_grid,
    partition,
    window_attention,
    window_weights,
)
from tests.helpers import assert_all_close, fwd_bwd


@pytest.mark.parametrize("dilated", [False, True])
@pytest.mark.parametrize("grid,w", [((12,), (4,)), ((6, 9), (2, 3)), ((4, 6, 2), (2, 3, 1))])
def test_partition_merge_round_trip(grid: tuple, w: tuple, dilated: bool) -> None:
    x = torch.randn(2, *grid, 5)
    t = partition(x, w, dilated=dilated)
    n_windows = 1
    for g, k in zip(grid, w, strict=True):
        n_windows *= g // k
    assert t.shape == (2 * n_windows, torch.tensor(w).prod().item(), 5)
    torch.testing.assert_close(merge(t, grid, w, dilated=dilated), x, rtol=0, atol=0)


def test_partition_orders_windows_and_tokens_row_major() -> None:
    x = torch.arange(4 * 6).reshape(1, 4, 6, 1)
    t = partition(x, (2, 3))[..., 0]
    assert t[0].tolist() == [0, 1, 2, 6, 7, 8]  # window (0, 0), row-major inside
    assert t[1].tolist() == [3, 4, 5, 9, 10, 11]  # window (0, 1) next
    d = partition(x, (2, 3), dilated=True)[..., 0]  # window j: positions j + a * count
    assert d[0].tolist() == [0, 2, 4, 12, 14, 16]
    assert d[3].tolist() == [7, 9, 11, 19, 21, 23]


def test_padding_policy_zero_pads_the_end_and_crops() -> None:
    x = torch.randn(2, 5, 7, 3)
    p = pad_grid(x, (4, 3))
    assert p.shape == (2, 8, 9, 3)
    torch.testing.assert_close(p[:, :5, :7], x)
    assert (p[:, 5:] == 0).all() and (p[:, :, 7:] == 0).all()
    torch.testing.assert_close(crop_grid(p, (5, 7)), x)
    assert pad_grid(x, (5, 7)) is x


def test_key_windows_extend_by_the_halo() -> None:
    x = torch.arange(1, 17).float().reshape(1, 4, 4, 1)
    t = key_windows(x, (2, 2), 1)[..., 0]  # 4 windows of 4x4 keys over the zero-padded grid
    assert t.shape == (4, 16)
    assert t[0].reshape(4, 4).tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]


CASES = [  # grid, window, halo, sizes, dilated
    ((12,), (4,), 0, None, False),
    ((12,), (4,), 0, (10,), False),  # YOLOv12's ragged last strip
    ((8, 12), (4, 4), 0, None, False),
    ((8, 12), (4, 4), 0, (7, 10), False),
    ((8, 8), (4, 4), 2, None, False),  # HaloNet
    ((8, 12), (4, 4), 1, (7, 9), False),
    ((6, 9), (2, 3), 0, None, True),  # grid windows
    ((4, 6, 4), (2, 3, 2), 0, (3, 5, 4), False),  # 3-D
    ((4, 4, 2), (2, 2, 1), 1, None, False),
]


def _ids(case: tuple) -> str:
    grid, w, halo, sizes, dilated = case
    return f"{grid}w{w}h{halo}{'s' + str(sizes) if sizes else ''}{'d' if dilated else ''}"


@pytest.mark.parametrize("bias_kind", ["none", "tensor", "query"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_sdpa_matches_reference_forward_backward(case: tuple, bias_kind: str, monkeypatch) -> None:
    grid, w, halo, sizes, dilated = case
    monkeypatch.setattr(window_op, "CHUNK_ELEMENTS", 64)  # several chunks of windows
    B, H, K = 2, 2, 4
    n = torch.tensor(w).prod().item()
    nk = torch.tensor([k + 2 * halo for k in w]).prod().item()
    q, k, v = (torch.randn(B, *grid, H, K, dtype=torch.float64) for _ in range(3))
    table = torch.randn(1, H, n, nk, dtype=torch.float64)
    e = torch.randn(n, nk, K, dtype=torch.float64)

    def run(impl: str):
        def fn(q, k, v, table, e):
            if bias_kind == "tensor":
                bias = table
            elif bias_kind == "query":
                bias = lambda qw: torch.einsum("ghnk,nmk->ghnm", qw, e)  # noqa: E731
            else:
                bias = None
            return window_attention(q, k, v, w, halo=halo, sizes=sizes, bias=bias,
                                    dilated=dilated, impl=impl)  # fmt: skip

        torch.manual_seed(1)  # the same output gradient for both paths
        return fwd_bwd(fn, [q, k, v, table, e])

    assert_all_close(run("sdpa"), run("reference"), atol=1e-10, rtol=1e-10)


def test_reference_is_a_window_loop_by_hand() -> None:
    """2-D windows with a padded, masked border, written as a loop over windows and tokens."""
    q, k, v = (torch.randn(1, 4, 6, 2, 3, dtype=torch.float64) for _ in range(3))
    sizes = (3, 5)
    got = window_attention(q, k, v, (2, 3), sizes=sizes, impl="reference")
    want = torch.zeros_like(v)
    for wy in range(2):
        for wx in range(2):
            cells = [(wy * 2 + a, wx * 3 + b) for a in range(2) for b in range(3)]
            keys = [(y, x) for y, x in cells if y < sizes[0] and x < sizes[1]]
            kk = torch.stack([k[0, y, x] for y, x in keys])  # [S, H, K]
            vv = torch.stack([v[0, y, x] for y, x in keys])
            for y, x in cells:
                p = torch.softmax(torch.einsum("hk,shk->hs", q[0, y, x], kk) * 3**-0.5, -1)
                want[0, y, x] = torch.einsum("hs,shk->hk", p, vv)
    torch.testing.assert_close(got, want)


def test_one_window_is_full_attention() -> None:
    q, k, v = (torch.randn(2, 4, 6, 2, 8) for _ in range(3))
    got = window_attention(q, k, v, (4, 6))
    qt, kt, vt = (t.reshape(2, 24, 2, 8).transpose(1, 2) for t in (q, k, v))
    want = F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2).reshape(2, 4, 6, 2, 8)
    torch.testing.assert_close(got, want)


def test_weights_are_zero_outside_the_window_and_rows_sum_to_one() -> None:
    q, k = (torch.randn(2, 4, 4, 3, 5) for _ in range(2))
    a = window_weights(q, k, (2, 2), sizes=(3, 4))
    assert a.shape == (2, 3, 16, 16)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 16))
    # token (0, 0) sees only its window (0,0),(0,1),(1,0),(1,1); padded row 3 is never a key
    assert set(a[0, 0, 0].nonzero().flatten().tolist()) == {0, 1, 4, 5}
    assert (a[..., 12:] == 0).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": (3, 4)}, r"grid sizes \(4, 6\) must be multiples of the window \(3, 4\)"),
        ({"window": (2,)}, "window must be 2 positive ints"),
        ({"window": 2, "halo": -1}, "halo must be an int >= 0, got -1"),
        ({"window": 2, "halo": 1, "dilated": True}, "dilated .* take no halo"),
        ({"window": 2, "sizes": (5, 6)}, r"sizes must give 2 sides within the grid \(4, 6\)"),
        ({"window": 2, "impl": "fast"}, "impl must be one of 'auto', 'reference', 'sdpa'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    q = torch.randn(1, 4, 6, 2, 3)
    with pytest.raises(ValueError, match=match):
        window_attention(q, q, q, **kwargs)
