"""Throwaway mixers for bench tests: one whose fast path is wrong, one that fails at long T."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Literal

import torch

import attnzoo as az
from attnzoo.registry import unregister_mixer


@dataclasses.dataclass(frozen=True)
class FakeConfig(az.MixerConfig):
    impl: Literal["auto", "reference", "fast"] = "auto"
    fail_at: int = 0  # raise when T >= fail_at (0: never)


class Fake(az.Mixer):
    def __init__(self, cfg: FakeConfig) -> None:
        super().__init__(cfg)
        self.lin = torch.nn.Linear(cfg.d_model, cfg.d_model)

    def mix(self, x: torch.Tensor, context: None, mask: object) -> torch.Tensor:
        if self.cfg.fail_at and x.shape[1] >= self.cfg.fail_at:
            raise RuntimeError(f"fake mixer fails at T={x.shape[1]}")
        y = self.lin(x)
        return y * 1.01 if self.cfg.impl == "fast" else y  # the fast path is wrong by 1%


@contextlib.contextmanager
def fake_mixer(name: str, fail_at: int = 0) -> Iterator[str]:
    cfg = dataclasses.make_dataclass(
        f"{name}Config",
        [("fail_at", int, dataclasses.field(default=fail_at))],
        bases=(FakeConfig,),
        frozen=True,
    )
    az.register_mixer(
        name, config=cfg, family="other", complexity="O(T·D²)",
        paper=az.Paper("fake", 2026, "-"), peer="-", flops=lambda c, b, t, s, m: 2 * b * t * c.d_model**2,
    )(type(name, (Fake,), {}))  # fmt: skip
    try:
        yield name
    finally:
        unregister_mixer(name)
