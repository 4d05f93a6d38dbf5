"""YOLOv12 area attention (V-AREA): softmax attention inside horizontal strips of the image plus
a depthwise positional term on the values.

Tian, Ye, Doermann, "YOLOv12: Attention-Centric Real-Time Object Detectors", 2025.
https://arxiv.org/abs/2502.12524  Code: https://github.com/sunsmarterjie/yolov12
(``ultralytics/nn/modules/block.py``: ``AAttn``, used by ``ABlock`` / ``A2C2f``). Catalogued via
the RF-DETR vs YOLOv12 greenfruit comparison (V-AREA). timm has no area attention, so there is
no peer case; ``impl="reference"`` is checked against the fast path in the tests and the bench's
gate.

On channels-last ``x [B, h, w, C]`` with tokens flattened row-major (``N = h*w``), ``H`` heads of
width ``d = C/H``:

1. ``[q, k] = BN(x W_qk)``, ``v = BN(x W_v)``: the official ``Conv`` modules (1x1 convolution
   without bias, ``BatchNorm2d``, no activation); here one ``C -> 3C`` linear with one
   BatchNorm over the ``3C`` channels (per-channel, so the same thing).
2. ``pe = BN(DWConv5x5(v))`` on the full ``h x w`` grid (depthwise, no bias).
3. Split the ``N`` tokens into consecutive strips of ``L`` tokens (``area`` strips of
   ``N/area`` tokens in the official code, i.e. horizontal bands of ``h/area`` rows when
   ``area`` divides ``h``); softmax attention with scale ``d**-0.5`` within each strip, every
   head separately.
4. ``y = BN((attn + pe) W_o)`` (``proj``: 1x1 convolution without bias, ``BatchNorm2d``).

The mixer returns ``y``, so a residual wrapper ``x + y`` is the first half of ``ABlock``
(``x + attn(x)``); its MLP and the R-ELAN (``A2C2f``) around it belong to the block.

Strips. ``area`` fixes the number of strips: the strip length ``N/area`` grows with the image,
so time is ``O(N²·C/area)``, quadratic in ``h*w`` (memory stays ``O(N·C)`` with the fused SDPA
kernel, flash attention on CPU in fp32; a materialised score matrix would need
``H·N²/area``). ``strip_length`` fixes the strip length ``L`` instead: ``ceil(N/L)`` strips,
time ``O(N·L·C)`` and memory ``O(N·C)``, both linear in ``h*w``. When ``N`` is not a
multiple of the strip length (``ceil(N/area)`` in area mode), ``ragged=True`` (default) lets
the last strip be shorter (it attends only to its own tokens; in area mode this can mean fewer
than ``area`` strips, e.g. 3 strips of 2, 2, 1 tokens for ``N=5, area=4``); ``ragged=False``
raises a ``ValueError`` naming the constraint (``h*w`` divisible by ``area``, or a multiple of
``strip_length``), where the official ``reshape`` would fail. Whenever ``area`` divides ``N``
both agree with the official module.

Strips are 1-D windows of :mod:`attnzoo.ops.window` over the row-major tokens ``[B, N, H, d]``
(window ``(L,)``). Paths (``impl``):

- ``reference``: BatchNorm written out (:func:`~attnzoo.mixers.vision.batchnorm.bn_reference`)
  after plain matmuls, the positional term by :func:`attnzoo.ops.conv.depthwise_conv`
  (shift-and-add), and the strips as the window op's policy states it: the tokens zero-padded
  to a multiple of ``L`` (:func:`~attnzoo.ops.window.pad_grid`) with ``sizes=(N,)``, so the
  padded keys are masked out and the ragged last strip attends only to its real tokens, through
  ``window_attention(impl="reference")`` (dense ``[N, N]`` weights). In train mode it normalises
  with batch statistics but does not update the running statistics.
- ``sdpa`` (``auto``): BatchNorm folded into the projections and the positional kernel in eval
  mode (:mod:`.batchnorm`), a grouped ``conv2d``, and ``window_attention(impl="sdpa")`` on the
  same strips without padding: the full strips as windows of ``L`` and a ragged last strip as
  one window of its own length (no mask; a masked SDPA call runs about 1.5-4x slower on CPU).

Attention maps: the strips' weights over the flattened grid (``[B, H, h*w, h*w]``, zero across
strips); ``finish`` adds the positional term ``pe`` and the projection; exact.

BatchNorm: train mode normalises with batch statistics; eval mode uses the running statistics;
compare in eval mode. ``bn_eps`` defaults to ``1e-3``, the value ultralytics'
``initialize_weights`` sets on every ``BatchNorm2d`` of a YOLO model. Weights follow
``ABlock._init_weights`` (truncated normal, std 0.02).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.mixers.vision.batchnorm import bn_reference, conv_bn, linear_bn
from attnzoo.ops.common import attention_flops
from attnzoo.ops.conv import depthwise_conv
from attnzoo.ops.masks import Mask
from attnzoo.ops.window import pad_grid, window_attention, window_weights
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="YOLOv12: Attention-Centric Real-Time Object Detectors",
    year=2025,
    url="https://arxiv.org/abs/2502.12524",
    code="https://github.com/sunsmarterjie/yolov12",
)

DEFAULT_AREA = 4  # YOLOv12 uses area=4 at stride 16 (P4) and area=1 at stride 32 (P5)


@dataclasses.dataclass(frozen=True)
class AreaConfig(HeadsConfig):
    """YOLOv12 area attention. ``d_model`` is the channel count C.

    Attributes:
        num_heads: heads; ``None`` means YOLOv12's head width 32 (``C // 32`` heads) when 32
            divides C, otherwise one head.
        area: number of strips (official ``area``); ``None`` means 4 unless ``strip_length``
            is set. Set one of ``area`` and ``strip_length``, not both.
        strip_length: tokens per strip, fixed whatever the image size (linear cost in h*w).
        ragged: let the last strip be shorter when the token count is not a multiple of the
            strip length; ``False`` raises ``ValueError`` instead (the official behaviour).
        pe_kernel_size: kernel of the depthwise positional convolution on v (official: 5); odd.
        bn_eps: epsilon of every BatchNorm (YOLO models: 1e-3).
        impl: ``auto`` (``sdpa``) | ``reference`` | ``sdpa`` (see the module docstring).
    """

    area: int | None = limit(None, ge=1)
    strip_length: int | None = limit(None, ge=1)
    ragged: bool = True
    pe_kernel_size: int = limit(5, ge=1, odd=True)
    bn_eps: float = limit(1e-3, gt=0)
    impl: Literal["auto", "reference", "sdpa"] = "auto"

    def validate(self) -> None:
        if self.area is not None and self.strip_length is not None:
            raise ValueError(
                f"{self._owner()}: set either area (number of strips) or strip_length (tokens "
                f"per strip), not both; got area={self.area}, strip_length={self.strip_length}"
            )

    def default_num_heads(self) -> int:
        return self.d_model // 32 if self.d_model % 32 == 0 else 1

    def strips(self, n: int) -> tuple[int, int]:
        """``(L, count)`` for ``n`` tokens: strip length and number of strips (the last may be
        shorter). Does not check ``ragged``."""
        if self.strip_length is not None:
            L = min(self.strip_length, n)
        else:
            L = -(-n // (self.area if self.area is not None else DEFAULT_AREA))
        L = max(L, 1)
        return L, -(-n // L)


def area_flops(cfg: AreaConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T`` is the token count ``h*w``: q/k/v and output projections, the depthwise positional
    convolution and softmax attention over the pairs inside each strip (BatchNorm, softmax
    exponentials not counted)."""
    C, k = cfg.d_model, cfg.pe_kernel_size
    L, count = cfg.strips(T)
    last = T - (count - 1) * L
    pairs = (count - 1) * L * L + last * last
    proj = 2 * batch * T * (C * 3 * C + C * C)
    pe = 2 * batch * T * C * k * k
    return proj + pe + attention_flops(batch, cfg.heads, cfg.dim_head, cfg.dim_head, pairs)


