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
import math
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.aaren import aaren_flops, aaren_scan, aaren_update, empty_state
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

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

    num_heads: int | None = None
    head_dim: int | None = None
    kv_bias: bool = False
    scale: float | None = None
    impl: Literal["auto", "reference", "scan", "recurrent"] = "auto"

    def validate(self) -> None:
        owner = self._owner()
        for name in ("num_heads", "head_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
        if self.head_dim is None and self.d_model % self.heads != 0:
            raise ValueError(
                f"{owner}: d_model={self.d_model} is not divisible by num_heads={self.heads}; "
                "pick num_heads dividing d_model or set head_dim"
            )
        if self.scale is not None and not math.isfinite(self.scale):
            raise ValueError(f"{owner}: scale must be a finite float or None, got {self.scale!r}")

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


def aaren_mixer_flops(
    cfg: AarenConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """k/v and output projections, the scores ``q . k_t`` and :func:`aaren_flops`."""
    H, K, D = cfg.heads, cfg.dim_head, cfg.d_model
    proj = 2 * batch * T * (D * 2 * H * K + H * K * D)
    scores = 2 * batch * T * H * K
    return proj + scores + aaren_flops(batch, T, H, K, cfg.impl)


@register_mixer(
    "aaren",
    config=AarenConfig,
    family="recurrent",
    dims=1,
    patterns=("causal-self",),
    masks=("causal",),
    state="constant",
    exact=False,
    complexity="O(T log T·H·K) work, O(log T) depth (scan); O(T·H·K) (recurrent); O(H·K) state",
    paper=PAPER,
    peer="torch SDPA with the learned query repeated at every position and a causal mask",
    flops=aaren_mixer_flops,
)
class Aaren(Mixer):
    cfg: AarenConfig

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

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``. Only ``causal-self``; masks: causal."""
        self.pattern_of(context)
        self.check_input(x, context)
        self.check_mask(mask)
        s, v = self._scores_values(x)
        o = aaren_scan(s, v, impl=self.cfg.impl)  # [B, T, H, K]
        return self.out_proj(rearrange(o, "b t h k -> b t (h k)"))

    # ---- streaming ------------------------------------------------------------------------
    def init_state(self, batch_size: int, **kwargs: Any) -> AarenState:
        """The empty prefix. Keyword options: ``device``, ``dtype``."""
        device, dtype = self.state_options(batch_size, kwargs)
        m, u, w = empty_state(
            batch_size, self.cfg.heads, self.cfg.dim_head, device=device, dtype=dtype
        )
        return AarenState(m, u, w)

    def step(self, x_t: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        """One token. Shapes: x_t ``[B, D]`` -> ``[B, D]``; equals ``forward(x)[:, t]``."""
        self.check_step(x_t, state, AarenState, "m")
        s, v = self._scores_values(x_t[:, None])  # [B, 1, H], [B, 1, H, K]
        o_t, (m, u, w) = aaren_update((state.m, state.u, state.w), s[:, 0], v[:, 0])
        y = self.out_proj(rearrange(o_t, "b h k -> b (h k)"))  # [B, D]
        return y, AarenState(m, u, w, state.position + 1)
