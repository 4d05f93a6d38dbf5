"""gated_linear_attention impl='native' beyond the shared impl tests of test_gla.py (which compare
its forward and gradients with the reference): dispatch from 'auto', the native backward kernel
and its double-backward route, float64 gradients, input checks, torch.compile, causality to the
bit, and a 64k-token sequence forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops import gla as gla_mod
from attnzoo.ops import gla_native
from attnzoo.ops.gla import gated_linear_attention
from tests.helpers import assert_all_close, fwd_bwd, spy
from tests.ops.test_gla import B, H, V, inputs, op


def test_auto_takes_native_on_cpu_float(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, gla_mod, "gla_chunk")
    x = inputs(40)
    want = gated_linear_attention(*x, impl="reference")
    torch.testing.assert_close(gated_linear_attention(*x), want, atol=2e-5, rtol=1e-5)
    assert len(calls) == 1
    gated_linear_attention(*(t.bfloat16() for t in x))  # bf16: the chunk path
    assert len(calls) == 1


def test_backward_runs_the_native_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, gla_native, "gla_chunk_backward")
    x = inputs(40)
    got = fwd_bwd(op("native"), x)
    assert len(calls) == 1
    # only the wanted gradients are returned (the kernel computes all four)
    q, k, v, g = (t.clone().requires_grad_(i == 2) for i, t in enumerate(x))
    gated_linear_attention(q, k, v, g, impl="native").sum().backward()
    assert v.grad is not None and q.grad is None and g.grad is None
    assert len(calls) == 2
    assert all(torch.isfinite(t).all() for t in got)


def mixed_gates(T: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Mild gates in the first half (one block per chunk), strong ones (-5 per step, blocks
    halved down to single rows) in the second: both of the kernels' block forms."""
    q, k, v, gk = inputs(T, "normal", dtype=dtype)
    gk[:, T // 2 :] = -5.0 * torch.rand_like(gk[:, T // 2 :])
    gk[:, : T // 2] /= 16
    return [q, k, v, gk]


@pytest.mark.parametrize("chunk_size", [1, 10, 64])
def test_float64_gradients_match_reference_tightly(chunk_size: int) -> None:
    x = mixed_gates(150, torch.float64)
    g = torch.randn(B, 150, H, V, dtype=torch.float64)
    want = fwd_bwd(op("reference"), x, g)
    got = fwd_bwd(op("native", chunk_size=chunk_size), x, g)
    assert_all_close(got, want, atol=1e-11, rtol=1e-11)


def test_double_backward_recomputes_through_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_graph=True needs gradients that are themselves differentiable: the backward then
    differentiates the portable chunk path instead of calling the (once-differentiable) kernel."""
    calls = spy(monkeypatch, gla_native, "gla_chunk_backward")
    x = [t.requires_grad_() for t in mixed_gates(12, torch.float64)]

    def fn(q, k, v, g):  # noqa: ANN001, ANN202
        return gated_linear_attention(q, k, v, g, impl="native", chunk_size=5)

    assert torch.autograd.gradcheck(fn, x)
    n_first = len(calls)
    assert n_first > 0  # first-order gradients: the kernel
    assert torch.autograd.gradgradcheck(fn, x)
    assert len(calls) == n_first  # gradients of gradients: the chunk path


def test_native_errors_name_the_value_and_the_way_out() -> None:
    x = inputs(5)
    with pytest.raises(
        TypeError, match="impl='native' takes float32 or float64, got torch.bfloat16"
    ):
        gated_linear_attention(*(t.bfloat16() for t in x), impl="native")
    with pytest.raises(ValueError, match="runs on the CPU, got tensors on meta"):
        gated_linear_attention(*(t.to("meta") for t in x), impl="native")


def test_output_rows_ignore_later_inputs_to_the_bit() -> None:
    """Changing tokens 20.. leaves rows 0..19 bit-identical (mild gates: one block per chunk,
    reference points never look ahead)."""
    q, k, v, gk = inputs(50)
    gk = gk / 16
    q2, k2, v2, gk2 = (t.clone() for t in (q, k, v, gk))
    for t in (q2, k2, v2):
        t[:, 20:] += 1.0
    gk2[:, 20:] -= 0.5
    a = gated_linear_attention(q, k, v, gk, impl="native", chunk_size=32)
    b = gated_linear_attention(q2, k2, v2, gk2, impl="native", chunk_size=32)
    assert torch.equal(a[:, :20], b[:, :20])


@pytest.mark.compile
def test_native_compiles_in_one_graph() -> None:
    x = inputs(50)

    def fn(q, k, v, g):
        return gated_linear_attention(q, k, v, g, impl="native", chunk_size=16)

    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    g = torch.randn(B, 50, H, V)
    assert_all_close(fwd_bwd(compiled, x, g), fwd_bwd(fn, x, g))


def test_64k_tokens_with_strong_gates_stay_finite() -> None:
    """T = 65536 (the issue's long-sequence case), gates down to -5 per step (cumulative gates
    reach -160000): finite, and equal to the portable chunk path, forward and backward."""
    torch.manual_seed(0)
    T = 65536
    q, k, v = (torch.randn(1, T, 2, 16) for _ in range(3))
    gk = -5.0 * torch.rand(1, T, 2, 16)
    got = gated_linear_attention(q, k, v, gk, impl="native")
    assert torch.isfinite(got).all()
    want = gated_linear_attention(q, k, v, gk, impl="chunk")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    do = torch.randn_like(v)
    got_grads = fwd_bwd(op("native"), [q, k, v, gk], do)
    assert all(torch.isfinite(t).all() for t in got_grads)
    assert_all_close(got_grads, fwd_bwd(op("chunk"), [q, k, v, gk], do), atol=1e-4, rtol=1e-4)
    mild = F.logsigmoid(torch.randn(1, T, 2, 16)) / 16  # GLA's parametrisation
    got = gated_linear_attention(q, k, v, mild, impl="native")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, gated_linear_attention(q, k, v, mild, impl="chunk"),
                               atol=1e-3, rtol=1e-4)  # fmt: skip