@register_mixer(
    "area",
    config=AreaConfig,
    family="softmax",
    layout="grid2d",
    attention_maps=True,
    complexity="O(N·L·C) time, O(N·C) memory with N = h·w and strip length L "
    "(area mode: L = N/area, so O(N²·C/area); strip_length mode: L fixed, linear in N)",
    paper=PAPER,
    peer="one strip (area=1) = full softmax attention + the positional conv; every strip layout "
    "= impl='reference' (explicit BatchNorm, shift-and-add conv, dense strip attention) (tests)",
    export=ExportSupport(
        dynamic="the strips are cut in Python from h·w (ceil(h·w/area) tokens, a ragged last "
        "strip only when that does not divide h·w): the program fails on grids split otherwise"
    ),
    flops=area_flops,
)
class AreaAttentionMixer(Mixer):
    cfg: AreaConfig

    def __init__(self, cfg: AreaConfig) -> None:
        super().__init__(cfg)
        C, k = cfg.d_model, cfg.pe_kernel_size
        self.qkv = nn.Linear(C, 3 * C, bias=False)  # rows: q | k (official qk), v (official v)
        self.qkv_bn = nn.BatchNorm1d(3 * C, eps=cfg.bn_eps)
        self.pe = nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=False)
        self.pe_bn = nn.BatchNorm2d(C, eps=cfg.bn_eps)
        self.proj = nn.Linear(C, C, bias=False)
        self.proj_bn = nn.BatchNorm1d(C, eps=cfg.bn_eps)
        for weight in (self.qkv.weight, self.pe.weight, self.proj.weight):
            nn.init.trunc_normal_(weight, std=0.02)

    def check_grid(self, h: int, w: int) -> tuple[int, int]:
        """``(L, count)`` for an ``h x w`` grid; raises when the strips do not tile it and
        ``ragged=False``."""
        cfg, n = self.cfg, h * w
        if not cfg.ragged:
            if cfg.strip_length is not None:
                unit, need = cfg.strip_length, f"a multiple of strip_length={cfg.strip_length}"
            else:
                unit = cfg.area if cfg.area is not None else DEFAULT_AREA
                need = f"divisible by area={unit}"
            if n % unit:
                raise ValueError(
                    f"area: h*w must be {need} when ragged=False, got h={h}, w={w} (h*w={n}); "
                    "pass ragged=True to let the last strip be shorter"
                )
        return cfg.strips(n)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[q | k | v]`` and the positional term. Shapes: x ``[B, h, w, C]`` -> qkv
        ``[B, h, w, 3C]``, pe ``[B, h, w, C]``."""
        C = self.cfg.d_model
        if self.cfg.impl == "reference":
            qkv = bn_reference(self.qkv_bn, x @ self.qkv.weight.T)  # [B, h, w, 3C]
            pe = depthwise_conv(qkv[..., 2 * C :], self.pe.weight, impl="reference")
            return qkv, bn_reference(self.pe_bn, pe)
        qkv = linear_bn(x, self.qkv.weight, None, self.qkv_bn)  # [B, h, w, 3C]
        v_img = rearrange(qkv[..., 2 * C :], "b h w c -> b c h w")
        return qkv, rearrange(conv_bn(v_img, self.pe, self.pe_bn), "b c h w -> b h w c")

    def _heads(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Shapes: t ``[B, n, 3C]`` -> q, k, v ``[B, n, H, d]``."""
        # split, not a rearrange to a leading axis of 3: its backward (a stack) copies slowly
        q, k, v = (u.unflatten(-1, (self.cfg.heads, -1)) for u in t.split(self.cfg.d_model, -1))
        return q, k, v

    def _finish(self, o: Tensor, pe: Tensor) -> Tensor:
        """``proj(attn + pe)``. Shapes: o ``[B, N, H, d]``, pe ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
        o = rearrange(o, "b (h w) n d -> b h w (n d)", w=pe.shape[2]) + pe
        if self.cfg.impl == "reference":
            return bn_reference(self.proj_bn, o @ self.proj.weight.T)
        return linear_bn(o, self.proj.weight, None, self.proj_bn)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        h, w = x.shape[1:3]
        L, _ = self.check_grid(h, w)
        qkv, pe = self._project(x)
        t = rearrange(qkv, "b h w c -> b (h w) c")  # [B, N, 3C], row-major tokens
        N = h * w
        if self.cfg.impl == "reference":
            q, k, v = self._heads(pad_grid(t, (L,)))  # [B, N', H, d], N' a multiple of L
            o = window_attention(q, k, v, (L,), sizes=(N,), impl="reference")[:, :N]
            return self._finish(o, pe)
        q, k, v = self._heads(t)  # [B, N, H, d]
        full = N - N % L
        parts = []
        if full:  # the full strips: windows of L tokens
            parts.append(window_attention(q[:, :full], k[:, :full], v[:, :full], (L,), impl="sdpa"))
        if full < N:  # the ragged last strip: one window of its own length
            tail = (N - full,)
            parts.append(window_attention(q[:, full:], k[:, full:], v[:, full:], tail, impl="sdpa"))
        return self._finish(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1), pe)

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """The strips' weights over the flattened grid, ``[B, H, h*w, h*w]`` (zero across
        strips); values ``[B, H, h*w, d]``; ``finish`` adds ``pe`` and the projection. Exact."""
        h, w = x.shape[1:3]
        L, _ = self.check_grid(h, w)
        N = h * w
        qkv, pe = self._project(x)
        q, k, v = self._heads(pad_grid(rearrange(qkv, "b h w c -> b (h w) c"), (L,)))
        a = window_weights(q, k, (L,), sizes=(N,))[:, :, :N, :N]  # [B, H, N, N]
        values = rearrange(v[:, :N], "b n h d -> b h n d")

        def finish(o: Tensor) -> Tensor:  # [B, H, N, d] -> [B, h, w, C]
            return self._finish(rearrange(o, "b h n d -> b n h d"), pe)

        return AttentionMaps(a, values, finish)
