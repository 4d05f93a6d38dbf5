"""The ``native`` path of causal linear attention with a per-head scalar decay (linear, Lightning).

The forward is one fused C++ kernel (``attnzoo/native/linear_chunk.cpp``): for each (batch, head),
chunk by chunk, the four chunk GEMMs run on strided views of the ``[B, T, H, D]`` inputs through
torch's BLAS, the decay mask and decay factors are applied in cache, and the output is written in
place, so the layout copies, concatenations and elementwise passes of the eager ``chunk`` path
(which made it memory-bound on CPU) disappear.

The kernel is the custom op ``attnzoo::linear_chunk`` (so ``torch.compile`` traces it, and
``torch.export`` of ``impl="native"`` records it, a dynamic ``T`` included, through its
``register_fake``; ``impl="auto"`` exports the ``chunk`` path instead: :mod:`attnzoo.native`); its
backward is the same op three times, which also makes it twice differentiable. With ``o_t = s sum_{u<=t} lambda^(t-u) (q_t.k_u) v_u``:

- ``dq_t = s sum_{u<=t} lambda^(t-u) (do_t.v_u) k_u``, causal: ``dq = fwd(do, v, k)``;
- ``dk_u = s sum_{t>=u} lambda^(t-u) (v_u.do_t) q_t``, anti-causal: ``dk = rev(v, do, q)``;
- ``dv_u = s sum_{t>=u} lambda^(t-u) (k_u.q_t) do_t``, anti-causal: ``dv = rev(k, q, do)``.

The decay is a constant here (Lightning's slopes are fixed buffers): a decay that requires grad
is refused; ``impl="chunk"`` differentiates through it. CPU only, float32 and float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

import attnzoo.native as native


def check_native(op: str, q: Tensor, g: Tensor | None) -> None:
    """Refuse inputs the native kernel does not take, naming the value and the alternative."""
    native.check_inputs(op, q)
    if g is not None and g.requires_grad:
        raise ValueError(
            f"{op}: impl='native' treats the decay as a constant, got a decay that requires grad; "
            "use impl='chunk' to learn it"
        )


def native_for_auto(op: str, q: Tensor, g: Tensor | None) -> bool:
    """Whether ``impl="auto"`` takes the native path (a learned decay goes to ``chunk``)."""
    return (g is None or not g.requires_grad) and native.use_for_auto(op, q)


def native_linear_causal(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, chunk_size: int
) -> Tensor:
    """Causal (decayed) linear attention by the native kernel, differentiable in q, k, v.

    Shapes:
        q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[H]`` log-decay or ``None``
        -> ``[B, T, H, V]``
    """
    H = q.shape[2]
    logd = (
        torch.zeros(H, dtype=torch.float64)
        if g is None
        else g.detach().to(device="cpu", dtype=torch.float64)
    )
    return linear_chunk(q, k, v, logd, float(scale), int(chunk_size), False)


# A torch custom op, so that torch.compile traces through it (no graph break) and autograd
# (including double backward: the backward is made of this op) knows it.
@torch.library.custom_op("attnzoo::linear_chunk", mutates_args=())
def linear_chunk(
    q: Tensor, k: Tensor, v: Tensor, logd: Tensor, scale: float, chunk: int, reverse: bool
) -> Tensor:
    """The kernel: causal (``reverse=False``) or anti-causal decayed linear attention.

    Shapes:
        q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, logd ``[H]`` float64 -> ``[B, T, H, V]``
    """
    kernel = native.load().linear_chunk_forward
    return kernel(native.rows(q), native.rows(k), native.rows(v), logd, scale, chunk, reverse)


@linear_chunk.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, logd: Tensor, scale: float, chunk: int, reverse: bool):  # noqa: ANN202
    B, T, H, _ = q.shape
    return v.new_empty(B, T, H, v.shape[-1])


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:  # noqa: ANN001
    q, k, v, logd, scale, chunk, reverse = inputs
    ctx.save_for_backward(q, k, v, logd)
    ctx.scale, ctx.chunk, ctx.reverse = scale, chunk, reverse


def _backward(ctx, do: Tensor):  # noqa: ANN001, ANN202
    """dq keeps the direction, dk and dv take the opposite one (module docstring)."""
    q, k, v, logd = ctx.saved_tensors
    s, c, r = ctx.scale, ctx.chunk, ctx.reverse
    need = ctx.needs_input_grad
    dq = linear_chunk(do, v, k, logd, s, c, r) if need[0] else None
    dk = linear_chunk(v, do, q, logd, s, c, not r) if need[1] else None
    dv = linear_chunk(k, q, do, logd, s, c, not r) if need[2] else None
    return dq, dk, dv, None, None, None, None


linear_chunk.register_autograd(_backward, setup_context=_setup_context)
