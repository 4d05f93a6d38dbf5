"""FFNified attention (V-FFNIFIED): MetaMixer/FFNet's convolutional query-key-value token mixer,
with RepVGG-style re-parameterisation.

Yun, Lee, Ro, "FFNet: MetaMixer-based Efficient Convolutional Mixer Design" (first version:
"MetaMixer Is All You Need"), 2024. https://arxiv.org/abs/2406.02021
Code: https://github.com/ysj9909/FFNet (``models/ffnet.py``: ``Token_Mixer``, ``RepVGGDW``,
``Conv2d_BN``, ``FFBlock``). timm has no FFNet; the fast path is checked against
``impl="reference"``, a written-out formulation (shift-and-add depthwise convolutions, BatchNorm
by hand; see "Paths" below).

The paper "FFNifies" self-attention: the query is the input after a 1x1 projection, the keys
and values are the two large-kernel depthwise convolutions, and GELU replaces the softmax. On
channels-last ``x [B, h, w, C]`` (``Token_Mixer.forward``):

1. ``q = BN(x W)``: ``Conv2d_BN(C, C)``, a 1x1 convolution without bias and ``BatchNorm2d``.
2. ``a = GELU(DW_k(q))`` ("query-key" interaction) and ``y = DW_k(a)`` ("value" aggregation),
   depthwise ``k x k`` convolutions with same-size zero padding (ReLU when
   ``activation="relu"``, the official ``use_gelu=False``).
3. Each ``DW_k`` is, in the training form, ``RepVGGDW``: ``BN(DWConv_k(.)) + BN(DWConv_r(.))``,
   a ``k x k`` and a centred ``r x r`` depthwise branch, each without bias and with its own
   BatchNorm. The official code uses it for ``k = 7`` (with ``r = k // 2 = 3``) and a plain
   biased ``DWConv_k`` otherwise (``k = 3`` in FFNet's first two stages). Here a convolution
   gets the branch whenever ``rep_kernel_size`` is set and smaller than ``kernel_size`` (so
   ``k = 5`` gets a 3x3 branch too, an extension), a plain biased convolution otherwise.

The mixer returns ``y``; the official ``FFBlock`` adds it to ``x`` through ``ResidualBlock`` (with
an optional layer scale), then an optional squeeze-excite and the ``Channel_Mixer``: those belong
to the block, not the mixer. FFNet uses the same kernel for both depthwise convolutions in every
stage (``kernel_sizes1 == kernel_sizes2``), hence one ``kernel_size``.

Re-parameterisation. :meth:`FFNifiedMixer.fuse` folds every BatchNorm into the preceding
convolution with its running statistics (``w' = w·γ/√(σ²+ε)``, ``b' = β - μ·γ/√(σ²+ε)``) and adds
the zero-padded ``r x r`` kernel into the centre of the ``k x k`` one, leaving a biased 1x1
projection and two biased ``k x k`` depthwise convolutions (the official ``Conv2d_BN.fuse`` and
``RepVGGDW.fuse``). In eval mode the outputs do not change; in train mode the unfused mixer
normalises with batch statistics, so fuse after training. ``fuse`` is idempotent and returns
the mixer. The unfused mixer in eval mode already computes this deployed form on the fly (the
folded kernels are rebuilt each call, so gradients still reach the BatchNorm and branch
parameters); ``fuse`` drops that small per-call cost and the extra parameters. Works on any grid
``h x w``.

Paths (``impl``):

- ``reference``: the unfused block written out (``FFNifiedMixer._reference``): the 1x1
  projection as a matmul over channels, every BatchNorm by
  :func:`~attnzoo.mixers.vision.batchnorm.bn_reference` and every depthwise convolution (both
  RepVGG branches) by :func:`~attnzoo.ops.conv.depthwise_conv` ``(impl="reference")``, one
  shifted copy per kernel offset. It reads whatever the mixer holds, so it also computes a fused
  mixer. In train mode it normalises with batch statistics but does not update the running
  statistics (it is the spec the fast path is checked against, not a training path).
- ``conv`` (``auto``): ``F.conv2d`` depthwise convolutions on a channels-last
  ``[B, C, h, w]`` view; in eval mode the BatchNorms and the RepVGG branches are folded on the
  fly (one matmul and one ``k x k`` convolution per stage), in train mode the two branches run
  with ``nn.BatchNorm2d`` (batch statistics, running statistics updated).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import MixerConfig, limit
from attnzoo.mixers.base import Mixer
from attnzoo.mixers.vision.batchnorm import bn_reference, fold_bn, linear_bn
from attnzoo.ops.conv import depthwise_conv
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import LowPrecision, Tolerance

PAPER = Paper(
    title="FFNet: MetaMixer-based Efficient Convolutional Mixer Design",
    year=2024,
    url="https://arxiv.org/abs/2406.02021",
    code="https://github.com/ysj9909/FFNet",
)


@dataclasses.dataclass(frozen=True)
class FFNifiedConfig(MixerConfig):
    """FFNified attention (``Token_Mixer``). ``d_model`` is the channel count C.

    Attributes:
        kernel_size: k of both depthwise convolutions (FFNet: 7 in stages 3-4, 3 in 1-2); odd.
        rep_kernel_size: r of the parallel RepVGG branch (official: 3 beside 7); a depthwise
            convolution has the branch when this is set and smaller than ``kernel_size``;
            ``None`` never adds it. Odd.
        activation: ``gelu`` (official default) or ``relu`` between the two convolutions.
        bn_eps: epsilon of every BatchNorm.
        impl: ``auto`` (= ``conv``) | ``reference`` (the unfused block written out) | ``conv``
            (``F.conv2d``, BatchNorms and branches folded on the fly in eval mode).
    """

    kernel_size: int = limit(7, ge=1, odd=True)
    rep_kernel_size: int | None = limit(3, ge=1, odd=True)
    activation: Literal["gelu", "relu"] = "gelu"
    bn_eps: float = limit(1e-5, gt=0)
    impl: Literal["auto", "reference", "conv"] = "auto"

    @property
    def branch(self) -> int | None:
        """The RepVGG branch kernel, or ``None`` for plain biased depthwise convolutions."""
        r = self.rep_kernel_size
        return r if r is not None and r < self.kernel_size else None


def ffnified_flops(
    cfg: FFNifiedConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """``T`` is the token count ``h*w``: the 1x1 projection and both depthwise convolutions in
    the training form (``k² + r²`` taps with the branch; ``fuse()`` leaves ``k²``). BatchNorm
    and the activation are elementwise and not counted."""
    C, k, r = cfg.d_model, cfg.kernel_size, cfg.branch or 0
    return 2 * batch * T * (C * C + 2 * C * (k * k + r * r))


class RepDepthwise(nn.Module):
    """``BN(DWConv_k) + BN(DWConv_r)`` (``branch=r``) or a biased ``DWConv_k`` (``None``);
    channels-first ``[B, C, h, w]`` -> same shape. :meth:`fuse` merges the branches."""

    def __init__(self, channels: int, kernel_size: int, branch: int | None, eps: float) -> None:
        super().__init__()
        C, k = channels, kernel_size
        self.conv = nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=branch is None)
        self.bn: nn.BatchNorm2d | None = None
        self.conv_small: nn.Conv2d | None = None
        self.bn_small: nn.BatchNorm2d | None = None
        if branch is not None:
            self.bn = nn.BatchNorm2d(C, eps=eps)
            self.conv_small = nn.Conv2d(C, C, branch, padding=branch // 2, groups=C, bias=False)
            self.bn_small = nn.BatchNorm2d(C, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        if self.bn is None or self.conv_small is None or self.bn_small is None:
            return self.conv(x)
        if self.bn.training or self.bn_small.training:  # batch statistics: two branches
            return self.bn(self.conv(x)) + self.bn_small(self.conv_small(x))
        w, b = self.merged()  # eval mode: the re-parameterised kernel, built on the fly
        return F.conv2d(x, w, b, padding=self.conv.padding, groups=self.conv.groups)

    def merged(self) -> tuple[Tensor, Tensor]:
        """The single kernel ``[C, 1, k, k]`` and bias ``[C]`` equal to both branches with
        running statistics: BatchNorms folded, the ``r x r`` kernel zero-padded into the
        centre."""
        assert self.bn is not None and self.conv_small is not None and self.bn_small is not None
        w, b = fold_bn(self.conv.weight, None, self.bn)
        ws, bs = fold_bn(self.conv_small.weight, None, self.bn_small)
        p = (w.shape[-1] - ws.shape[-1]) // 2
        return w + F.pad(ws, [p, p, p, p]), b + bs

    @torch.no_grad()
    def fuse(self) -> None:
        """One biased ``k x k`` depthwise convolution with the same eval-mode output."""
        if self.bn is None:
            return
        w, b = self.merged()
        C, k = w.shape[0], w.shape[-1]
        fused = nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=True)
        fused = fused.to(device=w.device, dtype=w.dtype)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.conv, self.bn, self.conv_small, self.bn_small = fused, None, None, None


@register_mixer(
    "ffnified",
    config=FFNifiedConfig,
    family="conv",
    layout="grid2d",
    complexity="O(h·w·C·(C + k²)) time, O(h·w·C) memory (k: depthwise kernel)",
    paper=PAPER,
    peer="impl='reference': written-out 1x1 projection, shift-and-add depthwise convs and "
    "BatchNorm; fuse() checked against the unfused mixer (tests)",
    flops=ffnified_flops,
    # impl='reference' adds the k*k shifted copies of each depthwise conv one by one, rounding
    # every partial sum
    low_precision=LowPrecision(bfloat16=Tolerance(rtol=2.5e-2), float16=Tolerance(rtol=3e-3)),
)
class FFNifiedMixer(Mixer):
    cfg: FFNifiedConfig

    def __init__(self, cfg: FFNifiedConfig) -> None:
        super().__init__(cfg)
        C, k, r = cfg.d_model, cfg.kernel_size, cfg.branch
        self.fc = nn.Linear(C, C, bias=False)  # Conv2d_BN(C, C): 1x1, no bias, then BN
        self.fc_bn: nn.BatchNorm1d | None = nn.BatchNorm1d(C, eps=cfg.bn_eps)
        self.conv1 = RepDepthwise(C, k, r, cfg.bn_eps)
        self.conv2 = RepDepthwise(C, k, r, cfg.bn_eps)
        # FFNet._init_weights: truncated normal (std 0.02) weights, zero biases
        for mod in self.modules():
            if isinstance(mod, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    @property
    def fused(self) -> bool:
        return self.fc_bn is None

    @torch.no_grad()
    def fuse(self) -> FFNifiedMixer:
        """Fold the BatchNorms and merge the RepVGG branches (see the module docstring)."""
        if self.fc_bn is not None:
            w, b = fold_bn(self.fc.weight, None, self.fc_bn)
            fc = nn.Linear(self.d_model, self.d_model, bias=True).to(w.device, w.dtype)
            fc.weight.copy_(w)
            fc.bias.copy_(b)
            self.fc, self.fc_bn = fc, None
        self.conv1.fuse()
        self.conv2.fuse()
        return self

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        if self.cfg.impl == "reference":
            return self._reference(x)
        if self.fc_bn is None:
            q = self.fc(x)  # [B, h, w, C]
        else:  # eval mode folds the BatchNorm into the projection on the fly
            q = linear_bn(x, self.fc.weight, None, self.fc_bn)
        # a channels-last [B, C, h, w] view: the depthwise convs run without a layout copy
        a = self.conv1(rearrange(q, "b h w c -> b c h w"))
        a = F.gelu(a) if self.cfg.activation == "gelu" else F.relu(a)
        return rearrange(self.conv2(a), "b c h w -> b h w c")  # [B, h, w, C]

    # ---- impl="reference" -----------------------------------------------------------------
    def _reference(self, x: Tensor) -> Tensor:
        """``conv2(act(conv1(BN(x W))))`` written out, unfused (or fused, after :meth:`fuse`).

        Shapes: x ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
        q = torch.einsum("bhwi,oi->bhwo", x, self.fc.weight)  # [B, h, w, C]
        if self.fc_bn is not None:
            q = bn_reference(self.fc_bn, q)
        else:  # fused: the BatchNorm lives in the projection's bias
            q = q + self.fc.bias
        a = _rep_reference(self.conv1, q)  # [B, h, w, C]
        a = F.gelu(a) if self.cfg.activation == "gelu" else a.clamp(min=0)
        return _rep_reference(self.conv2, a)  # [B, h, w, C]


def _rep_reference(conv: RepDepthwise, t: Tensor) -> Tensor:
    """``BN(DW_k(t)) + BN(DW_r(t))``, or a biased ``DW_k(t)`` without the branch, by shifted
    copies. Shapes: t ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
    if conv.bn is None or conv.conv_small is None or conv.bn_small is None:
        return depthwise_conv(t, conv.conv.weight, conv.conv.bias, impl="reference")
    big = bn_reference(conv.bn, depthwise_conv(t, conv.conv.weight, impl="reference"))
    small = bn_reference(conv.bn_small, depthwise_conv(t, conv.conv_small.weight, impl="reference"))
    return big + small
