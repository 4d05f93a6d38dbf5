"""Lightning attention (S-LIGHTNING): linear attention with a fixed per-head exponential decay.

Qin et al., "Various Lengths, Constant Speed: Efficient Language Modeling with Lightning
Attention", 2024. https://arxiv.org/abs/2405.17381
Code: https://github.com/OpenNLPLab/lightning-attention (kernel ``lightning_attn2``, module
``examples/module/tnl_attn.py``); peer: fla-core's ``naive_recurrent_simple_gla`` with the decay
broadcast over time.

Per head ``h``, with ``q, k, v = SiLU(x W_q), SiLU(x W_k), SiLU(x W_v)`` and no score scale::

    o_t = sum_{s <= t} lambda_h^(t - s) (q_t . k_s) v_s,    lambda_h = exp(-s_h)

computed by :func:`attnzoo.ops.linear.linear_attention` (Lightning's tiling: quadratic inside a
chunk, a decayed ``[B, H, K, V]`` state across chunks). Streaming keeps that state.

Slopes are ALiBi's: ``s_h = 2^(-8(h+1)/H)`` for a power-of-two ``H``; for other ``H`` the slopes
of the largest power of two ``P < H`` followed by every other slope of ``2P`` (the first
``H - P`` of them), as in ALiBi and the official ``_build_slope_tensor``. With
``num_layers > 1`` the slopes of layer ``layer_idx`` are multiplied by
``1 - layer_idx / (num_layers - 1) + 1e-5`` (TransNormerLLM: later layers decay less).

Causal self-attention only, as in the paper (it defines no non-causal or cross form).

Left out of TNL's layer, to keep the mixer minimal: the LayerNorm on the attention output and the
sigmoid output gate (low-rank ``d -> head_dim -> d``). Time ``O(T·C·K + T·K²)`` per head.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo import peers
from attnzoo.config import limit
from attnzoo.distributed.strategies import StatePassing, register_strategy
from attnzoo.mixers.base import AttentionMaps, StreamingMixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.mixers.seq.linear import LINEAR_VARIANTS, scan_flops
from attnzoo.ops.linear import (
    linear_attention,
    linear_attention_flops,
    linear_attention_step,
    linear_weights,
)
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport, LowPrecision, Tolerance

PAPER = Paper(
    title="Various Lengths, Constant Speed: Efficient Language Modeling with Lightning Attention",
    year=2024,
    url="https://arxiv.org/abs/2405.17381",
    code="https://github.com/OpenNLPLab/lightning-attention",
)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes: ``2^(-8(h+1)/H)`` for power-of-two ``H``, interleaved extension otherwise."""
    if num_heads < 1:
        raise ValueError(f"alibi_slopes: num_heads must be >= 1, got {num_heads}")
    if num_heads & (num_heads - 1) == 0:
        return [2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)]
    p = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(p) + alibi_slopes(2 * p)[0::2][: num_heads - p]


def lightning_slopes(num_heads: int, layer_idx: int = 0, num_layers: int = 1) -> Tensor:
    """Decay rates ``s_h`` (``lambda_h = exp(-s_h)``) of one layer. Shapes: -> ``[H]``."""
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float64)
    if num_layers > 1:
        slopes = slopes * (1 - layer_idx / (num_layers - 1) + 1e-5)
    return slopes


@dataclasses.dataclass(frozen=True)
class LightningConfig(HeadsConfig):
    """Lightning attention.

    Attributes:
        num_heads: heads; ``None`` means :func:`default_heads`. Head width ``d_model // num_heads``.
        bias: bias on the q/k/v and output projections.
        layer_idx, num_layers: the layer's depth factor on the slopes (only if ``num_layers > 1``).
        impl: ``auto`` (``native`` on CPU when it builds, else ``chunk``) | ``reference`` |
            ``chunk`` | ``native`` (the fused C++ CPU kernel) | ``compiled`` (``chunk`` through
            ``torch.compile``; compiles once per input shape) | ``recurrent``.
        chunk_size: tokens per chunk of the ``chunk`` path.
    """

    bias: bool = False
    layer_idx: int = limit(0, ge=0)
    num_layers: int = limit(1, ge=1)
    impl: Literal["auto", "reference", "chunk", "native", "compiled", "recurrent"] = "auto"
    chunk_size: int = limit(64, ge=1)

    def validate(self) -> None:
        if self.layer_idx >= self.num_layers:
            raise ValueError(
                f"{self._owner()}: layer_idx must be in [0, num_layers={self.num_layers}), "
                f"got {self.layer_idx}"
            )


@dataclasses.dataclass
class LightningState:
    """Streaming state: ``kv [B, H, K, K]`` (decayed sum of ``k^T v``); ``position`` counts tokens."""

    kv: Tensor
    position: int = 0


