"""VAN large kernel attention (V-LKA): a decomposed large depthwise kernel as a gating map.

Guo et al., "Visual Attention Network", 2022. https://arxiv.org/abs/2202.09741
Code: https://github.com/Visual-Attention-Network/VAN-Classification (``models/van.py``: ``LKA``,
``Attention``, ``Block``). Not in timm 1.0.31, so there is no peer case; the tests compare both
paths against a by-hand channels-first formulation of the official modules (the dilated
convolution as a sum of shifted products, written in the test file).

On channels-last ``u [B, h, w, C]``, per channel (``DW``: depthwise, biased, same-size padding):

    attn = Conv1x1(DW_{7x7, dilation 3}(DW_{5x5}(u)))       # full C x C 1x1 conv, biased
    LKA(u) = u * attn                                       # elementwise, no softmax

The 5x5 and the dilated 7x7 (padding 9) are the paper's decomposition of a ``K x K`` kernel
into a ``(2d-1) x (2d-1)`` depthwise conv, a ``ceil(K/d) x ceil(K/d)`` depthwise conv with
dilation ``d`` and a 1x1 conv (K=21, d=3; the composed receptive field is 23 x 23). The
kernel sizes and dilation are config fields.

``wrapper=True`` (default) is VAN's ``Attention`` module (the "spatial attention" sub-layer of
a VAN block), which the official ``Block`` applies as ``x + ls * Attention(BN(x))``::

    y = proj_2(LKA(GELU(proj_1(x)))) + x        # proj_*: biased 1x1 convs; "+ x": its shortcut

So with the default ``shortcut=None`` (= ``wrapper``) a residual wrapper ``x + y`` computes
``2x + ...``, exactly as VAN's block does with its BN-ed input. ``wrapper=False`` is the bare
``LKA`` (``y = x * attn``, no shortcut). Left out (the block's): BatchNorm, layer scale, the
MLP branch, drop path. Parameter names and shapes equal the official ``Attention``'s
(``proj_1``, ``spatial_gating_unit.conv0/conv_spatial/conv1``, ``proj_2``), so its state dict
loads as is. Linear in ``h*w``; any grid.

``impl`` picks how it runs:

- ``reference``: the formulas above as written, no ``F.conv2d``: both depthwise convs by
  :func:`attnzoo.ops.conv.depthwise_conv` ``(impl="reference")`` (one shifted copy of the
  zero-padded input per kernel offset, weighted and summed), each 1x1 conv an explicit matmul
  over channels plus its bias, and GELU as its exact-erf definition
  ``0.5 t (1 + erf(t / sqrt(2)))``.
- ``conv`` (``auto``): the 1x1 convs run as ``F.linear`` on the channels-last input and the
  depthwise convs as ``nn.Conv2d`` on a channels-last-strided view (no copies to
  ``[B, C, h, w]``); ``F.gelu``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.config import MixerConfig, limit
from attnzoo.mixers.base import Mixer
from attnzoo.ops.conv import depthwise_conv
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import LowPrecision, Tolerance

PAPER = Paper(
    title="Visual Attention Network",
    year=2022,
    url="https://arxiv.org/abs/2202.09741",
    code="https://github.com/Visual-Attention-Network/VAN-Classification",
)


@dataclasses.dataclass(frozen=True)
class LKAConfig(MixerConfig):
    """Large kernel attention. ``d_model`` is the channel count C.

    Attributes:
        wrapper: VAN's ``Attention``: ``proj_1 -> GELU -> LKA -> proj_2`` (official: on).
        shortcut: add the input to the output (``Attention``'s internal shortcut); ``None``
            means the same as ``wrapper`` (the official modules).
        kernel_size: the plain depthwise kernel (official: 5); odd.
        dilated_kernel_size: the dilated depthwise kernel (official: 7); odd.
        dilation: dilation of the second depthwise conv (official: 3).
        impl: ``auto`` (= ``conv``) | ``reference`` (shift-and-add depthwise convs, matmul
            1x1s, erf GELU) | ``conv`` (``nn.Conv2d`` / ``F.linear``); see the module docstring.
    """

    wrapper: bool = True
    shortcut: bool | None = None
    kernel_size: int = limit(5, ge=1, odd=True)
    dilated_kernel_size: int = limit(7, ge=1, odd=True)
    dilation: int = limit(3, ge=1)
    impl: Literal["auto", "reference", "conv"] = "auto"

    @property
    def use_shortcut(self) -> bool:
        return self.wrapper if self.shortcut is None else self.shortcut

    @property
    def receptive_field(self) -> int:
        """Side of the combined kernel: ``k1 + d * (k2 - 1)`` (official: 5 + 18 = 23)."""
        return self.kernel_size + self.dilation * (self.dilated_kernel_size - 1)


def lka_flops(cfg: LKAConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T`` is ``h*w``: two depthwise convs, the 1x1 conv (and the two wrapper 1x1 convs)."""
    C = cfg.d_model
    per_pixel = C * (cfg.kernel_size**2 + cfg.dilated_kernel_size**2 + C)
    if cfg.wrapper:
        per_pixel += 2 * C * C
    return 2 * batch * T * per_pixel


def _van_init(conv: nn.Conv2d) -> nn.Conv2d:
    """VAN's ``_init_weights``: ``N(0, sqrt(2 / fan_out))``, ``fan_out = k*k*out/groups``."""
    kh, kw = conv.kernel_size
    fan_out = kh * kw * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _pointwise(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 1x1 conv on channels-last ``x [B, h, w, C]`` as a matmul."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def _pointwise_reference(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``y[p, o] = b[o] + sum_i W[o, i] x[p, i]``: a 1x1 conv, written as a matmul over the
    channels. Shapes: ``[B, h, w, C] -> [B, h, w, C_out]``."""
    return x @ conv.weight[:, :, 0, 0].T + conv.bias


def _gelu_reference(t: Tensor) -> Tensor:
    """GELU by its definition ``t * Phi(t)`` with the exact normal CDF (erf), as ``nn.GELU()``."""
    return 0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0)))


class LargeKernelAttention(nn.Module):
    """The official ``LKA`` on channels-last input. Shapes: ``[B, h, w, C] -> [B, h, w, C]``."""

    def __init__(self, cfg: LKAConfig) -> None:
        super().__init__()
        C, k1, k2, d = cfg.d_model, cfg.kernel_size, cfg.dilated_kernel_size, cfg.dilation
        self.conv0 = _van_init(nn.Conv2d(C, C, k1, padding=k1 // 2, groups=C))
        self.conv_spatial = _van_init(
            nn.Conv2d(C, C, k2, padding=d * (k2 // 2), dilation=d, groups=C)
        )
        self.conv1 = _van_init(nn.Conv2d(C, C, 1))

    def forward(self, u: Tensor) -> Tensor:
        t = self.conv_spatial(self.conv0(u.permute(0, 3, 1, 2)))  # [B, C, h, w], channels-last
        return u * _pointwise(t.permute(0, 2, 3, 1), self.conv1)  # [B, h, w, C]


@register_mixer(
    "lka",
    config=LKAConfig,
    family="conv",
    layout="grid2d",
    complexity="O(h·w·C·(k1² + k2² + C)) time, O(h·w·C) memory (linear in h·w)",
    paper=PAPER,
    peer="by-hand channels-first shift-and-add convs of the official modules (tests; no timm VAN)",
    flops=lka_flops,
    # impl='reference' adds the shifted copies of each depthwise conv one by one, rounding every
    # partial sum
    low_precision=LowPrecision(bfloat16=Tolerance(rtol=2.5e-2), float16=Tolerance(rtol=3e-3)),
)
class LKAMixer(Mixer):
    cfg: LKAConfig

    def __init__(self, cfg: LKAConfig) -> None:
        super().__init__(cfg)
        C = cfg.d_model
        if cfg.wrapper:
            self.proj_1 = _van_init(nn.Conv2d(C, C, 1))
            self.proj_2 = _van_init(nn.Conv2d(C, C, 1))
        self.spatial_gating_unit = LargeKernelAttention(cfg)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        if self.cfg.impl == "reference":
            return self._reference(x)
        if self.cfg.wrapper:
            y = F.gelu(_pointwise(x, self.proj_1))
            y = _pointwise(self.spatial_gating_unit(y), self.proj_2)
        else:
            y = self.spatial_gating_unit(x)
        return y + x if self.cfg.use_shortcut else y

    def _reference(self, x: Tensor) -> Tensor:
        """The module docstring's formulas, no ``F.conv2d``. Shapes: ``[B, h, w, C]`` -> same."""
        cfg, sgu = self.cfg, self.spatial_gating_unit
        u = _gelu_reference(_pointwise_reference(x, self.proj_1)) if cfg.wrapper else x
        attn = depthwise_conv(u, sgu.conv0.weight, sgu.conv0.bias, impl="reference")
        w, b = sgu.conv_spatial.weight, sgu.conv_spatial.bias
        attn = depthwise_conv(attn, w, b, dilation=cfg.dilation, impl="reference")
        y = u * _pointwise_reference(attn, sgu.conv1)  # [B, h, w, C]: LKA
        if cfg.wrapper:
            y = _pointwise_reference(y, self.proj_2)
        return y + x if cfg.use_shortcut else y
