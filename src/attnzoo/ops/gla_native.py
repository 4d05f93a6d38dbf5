"""The ``native`` path of causal gated linear attention: a fused C++ forward, a recomputed backward.

The forward is one C++ kernel (``attnzoo/native/gla_chunk.cpp``): per (batch, head) and chunk,
the intra-chunk scores are GEMMs of ``q e^{b - r}`` against ``k e^{r - b}`` around a reference
point ``r`` chosen per block so that no factor exceeds ``e^15`` (blocks whose total gate exceeds
30 are halved until it does not; off-diagonal halves use factors ``<= 1``), then the chunk's
state is read and updated with ``<= 0`` exponents only. Nothing is copied into a chunk layout.

The backward recomputes the forward with the portable ``chunk`` path under autograd and
differentiates that (gradients for q, k, v and the gates ``gk``): training costs what it costs on
the ``chunk`` path plus one native forward; inference gets the fused kernel. The op is the custom
op ``attnzoo::gla_chunk`` (``torch.compile`` traces it). CPU only, float32 and float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo import native


@torch.library.custom_op("attnzoo::gla_chunk", mutates_args=())
def gla_chunk(q: Tensor, k: Tensor, v: Tensor, gk: Tensor, scale: float, chunk: int) -> Tensor:
    """Causal GLA by the native kernel.

    Shapes:
        q, k, gk ``[B, T, H, K]``, v ``[B, T, H, V]`` -> ``[B, T, H, V]``
    """
    kernel = native.load().gla_chunk_forward
    return kernel(*(native.rows(t) for t in (q, k, v, gk)), scale, chunk)


@gla_chunk.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, gk: Tensor, scale: float, chunk: int) -> Tensor:
    B, T, H, _ = q.shape
    return v.new_empty(B, T, H, v.shape[-1])


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:  # noqa: ANN001
    q, k, v, gk, scale, chunk = inputs
    ctx.save_for_backward(q, k, v, gk)
    ctx.scale, ctx.chunk = scale, chunk


def _backward(ctx, do: Tensor):  # noqa: ANN001, ANN202
    """Recompute through the portable chunk path and differentiate it (see the module doc)."""
    from attnzoo.ops.gla import _chunk  # deferred: attnzoo.ops.gla imports this module

    saved = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [
            t.detach().requires_grad_(need)
            for t, need in zip(saved, ctx.needs_input_grad[:4], strict=True)
        ]
        o = _chunk(*leaves, ctx.scale, ctx.chunk)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(o, wanted, do, create_graph=torch.is_grad_enabled()))
    out = [next(grads) if t.requires_grad else None for t in leaves]
    return *out, None, None


gla_chunk.register_autograd(_backward, setup_context=_setup_context)
