"""Combiner (S-COMBINER): full-support softmax attention at O(T·√T) cost.

Ren, Dai, Dai, Yang, Leskovec, Schuurmans and Dai, "Combiner: Full Attention Transformer with
Sparse Computation Cost", NeurIPS 2021. https://arxiv.org/abs/2107.05768
Code: https://github.com/google-research/google-research/tree/master/combiner (TF
``combiner/tf/approx_attention.py``: ``sqrt_fixed_full``, ``axial_rowmajor``; JAX
``combiner/jax/model/layer.py``: ``_SelfAttSqrtn``, ``_SelfAttAxialRowmajor``). No pip package
ships it: the peer checks are identities (one segment, and segments of one token, are exact
softmax attention).

Per head, with ``q, k, v = x W_q, x W_k, x W_v`` and segments of length ``s`` (``segment``;
``None`` means ``ceil(sqrt(T))`` per call), the output is ``o_i = sum_j p(j|i) v_j`` with
``p(j|i)`` given directly for keys in the query's own segment and factorised as
``p(Ω_r|i)·p(j|Ω_r)`` for keys in the other (causal: earlier) segments ``Ω_r``; one softmax over
``[own-segment keys, span summaries]`` gives both the direct and the span probabilities
(:mod:`attnzoo.ops.combiner` has the math of both variants):

- ``variant="fixed"``: Combiner-Fixed. Span keys and the span's inner query are pooled over the
  span (``pool``: max, the official default, or mean).
- ``variant="axial"``: Combiner-Axial (the official ``AxialRowMajorLM``, the paper's Fig. 1F):
  the segments are rows of an ``s``-wide grid, row ``r`` is reached through the token in the
  query's column, whose row-attention output is the span value.

Choices and departures from the official code:

- Non-causal: the spans are the *other* segments. The official ``sqrt_fixed_full`` and
  ``axial_rowmajor`` with ``causal=False`` leave the span logits unmasked, so a query reaches
  its own segment twice (directly and through its summary); we follow the paper's partition.
- ``T`` need not be a multiple of ``s`` (the code asserts it): the last segment is shorter, its
  pooled summaries use its real tokens only, and (axial, non-causal) a column missing from it is
  replaced by its last token.
- Axial's span key: ``row_summary="none"`` (the key of the column's token) or ``"wsum"`` (the
  row-attention average of the keys), both options of the code. Its default ``'proj'`` (a dense
  layer, residual, LayerNorm and a second dense layer on the row output) is left out: it is a
  learned sub-layer on top of the factorisation, not part of it.
- Left out: the other instantiations (Combiner-Logsparse, Combiner-Mixture,
  ``axial_mixture_unidir``, whose ``approx_cummax`` is a cumulative sum), the learned
  ``deepset``/``relu`` summaries, attention dropout.
- Streaming (``state="none"``): with a fixed ``segment`` a causal step could keep every finished
  segment's summaries and the current segment's keys and values, but the default segment
  depends on the whole length ``T``, so ``step`` could not match ``forward``; not implemented.

Time ``O(T·(s + T/s)·K)`` per head, ``O(T·√T·K)`` at ``s = √T``; memory ``O(T·(s + T/s))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.combiner import combiner_attention, combiner_flops, combiner_weights
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="Combiner: Full Attention Transformer with Sparse Computation Cost",
    year=2021,
    url="https://arxiv.org/abs/2107.05768",
    code="https://github.com/google-research/google-research/tree/master/combiner",
)


@dataclasses.dataclass(frozen=True)
class CombinerConfig(HeadsConfig):
    """Combiner attention.

    Attributes:
        num_heads: heads; ``None`` means :func:`default_heads`. Head width ``d_model // num_heads``.
        variant: ``fixed`` (Combiner-Fixed) | ``axial`` (Combiner-Axial).
        segment: segment (axial: row) length; ``None`` means ``ceil(sqrt(T))`` at each call.
        pool: ``max`` | ``mean``: the pooled span query and key of ``fixed``.
        row_summary: ``none`` | ``wsum``: the span key of ``axial`` (the column token's key, or
            the row-attention average of the row's keys).
        bias: bias on the q/k/v and output projections.
        impl: ``auto`` (``segments``) | ``reference`` (the ``T x T`` probabilities) |
            ``segments`` (the ``O(T·√T)`` path).
    """

    variant: Literal["fixed", "axial"] = "fixed"
    segment: int | None = limit(None, ge=1)
    pool: Literal["max", "mean"] = "max"
    row_summary: Literal["none", "wsum"] = "none"
    bias: bool = False
    impl: Literal["auto", "reference", "segments"] = "auto"

    def validate(self) -> None:
        if self.variant != "fixed" and self.pool != "max":
            raise ValueError(
                f"{self._owner()}: pool={self.pool!r} applies to variant='fixed' only, "
                f"got variant={self.variant!r}"
            )
        if self.variant != "axial" and self.row_summary != "none":
            raise ValueError(
                f"{self._owner()}: row_summary={self.row_summary!r} applies to variant='axial' "
                f"only, got variant={self.variant!r}"
            )


def combiner_mixer_flops(
    cfg: CombinerConfig, batch: int, T: int, S: int | None, mask: object
) -> int:
    """q/k/v/out projections plus :func:`attnzoo.ops.combiner.combiner_flops`."""
    H, K, D = cfg.heads, cfg.dim_head, cfg.d_model
    attn = combiner_flops(batch, H, K, K, T, cfg.segment, cfg.variant, cfg.row_summary)
    return 2 * batch * T * D * 4 * H * K + attn


@register_mixer(
    "combiner",
    config=CombinerConfig,
    family="sparse",
    patterns=("causal-self", "noncausal-self"),
    attention_maps=True,
    # T^1.5 is T·√T (the bench reads the exponent); a fixed segment s costs T·(s + T/s)·K
    complexity="O(T^1.5·K) time at the default segment ceil(T^0.5), T·(s + T/s)·K at a fixed segment s; O(T^1.5) memory",
    paper=PAPER,
    peer="identity: one segment and one-token segments equal exact softmax attention",
    export=ExportSupport(
        dynamic="the segment length (ceil(sqrt(T)) by default) and the padded [ceil(T/s), s] "
        "segment grid are Python ints computed from T, so the program fixes T",
    ),
    flops=combiner_mixer_flops,
)
class Combiner(Mixer):
    cfg: CombinerConfig

    def __init__(self, cfg: CombinerConfig) -> None:
        super().__init__(cfg)
        H, K = cfg.heads, cfg.dim_head
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * H * K, bias=cfg.bias)
        self.out_proj = nn.Linear(H * K, cfg.d_model, bias=cfg.bias)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        qkv = self.qkv_proj(x)
        q, k, v = rearrange(qkv, "b t (three h k) -> three b t h k", three=3, h=self.cfg.heads)
        return q, k, v  # [B, T, H, K] each

    def _out(self, o: Tensor) -> Tensor:
        return self.out_proj(rearrange(o, "b t h k -> b t (h k)"))  # [B, T, H, K] -> [B, T, D]

    def _options(self) -> dict[str, Any]:
        c = self.cfg
        return {"causal": c.causal, "variant": c.variant, "segment": c.segment, "pool": c.pool,
                "row_summary": c.row_summary}  # fmt: skip

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        q, k, v = self._project(x)
        impl = "segments" if self.cfg.impl == "auto" else self.cfg.impl
        return self._out(combiner_attention(q, k, v, impl=impl, **self._options()))

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """``P[i, j] = p(j|i)`` (direct, or ``p(Ω_r|i)·p(j|Ω_r)``): ``[B, H, T, T]``; exact."""
        q, k, v = self._project(x)
        a = combiner_weights(q, k, **self._options())
        values = rearrange(v, "b s h k -> b h s k")
        return AttentionMaps(a, values, lambda o: self._out(rearrange(o, "b h t k -> b t h k")))
