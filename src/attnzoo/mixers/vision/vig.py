"""ViG token mixer (V-VIG): 2-D locality injection + bidirectional gated linear attention.

Liao et al., "ViG: Linear-complexity Visual Sequence Learning with Gated Linear Attention", 2024.
https://arxiv.org/abs/2405.18425  Code: https://github.com/hustvl/ViG
(``classification/models/vig.py::GatedLinearAttention``). GLA: Yang et al., 2023,
https://arxiv.org/abs/2312.06635, https://github.com/fla-org/flash-linear-attention.

The mixer of a ViG block, in the order of the official ``GatedLinearAttention.forward``:

1. ``xs = SiLU(DWConv3x3(x))`` on the ``h x w`` grid (depthwise, no bias): the "2D locality
   injection" input; everything below reads ``xs``.
2. Flatten the grid row-major to ``T = h*w`` tokens. ``q, k, v = xs W_qkv`` (no bias; key width
   ``int(C * expand_k)``, value width ``C``).
3. ``gk = logsigmoid(W2 W1 xs + b2) / 16`` with ``2 * key_dim`` outputs: forward and backward
   gates ("direction-wise gating"); q/k/v are shared by both directions.
4. ``o = (GLA_fwd + GLA_bwd) / 2``: a left-to-right and a right-to-left scan over the tokens
   (ViG batches ``[x, flip(x)]`` into one causal call; :func:`attnzoo.ops.gla.bidirectional_gla`
   does the same).
5. "2D gating locality injection": ``g = sigmoid(xs W_g + b_g)``,
   ``o = RMSNorm_head(o) * g + RMSNorm_head(xs) * (1 - g)`` (two per-head RMSNorms with weights).
6. ``o_proj`` (no bias).

``expand_v`` is fixed at 1: the local branch ``xs`` (width C) is mixed head by head with the
attention output, so the value width must equal C, as in every ViG config. Weights follow ViG's
``reset_parameters`` (Xavier-uniform, gain ``2**-2.5``). Left out: the class token handling,
RoPE variants (off by default in ViG) and the block around the mixer (norms, MLP, drop path).
Works on any grid ``h x w``.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import GatedConfig
from attnzoo.ops.gla import bidirectional_gla, gla_flops, gla_weights
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport, LowPrecision

PAPER = Paper(
    title="ViG: Linear-complexity Visual Sequence Learning with Gated Linear Attention",
    year=2024,
    url="https://arxiv.org/abs/2405.18425",
    code="https://github.com/hustvl/ViG",
)


@dataclasses.dataclass(frozen=True)
class ViGConfig(GatedConfig):
    """ViG mixer: :class:`~attnzoo.mixers.common.GatedConfig` (value width C, two per-head
    RMSNorms) plus

    Attributes:
        conv_bias: bias on the depthwise 3x3 convolution (ViG's default: off).

    ``num_heads=None`` means :func:`~attnzoo.mixers.common.default_heads` (3 heads at ViG-T's
    C=192).
    """

    conv_bias: bool = False


def vig_flops(cfg: ViGConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """``T`` is the token count ``h*w``. Depthwise conv, projections and two GLA scans."""
    C, Kd, r, H = cfg.d_model, cfg.key_dim, cfg.gate_low_rank_dim, cfg.heads
    conv = 2 * batch * T * C * 9
    proj = 2 * batch * T * (C * (2 * Kd + C) + C * r + r * 2 * Kd + C * C + C * C)
    return conv + proj + 2 * gla_flops(batch, T, H, Kd // H, C // H)


@register_mixer(
    "vig",
    config=ViGConfig,
    family="linear",
    layout="grid2d",
    attention_maps=True,
    complexity="O(h·w·(c·K + K·V)) time with chunk length c; O(h·w·(K + c)) memory",
    paper=PAPER,
    peer="bidirectional scan = independent forward + reverse scans (ops tests)",
    export=ExportSupport(
        dynamic="its GLA over the h·w tokens: impl='auto' exports the chunk path, whose Python "
        "loop over chunks fixes h·w (impl='native' exports a dynamic h·w as the custom op "
        "attnzoo::gla_chunk, not to ONNX)",
    ),
    flops=vig_flops,
    low_precision=LowPrecision(refused_impls=("native",)),  # a float32/float64 kernel
)
class ViGMixer(Mixer):
    cfg: ViGConfig

    def __init__(self, cfg: ViGConfig) -> None:
        super().__init__(cfg)
        C, Kd, H = cfg.d_model, cfg.key_dim, cfg.heads
        self.dwconv = nn.Conv2d(C, C, kernel_size=3, padding=1, groups=C, bias=cfg.conv_bias)
        self.qkv_proj = nn.Linear(C, 2 * Kd + C, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(C, cfg.gate_low_rank_dim, bias=False),
            nn.Linear(cfg.gate_low_rank_dim, 2 * Kd, bias=True),
        )
        self.g_proj = nn.Linear(C, C, bias=True)
        self.g_norm = nn.RMSNorm(C // H, eps=cfg.norm_eps)  # attention branch
        self.l_norm = nn.RMSNorm(C // H, eps=cfg.norm_eps)  # local (conv) branch
        self.o_proj = nn.Linear(C, C, bias=False)
        gain = 2**-2.5
        for w in (
            self.qkv_proj.weight,
            self.dwconv.weight,
            self.g_proj.weight,
            self.o_proj.weight,
            self.gk_proj[0].weight,
            self.gk_proj[1].weight,
        ):
            nn.init.xavier_uniform_(w, gain=gain)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Shapes: x ``[B, h, w, C]`` -> xs ``[B, T, C]`` (row-major tokens), q, k, gates
        ``[B, T, H, K]``, v ``[B, T, H, C/H]``."""
        cfg = self.cfg
        H, Kd = cfg.heads, cfg.key_dim
        conv = self.dwconv(rearrange(x, "b h w c -> b c h w"))  # [B, C, h, w]
        xs = rearrange(F.silu(conv), "b c h w -> b (h w) c")  # [B, T, C], row-major tokens
        q, k, v = self.qkv_proj(xs).split([Kd, Kd, cfg.d_model], dim=-1)
        q, k, v = (rearrange(t, "b t (n d) -> b t n d", n=H) for t in (q, k, v))  # [B, T, H, *]
        gk = F.logsigmoid(self.gk_proj(xs)) / cfg.gate_logit_normalizer  # [B, T, 2*Kd]
        g_fwd, g_bwd = (rearrange(g, "b t (n d) -> b t n d", n=H) for g in gk.chunk(2, dim=-1))
        return xs, q, k, v, g_fwd, g_bwd

    def _output(self, o: Tensor, xs: Tensor, w: int) -> Tensor:
        """The 2-D gating locality injection and ``o_proj``: ``o [B, T, H, C/H] -> [B, h, w, C]``."""
        H = self.cfg.heads
        g = rearrange(self.g_proj(xs).sigmoid(), "b t (n d) -> b t n d", n=H)
        loc = self.l_norm(rearrange(xs, "b t (n d) -> b t n d", n=H))  # [B, T, H, C/H]
        o = self.g_norm(o) * g + loc * (1 - g)
        y = self.o_proj(rearrange(o, "b t n d -> b t (n d)"))  # [B, T, C]
        return rearrange(y, "b (h w) c -> b h w c", w=w)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        xs, q, k, v, g_fwd, g_bwd = self._project(x)
        cfg = self.cfg
        o = bidirectional_gla(q, k, v, g_fwd, g_bwd, impl=cfg.impl, chunk_size=cfg.chunk_size)
        return self._output(o, xs, x.shape[2])

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """The mean of both scans' implicit weights, ``[B, H, h*w, h*w]``; exact."""
        xs, q, k, v, g_fwd, g_bwd = self._project(x)
        a = (gla_weights(q, k, g_fwd) + gla_weights(q, k, g_bwd, reverse=True)) / 2
        finish = lambda o: self._output(rearrange(o, "b h t v -> b t h v"), xs, x.shape[2])  # noqa: E731
        return AttentionMaps(a, rearrange(v, "b s h v -> b h s v"), finish)
