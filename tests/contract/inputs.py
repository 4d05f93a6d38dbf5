"""Generic inputs for any registered mixer, by its spec (1-D ``[B, T, D]`` or 2-D ``[B, h, w, C]``)."""

from __future__ import annotations

import torch

import attnzoo as az

D_MODEL = 32
T, S = 7, 5


def make_x(
    spec: az.MixerSpec, d_model: int = D_MODEL, batch: int = 2, length: int = T
) -> torch.Tensor:
    if spec.dims == 1:
        return torch.randn(batch, length, d_model)
    return torch.randn(batch, length, length + 2, d_model)


def make_context(
    spec: az.MixerSpec, d_model: int = D_MODEL, batch: int = 2, length: int = S
) -> torch.Tensor:
    return torch.randn(batch, length, d_model)


def build(spec: az.MixerSpec, pattern: str, d_model: int = D_MODEL) -> az.Mixer:
    return az.build_mixer(spec.name, d_model=d_model, causal=pattern.startswith("causal"))


def all_specs() -> list[az.MixerSpec]:
    return az.list_mixers()


def spec_patterns() -> list[tuple[az.MixerSpec, str]]:
    return [(s, p) for s in all_specs() for p in s.patterns]


def ids(value: object) -> str:
    return value.name if isinstance(value, az.MixerSpec) else str(value)
