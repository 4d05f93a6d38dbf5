"""The correctness gate (``check_mixer``): every fast path against the reference, forward and
backward, on weights moved off their initialisation; what it refuses; its tolerance."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.bench.gate import check_mixer
from attnzoo.registry import unregister_mixer

PAPER = az.Paper("a throwaway block of the gate tests", 2026, "-")


@dataclasses.dataclass(frozen=True)
class GateConfig(az.MixerConfig):
    impl: Literal["auto", "reference", "right", "bias_forgotten", "off"] = "auto"


@dataclasses.dataclass(frozen=True)
class NoRefConfig(az.MixerConfig):
    impl: Literal["auto", "fast"] = "auto"


@pytest.fixture
def blocks() -> Iterator[tuple[az.MixerSpec, az.MixerSpec]]:
    """A block with a right fast path, one that forgets its (zero-initialised) bias, one that is
    off by 1e-3; and a block that declares no reference."""

    @az.register_mixer("_gate_probe", config=GateConfig, family="other", complexity="-",
                       paper=PAPER, peer="-", flops=lambda *a: 0)  # fmt: skip
    class Probe(az.Mixer):
        def __init__(self, cfg: GateConfig) -> None:
            super().__init__(cfg)
            self.lin = nn.Linear(cfg.d_model, cfg.d_model)
            nn.init.zeros_(self.lin.bias)

        def mix(self, x: torch.Tensor, context: None, mask: object) -> torch.Tensor:
            impl = self.cfg.impl
            if impl == "bias_forgotten":
                return x @ self.lin.weight.t()
            y = self.lin(x)
            return y + 1e-3 if impl == "off" else y

    @az.register_mixer("_gate_noref", config=NoRefConfig, family="other", complexity="-",
                       paper=PAPER, peer="-", flops=lambda *a: 0)  # fmt: skip
    class NoRef(az.Mixer):
        def __init__(self, cfg: NoRefConfig) -> None:
            super().__init__(cfg)
            self.lin = nn.Linear(cfg.d_model, cfg.d_model)

        def mix(self, x: torch.Tensor, context: None, mask: object) -> torch.Tensor:
            return self.lin(x)

    yield Probe.spec, NoRef.spec
    unregister_mixer("_gate_probe")
    unregister_mixer("_gate_noref")


def test_every_fast_path_is_compared_and_wrong_ones_fail(blocks: tuple) -> None:
    probe, _ = blocks
    rows = {r.impl: r for r in check_mixer(probe)}
    assert set(rows) == {"reference", "right", "bias_forgotten", "off"}
    assert "shape/finite check" in rows["reference"].detail and rows["reference"].ok
    assert rows["right"].ok and rows["right"].max_abs_err < 1e-6
    assert not rows["off"].ok and rows["off"].max_abs_err == pytest.approx(1e-3, rel=1e-3)
    # the bias is zero at initialisation: only moving it off zero shows the fast path ignores it
    assert not rows["bias_forgotten"].ok


def test_a_block_without_a_reference_fails_the_gate(blocks: tuple) -> None:
    _, noref = blocks
    (row,) = check_mixer(noref)
    assert not row.ok and row.impl == "reference" and "no impl='reference'" in row.detail


def test_tolerance_scales_with_each_tensor() -> None:
    """davit_channel's 'gram' path re-associates sums: its parameter gradients (magnitude ~1e2)
    differ from the reference by ~1e-3 in fp32, which is exact to ~1e-6 relative."""
    rows = {r.impl: r for r in check_mixer(az.get_spec("davit_channel"))}
    assert rows["gram"].ok


def test_length_sets_the_tokens_of_a_token_block() -> None:
    """``attnzoo selfcheck --length``: the gate runs a token block at that length."""
    spec = az.get_spec("softmax")
    short = check_mixer(spec, length=5)
    assert all(r.ok for r in short) and {r.impl for r in short} >= set(spec.fast_impls)
