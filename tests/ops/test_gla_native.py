"""gated_linear_attention impl='native' beyond the shared impl tests of test_gla.py: dispatch from
'auto', input checks, torch.compile, causality to the bit, and a 64k-token sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops import gla as gla_mod
from attnzoo.ops.gla import gated_linear_attention
from tests.helpers import spy
from tests.ops.test_gla import inputs


def test_auto_takes_native_on_cpu_float(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, gla_mod, "gla_chunk")
    x = inputs(40)
    want = gated_linear_attention(*x, impl="reference")
    torch.testing.assert_close(gated_linear_attention(*x), want, atol=2e-5, rtol=1e-5)
    assert len(calls) == 1
    gated_linear_attention(*(t.bfloat16() for t in x))  # bf16: the chunk path
    assert len(calls) == 1


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
    torch.testing.assert_close(compiled(*x), fn(*x))


def test_64k_tokens_with_strong_gates_stay_finite() -> None:
    """T = 65536 (the issue's long-sequence case), gates down to -5 per step (cumulative gates
    reach -160000): finite, and equal to the portable chunk path."""
    torch.manual_seed(0)
    T = 65536
    q, k, v = (torch.randn(1, T, 2, 16) for _ in range(3))
    gk = -5.0 * torch.rand(1, T, 2, 16)
    got = gated_linear_attention(q, k, v, gk, impl="native")
    assert torch.isfinite(got).all()
    want = gated_linear_attention(q, k, v, gk, impl="chunk")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    mild = F.logsigmoid(torch.randn(1, T, 2, 16)) / 16  # GLA's parametrisation
    got = gated_linear_attention(q, k, v, mild, impl="native")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, gated_linear_attention(q, k, v, mild, impl="chunk"),
                               atol=1e-3, rtol=1e-4)  # fmt: skip
