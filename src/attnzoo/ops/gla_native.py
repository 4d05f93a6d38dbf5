"""The ``native`` path of causal gated linear attention: fused C++ forward and backward kernels.

The forward (``attnzoo/native/gla_chunk.cpp``): per (batch, head) and chunk, the intra-chunk
scores are GEMMs of ``q e^{b - r}`` against ``k e^{r - b}`` around a reference point ``r`` chosen
per block so that no factor exceeds ``e^30`` (blocks whose total gate exceeds 30 are halved until
it does not; off-diagonal halves use factors ``<= 1``), then the chunk's state is read and updated
with ``<= 0`` exponents only. Nothing is copied into a chunk layout.

The backward (``attnzoo/native/gla_grad.cpp``) is the same kind of kernel: a forward scan gives
``dq``, a reverse scan ``dk``, ``dv`` and the gate gradient ``dg`` (the reverse cumulative sum of
``q dq - k dk``), with the same blocks and bounds, so it also stays finite under strong gates.
A double backward (``create_graph=True``) instead recomputes the forward on the portable
``chunk`` path under autograd and differentiates that, which is twice differentiable. The ops are
the custom ops ``attnzoo::gla_chunk`` and ``attnzoo::gla_chunk_backward`` (``torch.compile``
traces them; ``torch.export`` of ``impl="native"`` records ``attnzoo::gla_chunk``, a dynamic ``T``
included, through its ``register_fake``, while ``impl="auto"`` exports the portable ``chunk``
path: see :mod:`attnzoo.native`). CPU only, float32 and float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

import attnzoo.native as native
from attnzoo.ops.gla_chunk import _chunk


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


@torch.library.custom_op("attnzoo::gla_chunk_backward", mutates_args=())
def gla_chunk_backward(
    q: Tensor, k: Tensor, v: Tensor, gk: Tensor, do: Tensor, scale: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients of :func:`gla_chunk` by the native kernel.

    Shapes:
        q, k, gk ``[B, T, H, K]``, v, do ``[B, T, H, V]`` -> dq, dk, gk's ``[B, T, H, K]``, dv
        ``[B, T, H, V]``, in that order: dq, dk, dv, dgk
    """
    kernel = native.load().gla_chunk_backward
    dq, dk, dv, dg = kernel(*(native.rows(t) for t in (q, k, v, gk, do)), scale, chunk)
    return dq, dk, dv, dg


@gla_chunk_backward.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, gk: Tensor, do: Tensor, scale: float, chunk: int):  # noqa: ANN202
    return q.new_empty(q.shape), q.new_empty(q.shape), v.new_empty(v.shape), q.new_empty(q.shape)


def _backward(ctx, do: Tensor):  # noqa: ANN001, ANN202
    """The native backward kernel, or, when the gradients must themselves be differentiable, the
    portable chunk path recomputed under autograd (see the module doc)."""
    needs = ctx.needs_input_grad[:4]
    if not torch.is_grad_enabled():
        grads = gla_chunk_backward(*ctx.saved_tensors, do, ctx.scale, ctx.chunk)
        return *(g if need else None for g, need in zip(grads, needs, strict=True)), None, None
    saved = ctx.saved_tensors
    with torch.enable_grad():  # on the saved inputs themselves, so the graph reaches the callers'
        o = _chunk(*saved, ctx.scale, ctx.chunk)
        wanted = [t for t, need in zip(saved, needs, strict=True) if need]
        grads = iter(torch.autograd.grad(o, wanted, do, create_graph=True))
    return *(next(grads) if need else None for need in needs), None, None


gla_chunk.register_autograd(_backward, setup_context=_setup_context)
