"""MOAT token mixer (V-MOAT): a mobile convolution (MBConv) before multi-head self-attention.

Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models",
2022. https://arxiv.org/abs/2210.01820  Code (TensorFlow): https://github.com/google-research/deeplab2
(``model/layers/moat_blocks.py``: ``MOATBlock``; ``model/layers/moat_attention.py``:
``Attention``). Not in timm 1.0.31 (its ``timm.models.maxxvit`` has related MBConv and
attention pieces, not this block), so there is no peer case; ``impl="reference"`` is checked
against the fast path in the tests and the bench's gate.

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
   (the official classification setting, where the window is the whole feature map). Both run
   through :func:`attnzoo.ops.window.window_attention` (global: one window of the whole grid).

The mixer returns ``z - x`` (computed as ``MBConv(x) + Attn(LN(y))``), so a residual wrapper
``x + mixer(x)`` equals the official block; there is no MLP to add (MOAT has none).

Relative position bias: a table ``E [heads, 2P-1, 2P-1]`` (``P = pos_embed_size``, official 7)
is resized bilinearly (half-pixel centres, no antialiasing: ``tf.image.resize``'s default,
``F.interpolate(..., align_corners=False)`` here) to ``[2a-1, 2b-1]`` for an ``a x b``
attention area (the window, or the whole ``h x w`` grid), then the logit of query ``(i, j)``
and key ``(p, q)`` gets ``E'[p - i + a - 1, q - j + b - 1]``.

Extension: grids that the window does not divide. The official code takes only grids divisible
by ``window_size``; here the normalised grid is zero-padded at its bottom and right
(:func:`attnzoo.ops.window.pad_grid`), the padded keys are masked out (``sizes=``), so a border
window's real tokens attend only to each other with the bias of their positions in the
``window x window`` window, and the output is cropped back. On divisible grids nothing changes.

Paths (``impl``):

- ``reference``: the MBConv written out with :func:`attnzoo.mixers.vision.batchnorm.bn_reference`,
  explicit 1x1 matmuls, :func:`attnzoo.ops.conv.depthwise_conv` (shift-and-add) and an explicit
  squeeze-and-excitation; the relative bias from explicit bilinear resize matrices (the
  half-pixel formula ``src = (dst + 0.5) * in / out - 0.5``, edges clamped) and an index table
  built by loops; attention through ``window_attention(impl="reference")`` (dense weights over
  the grid with the windows' bias). In train mode it normalises with batch statistics but does
  not update the BatchNorm running statistics.
- ``sdpa`` (``auto``): BatchNorm modules and convolutions on channels-last memory, the bias from
  ``F.interpolate`` and fancy indexing, ``window_attention(impl="sdpa")``.

Attention maps: the weights of the window attention over the whole grid (``[B, H, h*w, h*w]``,
zero across windows); ``finish`` adds ``o_proj`` and the MBConv branch; exact.

Defaults follow the official code: BatchNorm epsilon 1e-3 and momentum 0.01 (Keras' 0.99),
LayerNorm epsilon 1e-5, exact (erf) GELU, ``N(0, 0.02)`` weights and zero biases. Left out:
stride 2 (the average-pool / 1x1 shortcut), width changes, drop path. Parameter layout vs the
official: ``q/k/v`` kernels ``[C, heads, head]`` are one ``qkv`` linear here (rows: q, k, v,
each head-major), ``o`` ``[heads, head, C]`` is ``o_proj``; conv kernels are torch's
``[out, in/groups, k, k]``. BatchNorm: ``train()`` uses batch statistics, compare in
``eval()``. Any grid, global or windowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import MixerConfig, limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.vision.batchnorm import bn_reference
from attnzoo.ops.common import attention_flops
from attnzoo.ops.conv import depthwise_conv
from attnzoo.ops.masks import Mask
from attnzoo.ops.window import pad_grid, window_attention, window_weights
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
        impl: ``auto`` (``sdpa``) | ``reference`` | ``sdpa`` (see the module docstring).
    """

    expansion_rate: int = limit(4, ge=1)
    kernel_size: int = limit(3, ge=1, odd=True)
    se_ratio: float | None = limit(None, gt=0, le=1)
    head_dim: int = limit(32, ge=1)
    num_heads: int | None = limit(None, ge=1)
    window_size: int | None = limit(None, ge=1)
    rel_pos: bool = True
    pos_embed_size: int = limit(7, ge=1)
    bn_eps: float = limit(1e-3, gt=0)
    ln_eps: float = limit(1e-5, gt=0)
    impl: Literal["auto", "reference", "sdpa"] = "auto"

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


