"""MOAT token mixer (V-MOAT): a mobile convolution (MBConv) before multi-head self-attention.

Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models",
2022. https://arxiv.org/abs/2210.01820  Code (TensorFlow): https://github.com/google-research/deeplab2
(``model/layers/moat_blocks.py``: ``MOATBlock``; ``model/layers/moat_attention.py``:
``Attention``). Not in timm 1.0.31 (its ``timm.models.maxxvit`` has related MBConv and
attention pieces, not this block); the tests compare against a naive formulation written out
with torch ops and explicit softmax attention.

The official ``MOATBlock.call`` at stride 1 with unchanged width, on ``x [B, h, w, C]``:

1. MBConv, which replaces the transformer MLP and comes first::

       t = GELU(BN(DW_kxk(GELU(BN(Conv1x1_{C -> rC}(BN(x)))))))   # expand and DW: no bias
       t = SE(t)                                                  # optional; off in MOAT
       y = x + Conv1x1_{rC -> C}(t)                               # biased "shrink" conv

2. attention: ``z = y + Attn(LN(y))``, where ``Attn`` is multi-head softmax attention with
   biased q/k/v/o projections, head width 32 (``num_heads = C // 32``), scores scaled by
   ``head_dim**-0.5`` and a learned 2-D relative position bias (``2d_multi_head``) added to the
   logits. With ``window_size`` set the grid is split into non-overlapping
   ``window x window`` windows and each attends within itself; ``None`` is global attention
   (the official classification setting, where the window is the whole feature map).

The mixer returns ``z - x`` (computed as ``MBConv(x) + Attn(LN(y))``), so a residual wrapper
``x + mixer(x)`` equals the official block; there is no MLP to add (MOAT has none).

Relative position bias: a table ``E [heads, 2P-1, 2P-1]`` (``P = pos_embed_size``, official 7)
is resized bilinearly (half-pixel centres, no antialiasing: ``tf.image.resize``'s default,
``F.interpolate(..., align_corners=False)`` here) to ``[2a-1, 2b-1]`` for an ``a x b``
attention area (the window, or the whole ``h x w`` grid), then the logit of query ``(i, j)``
and key ``(p, q)`` gets ``E'[p - i + a - 1, q - j + b - 1]``.

Defaults follow the official code: BatchNorm epsilon 1e-3 and momentum 0.01 (Keras' 0.99),
LayerNorm epsilon 1e-5, exact (erf) GELU, ``N(0, 0.02)`` weights and zero biases. Left out:
stride 2 (the average-pool / 1x1 shortcut), width changes, drop path. Parameter layout vs the
official: ``q/k/v`` kernels ``[C, heads, head]`` are one ``qkv`` linear here (rows: q, k, v,
each head-major), ``o`` ``[heads, head, C]`` is ``o_proj``; conv kernels are torch's
``[out, in/groups, k, k]``. BatchNorm: ``train()`` uses batch statistics, compare in
``eval()``. Any grid in global mode; windowed mode needs ``h`` and ``w`` divisible by the
window (else ``ValueError``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import MixerConfig
from attnzoo.mixers.base import Mixer
from attnzoo.ops.common import attention_flops
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models",
    year=2022,
    url="https://arxiv.org/abs/2210.01820",
    code="https://github.com/google-research/deeplab2",
)


@dataclasses.dataclass(frozen=True)
class MOATConfig(MixerConfig):
    """MOAT block mixer. ``d_model`` is the channel count C.

    Attributes:
        expansion_rate: MBConv hidden width ``expansion_rate * C`` (official: 4).
        kernel_size: depthwise kernel (official: 3); odd (same-size padding).
        se_ratio: squeeze-and-excitation bottleneck ``max(1, int(C * se_ratio))``, or ``None``
            for none (the MOAT block has none; deeplab2's plain MBConv block uses 0.25).
        head_dim: per-head width (official ``head_size``: 32).
        num_heads: heads; ``None`` means ``max(1, C // head_dim)`` (official ``C // 32``).
        window_size: side of the square attention windows; ``None`` for global attention.
        rel_pos: add the 2-D relative position bias (official ``2d_multi_head``).
        pos_embed_size: ``P`` of the ``[heads, 2P-1, 2P-1]`` bias table (official: 7).
        bn_eps: BatchNorm epsilon (Keras default 1e-3).
        ln_eps: LayerNorm epsilon before attention (official 1e-5).
    """

    expansion_rate: int = 4
    kernel_size: int = 3
    se_ratio: float | None = None
    head_dim: int = 32
    num_heads: int | None = None
    window_size: int | None = None
    rel_pos: bool = True
    pos_embed_size: int = 7
    bn_eps: float = 1e-3
    ln_eps: float = 1e-5

    def validate(self) -> None:
        owner = self._owner()
        for name in ("expansion_rate", "head_dim", "num_heads", "window_size", "pos_embed_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"{owner}: kernel_size must be a positive odd int (same-size padding), "
                f"got {self.kernel_size}"
            )
        if self.se_ratio is not None and not 0 < self.se_ratio <= 1:
            raise ValueError(f"{owner}: se_ratio must be in (0, 1] or None, got {self.se_ratio}")
        for name in ("bn_eps", "ln_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{owner}: {name} must be > 0, got {getattr(self, name)}")

    @property
    def heads(self) -> int:
        return (
            self.num_heads if self.num_heads is not None else max(1, self.d_model // self.head_dim)
        )

    @property
    def inner(self) -> int:
        return self.expansion_rate * self.d_model

    @property
    def se_dim(self) -> int:
        return max(1, int(self.d_model * self.se_ratio)) if self.se_ratio is not None else 0


def moat_flops(cfg: MOATConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T`` is ``h*w``. Assumes a square grid with ``T`` divisible by the window area for the
    attention pairs; MBConv convs, SE and attention projections counted exactly."""
    C, E, Hd = cfg.d_model, cfg.inner, cfg.heads * cfg.head_dim
    mbconv = 2 * batch * T * (C * E + E * cfg.kernel_size**2 + E * C)
    se = 2 * batch * 2 * E * cfg.se_dim
    proj = 2 * batch * T * (3 * C * Hd + Hd * C)
    area = T if cfg.window_size is None else min(T, cfg.window_size**2)
    attn = attention_flops(batch, cfg.heads, cfg.head_dim, cfg.head_dim, T * area)
    return mbconv + se + proj + attn


def _channels_last(t: Tensor) -> Tensor:
    return t.permute(0, 2, 3, 1)  # [B, C, h, w] (channels-last memory) -> [B, h, w, C] view


@register_mixer(
    "moat",
    config=MOATConfig,
    family="softmax",
    dims=2,
    patterns=("noncausal-self",),
    masks=("full",),
    state="none",
    exact=True,
    complexity="O(h·w·(r·C² + r·C·k²) + h·w·A·C) with MBConv expansion r, attention area A "
    "(h·w global, window² windowed)",
    paper=PAPER,
    peer="explicit BatchNorm/conv MBConv + hand-written softmax attention with relative bias (tests)",
    flops=moat_flops,
)
class MOATMixer(Mixer):
    cfg: MOATConfig

    def __init__(self, cfg: MOATConfig) -> None:
        super().__init__(cfg)
        C, E, H, k = cfg.d_model, cfg.inner, cfg.heads, cfg.kernel_size
        bn = {"eps": cfg.bn_eps, "momentum": 0.01}
        self.pre_norm = nn.BatchNorm2d(C, **bn)
        self.expand_conv = nn.Conv2d(C, E, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(E, **bn)
        self.depthwise_conv = nn.Conv2d(E, E, k, padding=k // 2, groups=E, bias=False)
        self.depthwise_norm = nn.BatchNorm2d(E, **bn)
        if cfg.se_ratio is not None:
            self.se_reduce = nn.Conv2d(E, cfg.se_dim, 1)
            self.se_expand = nn.Conv2d(cfg.se_dim, E, 1)
        self.shrink_conv = nn.Conv2d(E, C, 1)
        self.attention_norm = nn.LayerNorm(C, eps=cfg.ln_eps)
        self.qkv = nn.Linear(C, 3 * H * cfg.head_dim)
        self.o_proj = nn.Linear(H * cfg.head_dim, C)
        P = cfg.pos_embed_size
        if cfg.rel_pos:
            self.relative_position_embedding = nn.Parameter(torch.empty(H, 2 * P - 1, 2 * P - 1))
        for name, p in self.named_parameters():
            if "norm" in name:
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def mbconv(self, x: Tensor) -> Tensor:
        """The MBConv residual branch (without its shortcut). Shapes: ``[B, h, w, C]`` -> same."""
        t = self.pre_norm(x.permute(0, 3, 1, 2))  # [B, C, h, w], channels-last memory
        t = F.linear(_channels_last(t), self.expand_conv.weight.flatten(1))  # [B, h, w, E]
        t = F.gelu(self.expand_norm(t.permute(0, 3, 1, 2)))
        t = F.gelu(self.depthwise_norm(self.depthwise_conv(t)))  # [B, E, h, w]
        if self.cfg.se_ratio is not None:
            s = t.mean(dim=(2, 3), keepdim=True)  # [B, E, 1, 1]
            t = t * torch.sigmoid(self.se_expand(F.silu(self.se_reduce(s))))
        return F.linear(
            _channels_last(t), self.shrink_conv.weight.flatten(1), self.shrink_conv.bias
        )

    def relative_bias(self, a: int, b: int) -> Tensor:
        """The ``[heads, a*b, a*b]`` logit bias of an ``a x b`` attention area."""
        table = self.relative_position_embedding  # [H, 2P-1, 2P-1]
        table = F.interpolate(
            table[None], size=(2 * a - 1, 2 * b - 1), mode="bilinear", align_corners=False
        )[0]  # [H, 2a-1, 2b-1]
        ri, rj = (torch.arange(n, device=table.device) for n in (a, b))
        dh = ri[None, :] - ri[:, None] + a - 1  # [a (query i), a (key p)]: p - i + a - 1
        dw = rj[None, :] - rj[:, None] + b - 1  # [b (query j), b (key q)]
        bias = table[:, dh[:, None, :, None], dw[None, :, None, :]]  # [H, a, b, a, b]
        return bias.reshape(table.shape[0], a * b, a * b)

    def attention(self, z: Tensor) -> Tensor:
        """Multi-head attention on a normalised grid. Shapes: ``[B, h, w, C]`` -> same."""
        cfg = self.cfg
        B, h, w, _ = z.shape
        ws = cfg.window_size
        a, b = (h, w) if ws is None else (ws, ws)
        if h % a or w % b:
            raise ValueError(
                f"moat: h and w must be divisible by window_size={ws}, got h={h}, w={w} "
                "(use window_size=None for global attention)"
            )
        t = rearrange(z, "b (nh a) (nw c) d -> (b nh nw) (a c) d", a=a, c=b)  # [B*nW, a*b, C]
        q, k, v = rearrange(self.qkv(t), "n l (three h d) -> three n h l d", three=3, h=cfg.heads)
        bias = self.relative_bias(a, b).to(q.dtype) if cfg.rel_pos else None
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B*nW, H, a*b, d]
        o = self.o_proj(rearrange(o, "n h l d -> n l (h d)"))
        return rearrange(o, "(b nh nw) (a c) d -> b (nh a) (nw c) d", b=B, nh=h // a, a=a)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]`` (the block's update)."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        m = self.mbconv(x)  # [B, h, w, C]
        return m + self.attention(self.attention_norm(x + m))
