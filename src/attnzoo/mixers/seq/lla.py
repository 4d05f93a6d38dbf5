"""Local Linear Attention (LLA): each query's output is the intercept of a local linear fit.

Zuo et al., "Local Linear Attention", 2025. https://arxiv.org/abs/2510.01450
Code: https://github.com/Yifei-Zuo/Flash-LLA holds only a README ("code will be released
soon"); this mixer is written from the paper's objective (math in :mod:`attnzoo.ops.lla`).

Per head, with softmax kernel weights ``s_ij`` over the visible keys::

    b_i = argmin_b min_W  1/2 sum_j s_ij ||v_j - b - W (k_j - q_i)||^2 + ridge ||W||_F^2

which has the closed form ``b_i = sum_j s_ij v_j [1 - (k_j - mu_i)^T rho_i]`` with
``rho_i = (Sigma_i + 2 ridge I)^{-1} (mu_i - q_i)``. Softmax attention is the limit
``ridge -> inf``. The ridge is written against the *normalised* weights (the paper's
unnormalised ``exp`` weights make it depend on the scores' absolute size); see the op's docstring.

Projections, grouped-query heads and ``qk_norm`` come from :class:`AttentionMixer`; masks are
full and causal only. Streaming uses the growing KV cache of :class:`AttentionMixer`: the weights
depend on the current query through ``exp``, so no constant-size state exists (as for softmax).
Time ``O(T·S·(K^2 + V·K) + T·K^3)`` per head; memory ``O(S·K·(K + V) + block·S)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from torch import Tensor

from attnzoo.mixers.common import AttentionConfig, AttentionMixer, projection_flops
from attnzoo.ops.lla import lla_flops, local_linear_attention
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="Local Linear Attention",
    year=2025,
    url="https://arxiv.org/abs/2510.01450",
    code="https://github.com/Yifei-Zuo/Flash-LLA (README only; code not released)",
)


@dataclasses.dataclass(frozen=True)
class LLAConfig(AttentionConfig):
    """:class:`AttentionConfig` (without ``window`` / ``prefix`` / ``block``) plus:

    Attributes:
        ridge: ``lambda > 0``, the penalty on the local slope (normalised-weight convention).
        scale: score scale of the kernel weights; ``None`` means ``head_dim ** -0.5``.
        impl: ``auto`` | ``reference`` | ``blocked`` (see ``local_linear_attention``).
        block_size: queries per block of the ``blocked`` path.
    """

    ridge: float = 1.0
    scale: float | None = None
    impl: Literal["auto", "reference", "blocked"] = "auto"
    block_size: int = 64

    def validate(self) -> None:
        super().validate()
        owner = self._owner()
        for name in ("window", "prefix", "block"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{owner}: {name}={getattr(self, name)} is not supported; "
                    "local linear attention takes only the full and causal masks"
                )
        if not math.isfinite(self.ridge) or self.ridge <= 0:
            raise ValueError(f"{owner}: ridge must be a finite float > 0, got {self.ridge!r}")
        if self.scale is not None and not math.isfinite(self.scale):
            raise ValueError(f"{owner}: scale must be a finite float or None, got {self.scale!r}")
        if self.block_size < 1:
            raise ValueError(f"{owner}: block_size must be >= 1, got {self.block_size}")


def lla_mixer_flops(cfg: LLAConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """Projections plus :func:`attnzoo.ops.lla.lla_flops`."""
    S_ = T if S is None else S
    H, K = cfg.heads, cfg.dim_head
    causal = mask.causal if mask is not None else cfg.causal
    proj = projection_flops(cfg, batch, T, S)
    return proj + lla_flops(batch, H, K, K, T, S_, causal)


@register_mixer(
    "lla",
    config=LLAConfig,
    family="other",
    dims=1,
    patterns=("noncausal-self", "causal-self", "noncausal-cross"),
    masks=("full", "causal"),
    state="growing",
    exact=False,
    complexity="O(T·S·(K²+V·K) + T·K³) time; O(S·K·(K+V) + block·S) memory per head",
    paper=PAPER,
    peer="explicit weighted ridge least-squares solve per query (lstsq); SDPA at ridge -> inf",
    flops=lla_mixer_flops,
)
class LocalLinearAttention(AttentionMixer):
    cfg: LLAConfig

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        return local_linear_attention(
            q,
            k,
            v,
            causal=mask.causal,
            ridge=self.cfg.ridge,
            scale=self.cfg.scale,
            impl=self.cfg.impl,
            block_size=self.cfg.block_size,
        )  # [B, T, H, K]
