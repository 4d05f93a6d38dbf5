"""The native kernels under torch.export (see :mod:`attnzoo.native`): ``impl="native"`` exports
as the custom ops ``attnzoo::linear_chunk`` / ``attnzoo::gla_chunk`` (a dynamic ``T`` too: their
``register_fake`` gives the shapes) and has no ONNX translation; ``impl="auto"`` exports the
portable ``chunk`` path (plain ATen, static ``T``), which converts to ONNX."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.export import Dim

from attnzoo.ops.gla import gated_linear_attention
from attnzoo.ops.linear import feature_map, linear_attention

B, H, K, V = 2, 2, 4, 3
DECAY = torch.tensor([-0.3, -0.01])
OPS = {"linear": "attnzoo.linear_chunk", "gla": "attnzoo.gla_chunk"}


class Op(nn.Module):
    """One causal op call: linear attention with a constant decay, or GLA with gates ``gk``."""

    def __init__(self, op: str, impl: str) -> None:
        super().__init__()
        self.op, self.impl = op, impl

    def forward(self, q: Tensor, k: Tensor, v: Tensor, gk: Tensor) -> Tensor:
        if self.op == "linear":
            return linear_attention(q, k, v, causal=True, decay=DECAY, impl=self.impl,
                                    chunk_size=4)  # fmt: skip
        return gated_linear_attention(q, k, v, gk, impl=self.impl, chunk_size=4)


def inputs(T: int, seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k = (feature_map(torch.randn(B, T, H, K, generator=g), "elu+1") for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g)
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=g)) / 4
    return q, k, v, gk


def called_ops(ep: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


DYNAMIC = {name: {1: Dim("T", min=2, max=4096)} for name in ("q", "k", "v", "gk")}


@pytest.mark.parametrize("op", list(OPS))
def test_native_exports_as_its_custom_op_with_a_dynamic_T(op: str) -> None:
    m = Op(op, "native")
    ep = torch.export.export(m, inputs(10), dynamic_shapes=DYNAMIC)
    assert any(OPS[op] in t for t in called_ops(ep)), called_ops(ep)
    for T in (10, 23):  # another T: one partial chunk more
        xs = inputs(T, seed=T)
        torch.testing.assert_close(ep.module()(*xs), m(*xs))
        torch.testing.assert_close(ep.module()(*xs), Op(op, "chunk")(*xs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", list(OPS))
def test_auto_exports_the_portable_chunk_path(op: str) -> None:
    """Eager ``auto`` runs the kernel; exported, it is plain ATen with the same numbers."""
    xs = inputs(10)
    ep = torch.export.export(Op(op, "auto"), xs)
    assert not any(t.startswith("attnzoo.") for t in called_ops(ep)), called_ops(ep)
    torch.testing.assert_close(ep.module()(*xs), Op(op, "native")(*xs), rtol=1e-5, atol=1e-5)


def test_native_has_no_onnx_translation_and_auto_converts() -> None:
    import onnxruntime as ort

    xs = inputs(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="attnzoo.linear_chunk"):
            torch.onnx.export(Op("linear", "native"), xs, dynamo=True, verbose=False)
        program = torch.onnx.export(Op("linear", "auto"), xs, dynamo=True, verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs, strict=False)}
    (out,) = session.run(None, feeds)
    want = Op("linear", "native")(*xs)
    torch.testing.assert_close(torch.from_numpy(out), want, rtol=1e-4, atol=1e-5)
