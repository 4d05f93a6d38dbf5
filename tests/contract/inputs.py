"""Generic inputs for any registered mixer, by its spec (1-D ``[B, T, D]`` or 2-D ``[B, h, w, C]``)."""

from __future__ import annotations

import functools

import torch

import attnzoo as az

D_MODEL = 32
T, S = 7, 5
# grids tried in order for 2-D mixers; a mixer may reject a grid with a ValueError naming the
# constraint (tests/contract/test_contract_2d.py checks that), so inputs use the first it accepts
GRIDS_2D = ((T, T + 2), (8, 8), (16, 16), (32, 32))


@functools.cache
def grid_for(name: str, d_model: int = D_MODEL) -> tuple[int, int]:
    """The first grid ``(h, w)`` of ``GRIDS_2D`` that the 2-D mixer ``name`` accepts."""
    errors = []
    with torch.no_grad(), torch.random.fork_rng():
        m = az.build_mixer(name, d_model=d_model)
        for h, w in GRIDS_2D:
            try:
                m(torch.randn(2, h, w, d_model))
            except ValueError as e:
                errors.append(f"{h}x{w}: {e}")
                continue
            return h, w
    raise AssertionError(f"{name} rejects every grid in {GRIDS_2D}: {errors}")


def make_x(
    spec: az.MixerSpec, d_model: int = D_MODEL, batch: int = 2, length: int = T
) -> torch.Tensor:
    if spec.dims == 1:
        return torch.randn(batch, length, d_model)
    h, w = grid_for(spec.name, d_model) if length == T else (length, length + 2)
    return torch.randn(batch, h, w, d_model)


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