def lightning_flops(cfg: LightningConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """q/k/v/out projections plus :func:`linear_attention_flops`."""
    H, K, D = cfg.heads, cfg.dim_head, cfg.d_model
    return 2 * batch * T * D * 4 * H * K + linear_attention_flops(batch, H, K, K, T, T, False)


@register_mixer(
    "lightning",
    config=LightningConfig,
    family="linear",
    patterns=("causal-self",),
    state="constant",
    attention_maps=True,
    complexity="O(T·(C+K)·K) time; O(K²) state per head",
    paper=PAPER,
    peer="fla-core naive_recurrent_simple_gla (g = -slope broadcast over T), fwd+bwd",
    export=ExportSupport(
        dynamic="impl='auto' exports the chunk path, whose Python loop over chunks fixes T "
        "(impl='native' exports a dynamic T as the custom op attnzoo::linear_chunk, not to ONNX)",
    ),
    flops=lightning_flops,
    # impl='native' is a float32/float64 kernel; impl='recurrent' rounds the state at every
    # token in bfloat16, so its error grows with T
    low_precision=LowPrecision(bfloat16=Tolerance(rtol=2e-2), refused_impls=("native",)),
)
class LightningAttention(StreamingMixer):
    cfg: LightningConfig
    state_type = LightningState

    def __init__(self, cfg: LightningConfig) -> None:
        super().__init__(cfg)
        H, K = cfg.heads, cfg.dim_head
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * H * K, bias=cfg.bias)
        self.out_proj = nn.Linear(H * K, cfg.d_model, bias=cfg.bias)
        slopes = lightning_slopes(H, cfg.layer_idx, cfg.num_layers)
        self.register_buffer("slopes", slopes.to(torch.get_default_dtype()), persistent=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        qkv = F.silu(self.qkv_proj(x))
        q, k, v = rearrange(qkv, "b t (three h k) -> three b t h k", three=3, h=self.cfg.heads)
        return q, k, v  # [B, T, H, K] each

    def _out(self, o: Tensor) -> Tensor:
        return self.out_proj(rearrange(o, "b t h k -> b t (h k)"))  # [B, T, H, K] -> [B, T, D]

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        q, k, v = self._project(x)
        decay = -self.slopes  # [H] log(lambda)
        kw = {"impl": self.cfg.impl, "chunk_size": self.cfg.chunk_size}
        return self._out(linear_attention(q, k, v, causal=True, decay=decay, **kw))

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """``lambda_h^(t-s) (q_t . k_s)`` for ``s <= t``: ``[B, H, T, T]``; exact."""
        q, k, v = self._project(x)
        a = linear_weights(q, k, causal=True, decay=-self.slopes)
        values = rearrange(v, "b s h k -> b h s k")
        return AttentionMaps(a, values, lambda o: self._out(rearrange(o, "b h t k -> b t h k")))

    # ---- streaming ------------------------------------------------------------------------
    def new_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> LightningState:
        H, K = self.cfg.heads, self.cfg.dim_head
        return LightningState(torch.zeros(batch_size, H, K, K, device=device, dtype=dtype))

    def advance(self, x_t: Tensor, state: LightningState) -> tuple[Tensor, LightningState]:
        q, k, v = self._project(x_t[:, None])  # [B, 1, H, K] each
        decay = -self.slopes.to(state.kv.dtype)
        o, kv, _ = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], state.kv, decay=decay)
        return self._out(o[:, None])[:, 0], LightningState(kv)  # [B, D]


def _fla_case(T: int, g: torch.Generator, impl: str, train: bool) -> peers.PeerPair:
    """fla's simple GLA with ``g = -slope`` at every step is Lightning's decay (fla's ``scale``
    multiplies q)."""
    peer = peers.peer_function("fla.ops.simple_gla.naive", "naive_chunk_simple_gla")
    decay, s = -torch.tensor(alibi_slopes(peers.SEQ_H)), peers.SEQ_K**-0.5
    return peers.seq_pair(
        lambda q, k, v: linear_attention(q, k, v, causal=True, decay=decay, scale=s, impl=impl),
        lambda q, k, v: peer(q, k, v, decay.expand(peers.SEQ_B, T, peers.SEQ_H), scale=s)[0],
        peers.seq_inputs(T, g), scan_flops(T, train), T, train,
    )  # fmt: skip


peers.register_impl_cases("lightning", "fla-naive-chunk-simple-gla", "fla naive_chunk_simple_gla",
                    _fla_case, LINEAR_VARIANTS, smoke_size=192)  # fmt: skip

register_strategy(StatePassing("state-lightning", "Lightning attention (per-head decay), states "
                               "combined across ranks",
                               decay=lambda H: -torch.tensor(alibi_slopes(H))))  # fmt: skip
