"""Multi-head softmax attention: the exact baseline every other mechanism is compared with.

Vaswani et al., "Attention Is All You Need", 2017. https://arxiv.org/abs/1706.03762
Code: https://github.com/tensorflow/tensor2tensor ; peer: ``torch.nn.MultiheadAttention`` and
``torch.nn.functional.scaled_dot_product_attention``.

``o = softmax(q k^T / sqrt(K) + mask) v`` per head, with grouped-query attention (``num_kv_heads``),
every mask kind of :class:`attnzoo.Mask`, all four CAB patterns and a KV-cache ``step``.
Time O(B·H·pairs·K) where ``pairs = Mask.pairs(T, S)``; memory O(T·S) (``reference``) or
O(T·block) (``blocked``, ``sdpa``'s fused CPU kernel).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import Tensor

from attnzoo.mixers.common import (
    ATTENTION_MASKS,
    AttentionConfig,
    AttentionMixer,
    attention_mixer_flops,
)
from attnzoo.ops.masks import Mask
from attnzoo.ops.softmax import softmax_attention, softmax_weights
from attnzoo.registry import PATTERNS, Paper, register_mixer

PAPER = Paper(
    title="Attention Is All You Need",
    year=2017,
    url="https://arxiv.org/abs/1706.03762",
    code="https://github.com/tensorflow/tensor2tensor",
)


@dataclasses.dataclass(frozen=True)
class SoftmaxConfig(AttentionConfig):
    """:class:`AttentionConfig` plus ``impl``.

    Attributes:
        impl: ``auto`` | ``reference`` | ``sdpa`` | ``blocked`` (see
            :func:`attnzoo.ops.softmax.softmax_attention`).
    """

    impl: Literal["auto", "reference", "sdpa", "blocked"] = "auto"


@register_mixer(
    "softmax",
    config=SoftmaxConfig,
    family="softmax",
    patterns=PATTERNS,
    masks=ATTENTION_MASKS,
    state="growing",
    exact=True,
    attention_maps=True,
    complexity="O(T·S·K) time; O(T·S) or O(T·block) memory",
    paper=PAPER,
    peer="torch.nn.MultiheadAttention (copied weights); torch SDPA math backend",
    flops=attention_mixer_flops,
)
class SoftmaxAttention(AttentionMixer):
    cfg: SoftmaxConfig

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        return softmax_attention(q, k, v, mask=mask, impl=self.cfg.impl)  # [B, T, H, K]

    def weights(self, q: Tensor, k: Tensor, mask: Mask) -> Tensor:
        return softmax_weights(q, k, mask=mask)  # [B, H, T, S]