def resize_matrix(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]`` weights of a 1-D bilinear resize with half-pixel centres and edge
    clamping (``tf.image.resize``, ``F.interpolate(align_corners=False)``)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        lo = math.floor(src)
        frac = src - lo
        m[o, min(max(lo, 0), n_in - 1)] += 1 - frac
        m[o, min(max(lo + 1, 0), n_in - 1)] += frac
    return m


@register_mixer(
    "moat",
    config=MOATConfig,
    family="softmax",
    layout="grid2d",
    exact=True,
    attention_maps=True,
    complexity="O(h·w·(r·C² + r·C·k²) + h·w·A·C) with MBConv expansion r, attention area A "
    "(h·w global, window² windowed)",
    paper=PAPER,
    peer="impl='reference' (explicit BatchNorm, 1x1 matmuls, shift-and-add depthwise conv, "
    "resize matrices, dense window attention) (tests)",
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

    # ---- MBConv -----------------------------------------------------------------------------
    def mbconv(self, x: Tensor) -> Tensor:
        """The MBConv residual branch (without its shortcut), fast path. Shapes: ``[B, h, w, C]``
        -> same."""
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

    def mbconv_reference(self, x: Tensor) -> Tensor:
        """The MBConv branch written out (BatchNorm formula, 1x1 convs as matmuls, shift-and-add
        depthwise conv). Shapes: ``[B, h, w, C]`` -> same."""
        t = bn_reference(self.pre_norm, x)  # [B, h, w, C]
        t = t @ self.expand_conv.weight[:, :, 0, 0].T  # [B, h, w, E]
        t = F.gelu(bn_reference(self.expand_norm, t))
        t = depthwise_conv(t, self.depthwise_conv.weight, impl="reference")  # [B, h, w, E]
        t = F.gelu(bn_reference(self.depthwise_norm, t))
        if self.cfg.se_ratio is not None:
            s = t.mean(dim=(1, 2))  # [B, E]
            s = s @ self.se_reduce.weight[:, :, 0, 0].T + self.se_reduce.bias  # [B, se]
            s = s * torch.sigmoid(s)  # swish
            s = s @ self.se_expand.weight[:, :, 0, 0].T + self.se_expand.bias  # [B, E]
            t = t * torch.sigmoid(s)[:, None, None, :]
        return t @ self.shrink_conv.weight[:, :, 0, 0].T + self.shrink_conv.bias  # [B, h, w, C]

    # ---- relative position bias ---------------------------------------------------------------
    def relative_bias(self, a: int, b: int) -> Tensor:
        """The ``[heads, a*b, a*b]`` logit bias of an ``a x b`` attention area (fast path)."""
        table = self.relative_position_embedding  # [H, 2P-1, 2P-1]
        table = F.interpolate(
            table[None], size=(2 * a - 1, 2 * b - 1), mode="bilinear", align_corners=False
        )[0]  # [H, 2a-1, 2b-1]
        ri, rj = (torch.arange(n, device=table.device) for n in (a, b))
        dh = ri[None, :] - ri[:, None] + a - 1  # [a (query i), a (key p)]: p - i + a - 1
        dw = rj[None, :] - rj[:, None] + b - 1  # [b (query j), b (key q)]
        bias = table[:, dh[:, None, :, None], dw[None, :, None, :]]  # [H, a, b, a, b]
        return bias.reshape(table.shape[0], a * b, a * b)

    def relative_bias_reference(self, a: int, b: int) -> Tensor:
        """:meth:`relative_bias` from resize matrices and an index table built by loops."""
        table = self.relative_position_embedding  # [H, 2P-1, 2P-1]
        rows, cols = (
            resize_matrix(n, 2 * s - 1).to(table)
            for n, s in ((table.shape[1], a), (table.shape[2], b))
        )
        resized = rows @ table @ cols.T  # [H, 2a-1, 2b-1]
        index = [
            (p - i + a - 1) * (2 * b - 1) + (q - j + b - 1)
            for i in range(a)
            for j in range(b)  # query (i, j), row-major
            for p in range(a)
            for q in range(b)  # key (p, q), row-major
        ]
        return resized.flatten(1)[:, index].reshape(table.shape[0], a * b, a * b)

    # ---- attention ----------------------------------------------------------------------------
    def _attention_inputs(
        self, z: Tensor, reference: bool
    ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int], Tensor | None]:
        """q, k, v on the grid padded to the window and the window's bias.

        Shapes: z ``[B, h, w, C]`` -> q, k, v ``[B, h', w', H, d]``, window ``(a, b)``, bias
        ``[1, H, a*b, a*b]`` or ``None``."""
        cfg = self.cfg
        h, w = z.shape[1:3]
        window = (h, w) if cfg.window_size is None else (cfg.window_size, cfg.window_size)
        qkv = self.qkv(pad_grid(z, window))  # [B, h', w', 3*H*d]
        # split, not a rearrange to a leading axis of 3: its backward (a stack) copies slowly
        q, k, v = (t.unflatten(-1, (cfg.heads, -1)) for t in qkv.chunk(3, dim=-1))
        bias = None
        if cfg.rel_pos:
            make = self.relative_bias_reference if reference else self.relative_bias
            bias = make(*window).to(q.dtype)[None]
        return q, k, v, window, bias

    def _finish(self, m: Tensor, o: Tensor) -> Tensor:
        """MBConv branch plus ``o_proj`` of the cropped attention output.

        Shapes: m ``[B, h, w, C]``, o ``[B, h', w', H, d]`` -> ``[B, h, w, C]``."""
        h, w = m.shape[1:3]
        return m + self.o_proj(rearrange(o[:, :h, :w], "b h w n d -> b h w (n d)"))

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]`` (the block's update)."""
        reference = self.cfg.impl == "reference"
        m = self.mbconv_reference(x) if reference else self.mbconv(x)  # [B, h, w, C]
        q, k, v, window, bias = self._attention_inputs(self.attention_norm(x + m), reference)
        o = window_attention(q, k, v, window, sizes=x.shape[1:3], bias=bias,
                             impl="reference" if reference else "sdpa")  # fmt: skip
        return self._finish(m, o)

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """The window attention's weights over the grid, ``[B, H, h*w, h*w]`` (zero across
        windows); values ``[B, H, h*w, d]``; ``finish`` adds ``o_proj`` and the MBConv branch.
        Exact."""
        reference = self.cfg.impl == "reference"
        m = self.mbconv_reference(x) if reference else self.mbconv(x)
        h, w = x.shape[1:3]
        q, k, v, window, bias = self._attention_inputs(self.attention_norm(x + m), reference)
        a = window_weights(q, k, window, sizes=(h, w), bias=bias)  # [B, H, N', N'] padded grid
        real = (torch.arange(h, device=x.device)[:, None] * q.shape[2]
                + torch.arange(w, device=x.device)).flatten()  # fmt: skip
        a = a[:, :, real][..., real]  # [B, H, h*w, h*w]: padded keys weigh 0
        values = rearrange(v[:, :h, :w], "b h w n d -> b n (h w) d")

        def finish(o: Tensor) -> Tensor:  # [B, H, h*w, d] -> [B, h, w, C]
            return self._finish(m, rearrange(o, "b n (h w) d -> b h w n d", h=h))

        return AttentionMaps(a, values, finish)
