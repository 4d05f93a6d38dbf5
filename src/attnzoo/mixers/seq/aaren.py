"""Aaren: attention as a many-to-many RNN with a learned query.

Feng, Tung, Hajimirsadeghi, Ahmed, Bengio and Mori, "Attention as an RNN", 2024.
https://arxiv.org/abs/2405.13956  Code: none released by the authors; an unofficial TensorFlow
implementation is https://github.com/claCase/Attention-as-RNN (``src/layers.py``).

Each head ``h`` owns a learned query ``q_h`` that does not depend on the input. Keys and values
are projections of ``x``; the scores are ``s_t = scale * q_h . k_t`` and the output at ``t`` is
softmax attention of ``q_h`` over tokens ``1..t`` (:func:`attnzoo.ops.aaren.aaren_scan`), so the
mixer is causal by construction and supports only the ``causal-self`` pattern. Streaming keeps
the constant-size summary ``(m, u, w)`` of the prefix (running max, normaliser, numerator).

Differences from the unofficial code, kept on purpose: scores are scaled by ``K^-0.5`` (set
``scale=1.0`` for the unscaled ``q . k``), k and v are plain linear projections (that code puts
a SiLU on them and sums the heads instead of projecting them out), and there is no dropout.

Work: ``O(T log T · H · K)`` for the ``scan`` form (``O(log T)`` depth), ``O(T · H · K)`` for the
``recurrent`` form; streaming state ``O(H · K)`` per sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import StreamingMixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.aaren import aaren_flops, aaren_scan, aaren_update, empty_state
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="Attention as an RNN",
    year=2024,
    url="https://arxiv.org/abs/2405.13956",
    code="none official; unofficial TF: https://github.com/claCase/Attention-as-RNN",
)


@dataclasses.dataclass(frozen=True)
class AarenConfig(HeadsConfig):
    """Aaren layer.

    Attributes:
        num_heads: heads, each with its own learned query; ``None`` means ``default_heads``.
        head_dim: per-head width of q, k and v; ``None`` means ``d_model // num_heads``.
        kv_bias: bias on the k/v projections.
        scale: score scale; ``None`` means ``head_dim ** -0.5``.
        impl: ``auto`` | ``reference`` | ``scan`` | ``recurrent`` (see ``aaren_scan``).
    """

    head_dim: int | None = limit(None, ge=1)
    kv_bias: bool = False
    scale: float | None = limit(None, finite=True)
    impl: Literal["auto", "reference", "scan", "recurrent"] = "auto"

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.heads

    @property
    def score_scale(self) -> float:
        return self.scale if self.scale is not None else self.dim_head**-0.5


@dataclasses.dataclass
class AarenState:
    """Summary of the prefix seen so far (the identity ``(-inf, 0, 0)`` before any token).

    Shapes:
        m ``[B, H]`` running max, u ``[B, H]`` normaliser, w ``[B, H, K]`` numerator;
        ``position`` counts tokens seen.
    """

    m: Tensor
    u: Tensor
    w: Tensor
    position: int = 0


def aaren_mixer_flops(cfg: AarenConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """k/v and output projections, the scores ``q . k_t`` and :func:`aaren_flops`."""
    H, K, D = cfg.heads, cfg.dim_head, cfg.d_model
    proj = 2 * batch * T * (D * 2 * H * K + H * K * D)
    scores = 2 * batch * T * H * K
    return proj + scores + aaren_flops(batch, T, H, K, cfg.impl)


@register_mixer(
    "aaren",
    config=AarenConfig,
    family="recurrent",
    patterns=("causal-self",),
    masks=("causal",),
    state="constant",
    complexity="O(T log T·H·K) work, O(log T) depth (scan); O(T·H·K) (recurrent); O(H·K) state",
    paper=PAPER,
    peer="torch SDPA with the learned query repeated at every position and a causal mask",
    export=ExportSupport(
        dynamic="the scan runs ceil(log2 T) Python steps, so the program holds for T in the "
        "export's power-of-two range only (T=7: 5..8)"
    ),
    flops=aaren_mixer_flops,
)
class Aaren(StreamingMixer):
    cfg: AarenConfig
    state_type = AarenState

    def __init__(self, cfg: AarenConfig) -> None:
        super().__init__(cfg)
        H, K = cfg.heads, cfg.dim_head
        self.query = nn.Parameter(torch.randn(H, K))  # [H, K], one learned query per head
        self.kv_proj = nn.Linear(cfg.d_model, 2 * H * K, bias=cfg.kv_bias)
        self.out_proj = nn.Linear(H * K, cfg.d_model)

    def _scores_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: x ``[B, T, D]`` -> s ``[B, T, H]``, v ``[B, T, H, K]``."""
        k, v = rearrange(self.kv_proj(x), "b t (two h k) -> two b t h k", two=2, h=self.cfg.heads)
        s = torch.einsum("bthk,hk->bth", k, self.query) * self.cfg.score_scale
        return s, v

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``. Only ``causal-self``; masks: causal."""
        s, v = self._scores_values(x)
        o = aaren_scan(s, v, impl=self.cfg.impl)  # [B, T, H, K]
        return self.out_proj(rearrange(o, "b t h k -> b t (h k)"))

    # ---- streaming ------------------------------------------------------------------------
    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> AarenState:
        """The empty prefix."""
        H, K = self.cfg.heads, self.cfg.dim_head
        return AarenState(*empty_state(batch_size, H, K, device=device, dtype=dtype))

    def advance(self, x_t: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        s, v = self._scores_values(x_t[:, None])  # [B, 1, H], [B, 1, H, K]
        o_t, (m, u, w) = aaren_update((state.m, state.u, state.w), s[:, 0], v[:, 0])
        return self.out_proj(rearrange(o_t, "b h k -> b (h k)")), AarenState(m, u, w)
