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
from typing import ClassVar, Literal

from torch import Tensor

from attnzoo.config import limit
from attnzoo.mixers.common import AttentionConfig, AttentionMixer, projection_flops
from attnzoo.ops.lla import lla_flops, local_linear_attention
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

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

    ridge: float = limit(1.0, gt=0, finite=True)
    scale: float | None = limit(None, finite=True)
    impl: Literal["auto", "reference", "blocked"] = "auto"
    block_size: int = limit(64, ge=1)
    mask_options: ClassVar[tuple[str, ...]] = ()


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
    patterns=("noncausal-self", "causal-self", "noncausal-cross"),
    state="growing",
    complexity="O(T·S·(K²+V·K) + T·K³) time; O(S·K·(K+V) + block·S) memory per head",
    paper=PAPER,
    peer="explicit weighted ridge least-squares solve per query (lstsq); SDPA at ridge -> inf",
    export=ExportSupport(
        dynamic="the blocked path loops in Python over the ceil(T / block_size) query blocks, "
        "which fixes T",
        onnx="torch.linalg.solve (aten._linalg_solve_ex, the per-query ridge solve) has no ONNX "
        "translation in the dynamo exporter",
    ),
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
