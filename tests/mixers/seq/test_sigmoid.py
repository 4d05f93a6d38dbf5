"""sigmoid mixer: its fast path (``blocked``) equal to the reference under each call-time mask
kind, the constant bias ``-log(context_len)`` (or ``bias``) reaching the op, the ``qk_norm``
option, a windowed stream keeping a constant-size cache (and equal to forward), empty sequences
and NaN. (Call errors, streaming errors, step == forward, attention maps and the gate:
tests/contract.)

The mask and empty/NaN checks are shared with softmax (tests/mixers/seq/test_softmax.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.ops import sigmoid_attention
from tests.mixers.seq.test_softmax import (
    MASKS,
    check_empty_sequence_and_nan,
    check_mask_matches_reference,
)


@pytest.mark.parametrize("impl", az.get_spec("sigmoid").fast_impls)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.name)
def test_call_time_masks_match_the_reference(impl: str, mask: az.Mask) -> None:
    check_mask_matches_reference("sigmoid", impl, mask)


def test_empty_sequence_and_nan() -> None:
    check_empty_sequence_and_nan("sigmoid")


def test_windowed_stream_keeps_constant_cache() -> None:
    m = az.build_mixer("sigmoid", d_model=32, causal=True, window=3).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    ys = []
    for t in range(9):
        y, state = m.step(x[:, t], state)
        ys.append(y)
        assert state.k.shape[1] == min(t + 1, 3)
    torch.testing.assert_close(torch.stack(ys, 1), m(x))


def test_sigmoid_mixer_uses_constant_bias() -> None:
    m = az.build_mixer("sigmoid", d_model=32, num_heads=2, context_len=256)
    assert m.cfg.b == pytest.approx(-math.log(256))
    x = torch.randn(1, 5, 32)
    q, k, v = m._project(x, x)
    o = sigmoid_attention(q, k, v, bias=-math.log(256), impl="reference")
    torch.testing.assert_close(m(x), m.out_proj(o.flatten(2)))
    m2 = az.build_mixer("sigmoid", d_model=32, bias=-1.5)
    assert m2.cfg.b == -1.5


def test_qk_norm_option_adds_layernorms() -> None:
    m = az.build_mixer("sigmoid", d_model=32, qk_norm=True)
    assert isinstance(m.q_norm, nn.LayerNorm) and isinstance(m.k_norm, nn.LayerNorm)
