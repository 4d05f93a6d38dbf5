"""What the contract tests run on: every registered block plus the throwaway blocks of other
layouts and roles (:mod:`tests.contract.throwaway`), and inputs for any of them."""

from __future__ import annotations

import torch

import attnzoo as az
from attnzoo.testing import example_call, output_shape
from tests.contract.throwaway import SPECS as THROWAWAY

D_MODEL = 32
T, S = 7, 5


def all_specs() -> list[az.MixerSpec]:
    return az.list_mixers() + THROWAWAY


def spec_patterns() -> list[tuple[az.MixerSpec, str]]:
    return [(s, p) for s in all_specs() for p in s.patterns]


def ids(value: object) -> str:
    return value.name if isinstance(value, az.MixerSpec) else str(value)


def build(spec: az.MixerSpec, pattern: str, d_model: int = D_MODEL, **cfg: object) -> az.Mixer:
    return az.build_mixer(spec.name, d_model=d_model, causal=pattern.startswith("causal"), **cfg)


def inputs(
    spec: az.MixerSpec,
    m: az.Mixer,
    pattern: str,
    *,
    length: int | None = None,
    context_length: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, context)`` for a call in ``pattern``; ``length`` / ``context_length`` set a token
    axis' size (every axis of a grid) instead of the defaults of :mod:`attnzoo.testing`."""
    rank = len(az.LAYOUTS[spec.layout].axes)
    c_rank = len(az.LAYOUTS[spec.context_layout or spec.layout].axes)
    return example_call(
        spec,
        m,
        pattern=pattern,
        sizes=None if length is None else (length,) * rank,
        context_sizes=None if context_length is None else (context_length,) * c_rank,
        dtype=dtype,
    )


def call(m: az.Mixer, x: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    return m(x) if ctx is None else m(x, context=ctx)


def expected_shape(spec: az.MixerSpec, x: torch.Tensor, m: az.Mixer) -> tuple[int, ...]:
    return output_shape(spec, x, m.d_model)
