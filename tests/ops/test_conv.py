"""The depthwise convolution op: ``conv`` (torch's grouped convolution) against the shift-and-add
``reference`` on 1-D, 2-D and 3-D channels-last grids, forward and backward; a hand-made kernel;
errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.conv import depthwise_conv
from tests.helpers import assert_all_close, fwd_bwd


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dilation", [1, 3])
@pytest.mark.parametrize(
    "grid,kernel", [((11,), (5,)), ((7, 9), (3, 5)), ((5, 6, 7), (3, 1, 3)), ((2, 3), (7, 7))]
)
def test_conv_matches_reference(grid: tuple, kernel: tuple, dilation: int, bias: bool) -> None:
    C = 4
    x = torch.randn(2, *grid, C, dtype=torch.float64)
    w = torch.randn(C, 1, *kernel, dtype=torch.float64)
    b = torch.randn(C, dtype=torch.float64)

    def run(impl: str) -> list[torch.Tensor]:
        torch.manual_seed(1)
        if bias:
            return fwd_bwd(
                lambda x, w, b: depthwise_conv(x, w, b, dilation=dilation, impl=impl), [x, w, b]
            )
        return fwd_bwd(lambda x, w: depthwise_conv(x, w, dilation=dilation, impl=impl), [x, w])

    assert_all_close(run("conv"), run("reference"), atol=1e-12, rtol=1e-12)


def test_reference_is_a_same_size_zero_padded_convolution() -> None:
    """A kernel that picks the left neighbour shifts the row right, with a zero at the border."""
    x = torch.arange(1.0, 6.0).view(1, 5, 1)
    w = torch.tensor([[[1.0, 0.0, 0.0]]])  # [C, 1, k]: offset -1
    assert depthwise_conv(x, w, impl="reference").flatten().tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(
        depthwise_conv(x, w, impl="reference"),
        F.conv1d(x.movedim(-1, 1), w, padding=1).movedim(1, -1),
    )


@pytest.mark.parametrize(
    "weight,kwargs,match",
    [
        (torch.randn(4, 1, 4, 3), {}, r"weight must be \[C=4, 1, \*k\] with 2 odd kernel sides"),
        (torch.randn(3, 1, 3, 3), {}, r"weight must be \[C=4, 1, \*k\]"),
        (torch.randn(4, 1, 3), {}, r"with 2 odd kernel sides, got \(4, 1, 3\)"),
        (
            torch.randn(4, 1, 3, 3),
            {"impl": "fft"},
            "impl must be one of 'auto', 'reference', 'conv', got 'fft'",
        ),
    ],
)
def test_bad_arguments_are_named(weight: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        depthwise_conv(torch.randn(1, 5, 5, 4), weight, **kwargs)
