"""Helpers for testing blocks, ours and yours: example inputs of any layout and role, and
weights moved away from their initialisation.

    from attnzoo.testing import example_call, randomise
    m = randomise(az.build_mixer("halo", d_model=32), seed=0)
    x, context = example_call(m.spec, m, pattern="noncausal-self")
    y = m(x, context=context)

The bench's correctness gate, the contract tests and the peer cases use the same functions;
:func:`stream` runs a streaming block token by token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.spec import LAYOUTS, MixerSpec

# small, odd, non-square sizes: no window, block or chunk size divides them
X_SIZES = {"tokens": (7,), "grid2d": (7, 9), "grid3d": (3, 4, 5)}
# the context of a cross pattern or fusion block has other sizes than x
CONTEXT_SIZES = {"tokens": (5,), "grid2d": (4, 6), "grid3d": (2, 3, 4)}


def example_call(
    spec: MixerSpec,
    mixer: nn.Module,
    *,
    pattern: str | None = None,
    batch: int = 2,
    sizes: Sequence[int] | None = None,
    context_sizes: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Standard-normal ``(x, context)`` for one call of ``mixer`` in ``pattern`` (default: the
    spec's first; ``context`` is ``None`` for self patterns). ``x`` has the spec's layout and
    width ``d_model``; ``context`` the spec's context layout and the mixer's ``context_dim``."""
    pattern = spec.patterns[0] if pattern is None else pattern
    layout = LAYOUTS[spec.layout]
    x_sizes = X_SIZES[spec.layout] if sizes is None else tuple(sizes)
    x = layout.example(batch, x_sizes, mixer.d_model, generator=generator, dtype=dtype)
    if not pattern.endswith("cross"):
        return x, None
    c_layout = LAYOUTS[spec.context_layout or spec.layout]
    c_sizes = CONTEXT_SIZES[c_layout.name] if context_sizes is None else tuple(context_sizes)
    width = getattr(mixer, "context_dim", mixer.d_model)
    return x, c_layout.example(batch, c_sizes, width, generator=generator, dtype=dtype)


def stream(mixer: nn.Module, x: Tensor, **state_options: Any) -> tuple[Tensor, Any]:
    """``mixer.step`` over every token of ``x [B, T, D]`` from ``init_state``: the outputs
    ``[B, T, D]`` (to compare with ``mixer(x)``) and the last state."""
    state = mixer.init_state(x.shape[0], **state_options)
    outs = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outs.append(y_t)
    return torch.stack(outs, dim=1), state


def output_shape(spec: MixerSpec, x: Tensor, d_model: int) -> tuple[int, ...]:
    """The shape a call on ``x`` returns: ``x``'s, or ``[B, D]`` for a pooling head."""
    return spec.role_info.output_shape(tuple(x.shape), d_model)


def randomise(
    module: nn.Module, *, seed: int = 0, std: float = 0.3, constant_only: bool = False
) -> nn.Module:
    """Weights away from their initialisation, in place; returns ``module``.

    Parameters are drawn ``N(0, std²)``, except the weights of normalisation layers, drawn
    ``U(0.5, 1.5)``; BatchNorm running statistics move too (mean ``N(0, std²)``, variance
    ``U(0.5, 2)``). Zero biases, unit norm weights and identity statistics hide mapping and
    folding bugs. ``constant_only=True`` redraws only the parameters whose entries are all equal
    (zero biases, unit scales, zero-initialised tables) and keeps the random ones, so the
    activations keep their initial scale (what the bench's gate uses)."""
    g = torch.Generator().manual_seed(seed)
    norms = {
        id(p)
        for m in module.modules()
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase))
        for p in m.parameters(recurse=False)
        if p.dim() == 1 and m.weight is p
    }
    with torch.no_grad():
        for _, p in module.named_parameters():
            if constant_only and p.numel() > 1 and bool((p != p.flatten()[0]).any()):
                continue
            if id(p) in norms:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * std)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return module
