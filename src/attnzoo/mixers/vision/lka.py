"""VAN large kernel attention (V-LKA): a decomposed large depthwise kernel as a gating map.

Guo et al., "Visual Attention Network", 2022. https://arxiv.org/abs/2202.09741
Code: https://github.com/Visual-Attention-Network/VAN-Classification (``models/van.py``: ``LKA``,
``Attention``, ``Block``). Not in timm 1.0.31; the tests compare against an explicit naive
formulation (the dilated convolution as a sum of shifted products).

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
loads as is; the 1x1 convs run as matmuls on the channels-last input and the depthwise convs on
a channels-last-strided view (no copies to ``[B, C, h, w]``). Linear in ``h*w``; any grid.
"""

from __future__ import annotations

import dataclasses
import math

import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.config import MixerConfig
from attnzoo.mixers.base import Mixer
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

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
    """

    wrapper: bool = True
    shortcut: bool | None = None
    kernel_size: int = 5
    dilated_kernel_size: int = 7
    dilation: int = 3

    def validate(self) -> None:
        owner = self._owner()
        for name in ("kernel_size", "dilated_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(
                    f"{owner}: {name} must be a positive odd int (same-size padding), got {k}"
                )
        if self.dilation < 1:
            raise ValueError(f"{owner}: dilation must be >= 1, got {self.dilation}")

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
    dims=2,
    patterns=("noncausal-self",),
    masks=("full",),
    state="none",
    exact=False,
    complexity="O(h·w·C·(k1² + k2² + C)) time, O(h·w·C) memory (linear in h·w)",
    paper=PAPER,
    peer="explicit shifted-product depthwise/dilated convolutions and matmul 1x1s (tests)",
    flops=lka_flops,
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

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        if self.cfg.wrapper:
            y = F.gelu(_pointwise(x, self.proj_1))
            y = _pointwise(self.spatial_gating_unit(y), self.proj_2)
        else:
            y = self.spatial_gating_unit(x)
        return y + x if self.cfg.use_shortcut else y
