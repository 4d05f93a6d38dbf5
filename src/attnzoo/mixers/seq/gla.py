"""Gated linear attention layer (S-GLA), causal and ViG-style bidirectional.

Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training", 2023.
https://arxiv.org/abs/2312.06635  Code: https://github.com/fla-org/flash-linear-attention
(``fla/layers/gla.py::GatedLinearAttention``). Bidirectional form: Liao et al., "ViG:
Linear-complexity Visual Sequence Learning with Gated Linear Attention", 2024,
https://arxiv.org/abs/2405.18425, code https://github.com/hustvl/ViG.

The layer, as in fla's ``GatedLinearAttention`` with its defaults:

- ``q = x W_q``, ``k = x W_k`` (width ``key_dim = int(d_model * expand_k)``), ``v = x W_v``
  (``value_dim = int(d_model * expand_v)``), no biases; ``expand_k=0.5``, ``expand_v=1.0``
  (also ViG-T's values).
- log forget gates from a low-rank projection: ``gk = logsigmoid(W2 W1 x + b2) / 16``
  (``gate_low_rank_dim=16``, ``gate_logit_normalizer=16``); one gate per key channel.
- ``o = gated_linear_attention(q, k, v, gk)`` per head (scale ``1/sqrt(head_k_dim)``).
- output: ``o_proj(RMSNorm_head(o) * swish(x W_g))``, RMSNorm over each head's ``V`` channels
  with a learned weight (fla's fused ``FusedRMSNormGated`` computes the same thing).

Patterns: ``causal-self`` (state ``[H, K, V]`` per sequence, ``step`` equals ``forward``) and
``noncausal-self`` = ViG's bidirectional form: the gate projection gives ``2 * key_dim`` (forward
and backward gates, "direction-wise gating"), q/k/v are shared and
``o = (o_fwd + o_bwd) / 2`` where ``o_bwd`` is the right-to-left scan (ViG runs it on the flipped
sequence). The bidirectional form cannot stream.

Left out (fla options off by default): short convolutions, feature maps, grouped k/v heads,
``clamp_min``, padding masks / varlen. Weights use PyTorch's default initialisation (fla leaves
initialisation to the model's ``_init_weights``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo import peers
from attnzoo.config import limit
from attnzoo.distributed.strategies import StatePassing, register_strategy
from attnzoo.mixers.base import AttentionMaps, StreamingMixer
from attnzoo.mixers.common import GatedConfig
from attnzoo.ops.chunks import chunk_flops
from attnzoo.ops.gla import (
    bidirectional_gla,
    gated_linear_attention,
    gla_flops,
    gla_step,
    gla_weights,
)
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport, LowPrecision, Tolerance

PAPER = Paper(
    title="Gated Linear Attention Transformers with Hardware-Efficient Training",
    year=2023,
    url="https://arxiv.org/abs/2312.06635",
    code="https://github.com/fla-org/flash-linear-attention",
)


@dataclasses.dataclass(frozen=True)
class GLAConfig(GatedConfig):
    """Gated linear attention layer: :class:`~attnzoo.mixers.common.GatedConfig` plus

    Attributes:
        expand_v: ``value_dim = int(d_model * expand_v)``.
    """

    expand_v: float = limit(1.0, gt=0)

    @property
    def value_dim(self) -> int:
        return int(self.d_model * self.expand_v)


def gla_mixer_flops(cfg: GLAConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """Projections (q, k, v, output gate, low-rank gate, output) plus the recurrence (twice when
    bidirectional)."""
    D, Kd, Vd, r = cfg.d_model, cfg.key_dim, cfg.value_dim, cfg.gate_low_rank_dim
    gates = Kd if cfg.causal else 2 * Kd
    proj = 2 * batch * T * (D * (2 * Kd + 2 * Vd) + D * r + r * gates + Vd * D)
    directions = 1 if cfg.causal else 2
    H = cfg.heads
    return proj + directions * gla_flops(batch, T, H, Kd // H, Vd // H)


@dataclasses.dataclass
class GLAState:
    """Streaming state of the causal layer. Shapes: ``state [B, H, K, V]``."""

    state: Tensor
    position: int = 0


@register_mixer(
    "gla",
    config=GLAConfig,
    family="linear",
    patterns=("noncausal-self", "causal-self"),
    state="constant",
    attention_maps=True,
    complexity="O(T·(C·K + K·V)) time with chunk C; O(T·(K + C)) memory; O(K·V) state",
    paper=PAPER,
    peer="fla.ops.gla.naive.naive_recurrent_gla, fwd+bwd (op level)",
    export=ExportSupport(
        dynamic="impl='auto' exports the chunk path, whose Python loop over chunks fixes T "
        "(impl='native' exports a dynamic T as the custom op attnzoo::gla_chunk, not to ONNX)",
    ),
    flops=gla_mixer_flops,
    # impl='native' is a float32/float64 kernel; impl='recurrent' rounds the state at every
    # token in bfloat16, so its error grows with T
    low_precision=LowPrecision(bfloat16=Tolerance(rtol=2e-2), refused_impls=("native",)),
)
class GatedLinearAttention(StreamingMixer):
    cfg: GLAConfig
    state_type = GLAState

    def __init__(self, cfg: GLAConfig) -> None:
        super().__init__(cfg)
        D, Kd, Vd = cfg.d_model, cfg.key_dim, cfg.value_dim
        self.q_proj = nn.Linear(D, Kd, bias=False)
        self.k_proj = nn.Linear(D, Kd, bias=False)
        self.v_proj = nn.Linear(D, Vd, bias=False)
        self.g_proj = nn.Linear(D, Vd, bias=False)
        gates = Kd if cfg.causal else 2 * Kd  # bidirectional: forward and backward gates
        self.gk_proj = nn.Sequential(
            nn.Linear(D, cfg.gate_low_rank_dim, bias=False),
            nn.Linear(cfg.gate_low_rank_dim, gates, bias=True),
        )
        self.g_norm = nn.RMSNorm(Vd // cfg.heads, eps=cfg.norm_eps)
        self.o_proj = nn.Linear(Vd, D, bias=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """Shapes: x ``[..., D]`` -> q, k ``[..., H, K]``; v ``[..., H, V]``; the gates, one
        ``[..., H, K]`` per direction."""
        H = self.cfg.heads
        q, k, v = (
            rearrange(p(x), "... (h d) -> ... h d", h=H)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        gk = F.logsigmoid(self.gk_proj(x)) / self.cfg.gate_logit_normalizer  # [..., G]
        gates = tuple(
            rearrange(g, "... (h d) -> ... h d", h=H) for g in gk.chunk(2 - self.cfg.causal, -1)
        )
        return q, k, v, gates

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        g = rearrange(self.g_proj(x), "... (h d) -> ... h d", h=self.cfg.heads)  # [..., H, V]
        o = self.g_norm(o) * F.silu(g)
        return self.o_proj(rearrange(o, "... h d -> ... (h d)"))

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        q, k, v, gates = self._project(x)
        kw = {"impl": self.cfg.impl, "chunk_size": self.cfg.chunk_size}
        if self.cfg.causal:
            o = gated_linear_attention(q, k, v, *gates, **kw)  # [B, T, H, V]
        else:
            o = bidirectional_gla(q, k, v, *gates, **kw)  # [B, T, H, V]
        return self._output(o, x)

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """The implicit weights ``[B, H, T, T]`` (bidirectional: the mean of both scans'); exact."""
        q, k, v, gates = self._project(x)
        a = gla_weights(q, k, gates[0])
        if not self.cfg.causal:
            a = (a + gla_weights(q, k, gates[1], reverse=True)) / 2
        finish = lambda o: self._output(rearrange(o, "b h t v -> b t h v"), x)  # noqa: E731
        return AttentionMaps(a, rearrange(v, "b s h v -> b h s v"), finish)

    # ---- streaming (causal-self) ----------------------------------------------------------
    def stream_check(self) -> None:
        if not self.cfg.causal:
            raise ValueError(
                "gla: step() streams the causal-self pattern; the bidirectional (causal=False) "
                "form needs the whole sequence"
            )

    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> GLAState:
        H = self.cfg.heads
        shape = (batch_size, H, self.cfg.key_dim // H, self.cfg.value_dim // H)
        return GLAState(torch.zeros(shape, device=device, dtype=dtype))

    def advance(self, x_t: Tensor, state: GLAState) -> tuple[Tensor, GLAState]:
        q, k, v, (gk,) = self._project(x_t)  # [B, H, K], [B, H, K], [B, H, V], [B, H, K]
        o, s = gla_step(q, k, v, gk, state.state, q.shape[-1] ** -0.5)  # o [B, H, V]
        return self._output(o, x_t), GLAState(s)


# ---- peer: fla-core's token loop (fla has no naive chunked GLA) --------------------------------
def gla_train_flops(T: int, C: int = 64) -> int:
    """FLOPs (2 per multiply-add) of the native GLA forward plus backward at the peer cases'
    shape: per chunk of C rows, the forward's ``C²(K + V) + 2CKV`` and the backward's
    ``3C²(K + V) + 5CKV`` (its forward scan for dq: ``do v^T``, ``do S^T``, ``P (k e^-b)``, the
    state; its reverse scan: the scores, ``do v^T``, ``A^T do``, two reads and one update of its
    state, ``P^T (q e^b)``)."""
    N, K = -(-T // C), peers.SEQ_K
    return 2 * peers.SEQ_B * peers.SEQ_H * N * C * (4 * C * (K + K) + 7 * K * K)


def _fla_case(T: int, g: torch.Generator, impl: str, train: bool) -> peers.PeerPair:
    q, k, v = peers.seq_inputs(T, g)
    gk = F.logsigmoid(torch.randn(q.shape, generator=g)) / 16  # GLA's gate parametrisation
    peer = peers.peer_function("fla.ops.gla.naive", "naive_recurrent_gla")
    flops = (
        gla_train_flops(T)
        if train
        else chunk_flops(peers.SEQ_B, peers.SEQ_H, peers.SEQ_K, peers.SEQ_K, T, 64)
    )
    return peers.seq_pair(
        lambda q, k, v, gk: gated_linear_attention(q, k, v, gk, impl=impl),
        lambda q, k, v, gk: peer(q, k, v, gk)[0],
        [q, k, v, gk], flops, T, train,
    )  # fmt: skip


peers.register_impl_cases(
    "gla", "fla-naive-recurrent", "fla naive_recurrent_gla", _fla_case,
    (("chunk", False, (2048, 8192), (2048,)), ("native", False, (2048, 8192), (2048,)),
     ("native", True, (2048, 4096), (2048,))),
    notes="peer is a token loop (fla has no naive chunked GLA)", rtol=1e-3, smoke_size=100,
)  # fmt: skip

# ---- context parallelism: gated states passed across ranks ---------------------------------------
register_strategy(StatePassing(
    "state-gla", "gated linear attention (data-dependent gates), states combined across ranks",
    kind="gated", gates=lambda g, shape: F.logsigmoid(torch.randn(shape, generator=g)) / 16,
))  # fmt: skip
