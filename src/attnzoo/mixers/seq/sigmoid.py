"""Multi-head sigmoid attention (S-SIGMOID).

Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid Self-Attention", 2024.
https://arxiv.org/abs/2409.04431  Code: https://github.com/apple/ml-sigmoid-attention

``o = sigmoid(q k^T / sqrt(K) + b) v`` per head, no row normalisation. The bias is a constant
of the layer, as in the paper's configs (``sigmoid_bias = -ln 2048`` for a 2048-token context):
``b = -log(context_len)`` unless ``bias`` is given. Keeping it constant (not ``-log S`` of each
call) is what lets ``step()`` stream exactly. ``qk_norm=True`` is the paper's other best practice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from torch import Tensor

from attnzoo.config import limit
from attnzoo.mixers.common import (
    ATTENTION_MASKS,
    AttentionConfig,
    AttentionMixer,
    attention_mixer_flops,
)
from attnzoo.ops.masks import Mask
from attnzoo.ops.sigmoid import sigmoid_attention, sigmoid_weights
from attnzoo.registry import PATTERNS, Paper, register_mixer

PAPER = Paper(
    title="Theory, Analysis, and Best Practices for Sigmoid Self-Attention",
    year=2024,
    url="https://arxiv.org/abs/2409.04431",
    code="https://github.com/apple/ml-sigmoid-attention",
)


@dataclasses.dataclass(frozen=True)
class SigmoidConfig(AttentionConfig):
    """:class:`AttentionConfig` plus the sigmoid bias.

    Attributes:
        bias: the constant ``b``; ``None`` means ``-log(context_len)``.
        context_len: the ``n`` of the default bias (set it to the training sequence length).
        impl: ``auto`` | ``reference`` | ``blocked``.
    """

    bias: float | None = limit(None, finite=True)
    context_len: int = limit(1024, ge=1)
    impl: Literal["auto", "reference", "blocked"] = "auto"

    @property
    def b(self) -> float:
        return self.bias if self.bias is not None else -math.log(self.context_len)


@register_mixer(
    "sigmoid",
    config=SigmoidConfig,
    family="dense",
    patterns=PATTERNS,
    masks=ATTENTION_MASKS,
    state="growing",
    attention_maps=True,
    complexity="O(T·S·K) time; O(T·S) or O(T·block) memory",
    paper=PAPER,
    peer="x-transformers Attend(sigmoid=True), fwd+bwd",
    flops=attention_mixer_flops,
)
class SigmoidAttention(AttentionMixer):
    cfg: SigmoidConfig

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        return sigmoid_attention(
            q, k, v, mask=mask, bias=self.cfg.b, impl=self.cfg.impl
        )  # [B, T, H, K]

    def weights(self, q: Tensor, k: Tensor, mask: Mask) -> Tensor:
        return sigmoid_weights(q, k, mask=mask, bias=self.cfg.b)  # [B, H, T, S]
