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
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.gla import bidirectional_gla, gated_linear_attention, gla_flops, gla_step
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="Gated Linear Attention Transformers with Hardware-Efficient Training",
    year=2023,
    url="https://arxiv.org/abs/2312.06635",
    code="https://github.com/fla-org/flash-linear-attention",
)


@dataclasses.dataclass(frozen=True)
class GLAConfig(HeadsConfig):
    """Gated linear attention layer.

    Attributes:
        num_heads: heads; ``None`` means :func:`~attnzoo.mixers.common.default_heads`.
        expand_k: ``key_dim = int(d_model * expand_k)`` (q, k and gate width).
        expand_v: ``value_dim = int(d_model * expand_v)``.
        gate_low_rank_dim: inner width of the low-rank gate projection.
        gate_logit_normalizer: ``gk = logsigmoid(.) / gate_logit_normalizer``.
        norm_eps: epsilon of the per-head RMSNorm.
        impl: op path, ``auto`` (``native`` on CPU when it builds, else ``chunk``) |
            ``reference`` | ``chunk`` | ``native`` (fused C++ CPU forward) | ``recurrent``.
        chunk_size: chunk length of the ``chunk`` path.
    """

    num_heads: int | None = None
    expand_k: float = 0.5
    expand_v: float = 1.0
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    norm_eps: float = 1e-5
    impl: Literal["auto", "reference", "chunk", "native", "recurrent"] = "auto"
    chunk_size: int = 64

    def validate(self) -> None:
        check_gla_config(self, self._owner())

    @property
    def key_dim(self) -> int:
        return int(self.d_model * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.d_model * self.expand_v)


def check_gla_config(cfg: Any, owner: str) -> None:
    """Value checks shared by the GLA and ViG configs (errors name the field and value)."""
    for name in ("num_heads", "gate_low_rank_dim", "chunk_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    for name in ("gate_logit_normalizer", "norm_eps"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {getattr(cfg, name)}")
    for name, dim in (("key_dim", cfg.key_dim), ("value_dim", cfg.value_dim)):
        if dim < 1 or dim % cfg.heads != 0:
            raise ValueError(
                f"{owner}: {name}={dim} (d_model={cfg.d_model} times its expand ratio) must be a "
                f"positive multiple of num_heads={cfg.heads}"
            )


def gla_mixer_flops(cfg: GLAConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
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
    dims=1,
    patterns=("noncausal-self", "causal-self"),
    masks=("full", "causal"),
    state="constant",
    exact=False,
    complexity="O(T·(C·K + K·V)) time with chunk C; O(T·(K + C)) memory; O(K·V) state",
    paper=PAPER,
    peer="fla.ops.gla.naive.naive_recurrent_gla, fwd+bwd (op level)",
    flops=gla_mixer_flops,
)
class GatedLinearAttention(Mixer):
    cfg: GLAConfig

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

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        H = self.cfg.heads
        q, k, v = (
            rearrange(p(x), "... (h d) -> ... h d", h=H)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # q, k [..., H, K]; v [..., H, V]
        gk = F.logsigmoid(self.gk_proj(x)) / self.cfg.gate_logit_normalizer  # [..., G]
        return q, k, v, gk

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        g = rearrange(self.g_proj(x), "... (h d) -> ... h d", h=self.cfg.heads)  # [..., H, V]
        o = self.g_norm(o) * F.silu(g)
        return self.o_proj(rearrange(o, "... h d -> ... (h d)"))

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        q, k, v, gk = self._project(x)
        H, kw = self.cfg.heads, {"impl": self.cfg.impl, "chunk_size": self.cfg.chunk_size}
        if self.cfg.causal:
            gk = rearrange(gk, "b t (h d) -> b t h d", h=H)
            o = gated_linear_attention(q, k, v, gk, **kw)  # [B, T, H, V]
        else:
            g_fwd, g_bwd = (rearrange(g, "b t (h d) -> b t h d", h=H) for g in gk.chunk(2, dim=-1))
            o = bidirectional_gla(q, k, v, g_fwd, g_bwd, **kw)  # [B, T, H, V]
        return self._output(o, x)

    # ---- streaming (causal-self) ----------------------------------------------------------
    def init_state(self, batch_size: int, **kwargs: Any) -> GLAState:
        """Zero state. Keyword options: ``device``, ``dtype``."""
        if not self.cfg.causal:
            raise ValueError(
                "gla: step() streams the causal-self pattern; the bidirectional (causal=False) "
                "form needs the whole sequence"
            )
        device, dtype = self.state_options(batch_size, kwargs)
        H = self.cfg.heads
        shape = (batch_size, H, self.cfg.key_dim // H, self.cfg.value_dim // H)
        return GLAState(torch.zeros(shape, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: GLAState) -> tuple[Tensor, GLAState]:
        """One token. Shapes: x_t ``[B, D]`` -> ``[B, D]``; equals ``forward(x)[:, t]``."""
        self.check_step(x_t, state, GLAState, "state")
        q, k, v, gk = self._project(x_t)  # [B, H, K], [B, H, K], [B, H, V], [B, Kd]
        gk = rearrange(gk, "b (h d) -> b h d", h=self.cfg.heads)
        o, s = gla_step(q, k, v, gk, state.state, q.shape[-1] ** -0.5)  # o [B, H, V]
        return self._output(o, x_t), GLAState(s, state.position + 1)
