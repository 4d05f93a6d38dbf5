"""YOLOv12 area attention (V-AREA): softmax attention inside horizontal strips of the image plus
a depthwise positional term on the values.

Tian, Ye, Doermann, "YOLOv12: Attention-Centric Real-Time Object Detectors", 2025.
https://arxiv.org/abs/2502.12524  Code: https://github.com/sunsmarterjie/yolov12
(``ultralytics/nn/modules/block.py``: ``AAttn``, used by ``ABlock`` / ``A2C2f``). Catalogued via
the RF-DETR vs YOLOv12 greenfruit comparison (V-AREA). timm has no area attention; the tests
compare against an explicit per-strip loop and, for one strip, full softmax attention.

On channels-last ``x [B, h, w, C]`` with tokens flattened row-major (``N = h*w``), ``H`` heads of
width ``d = C/H``:

1. ``[q, k] = BN(x W_qk)``, ``v = BN(x W_v)``: the official ``Conv`` modules (1x1 convolution
   without bias, ``BatchNorm2d``, no activation); here one ``C -> 3C`` linear with one
   BatchNorm over the ``3C`` channels (per-channel, so the same thing).
2. ``pe = BN(DWConv5x5(v))`` on the full ``h x w`` grid (depthwise, no bias).
3. Split the ``N`` tokens into consecutive strips of ``L`` tokens (``area`` strips of
   ``N/area`` tokens in the official code, i.e. horizontal bands of ``h/area`` rows when
   ``area`` divides ``h``); softmax attention with scale ``d**-0.5`` within each strip, every
   head separately (``F.scaled_dot_product_attention``).
4. ``y = BN((attn + pe) W_o)`` (``proj``: 1x1 convolution without bias, ``BatchNorm2d``).

The mixer returns ``y``, so a residual wrapper ``x + y`` is the first half of ``ABlock``
(``x + attn(x)``); its MLP and the R-ELAN (``A2C2f``) around it belong to the block.

Strips. ``area`` fixes the number of strips: the strip length ``N/area`` grows with the image,
so time is ``O(N²·C/area)``, quadratic in ``h*w`` (memory stays ``O(N·C)`` with the fused SDPA
kernel, flash attention on CPU in fp32; a materialised score matrix would need
``H·N²/area``). ``strip_length`` fixes the strip length ``L`` instead: ``ceil(N/L)`` strips,
time ``O(N·L·C)`` and memory ``O(N·C)``, both linear in ``h*w``. When ``N`` is not a
multiple of the strip length (``ceil(N/area)`` in area mode), ``ragged=True`` (default) lets
the last strip be shorter (attended on its own, no padding; in area mode this can mean fewer
than ``area`` strips, e.g. 3 strips of 2, 2, 1 tokens for ``N=5, area=4``); ``ragged=False``
raises a ``ValueError`` naming the constraint (``h*w`` divisible by ``area``, or a multiple of
``strip_length``), where the official ``reshape`` would fail. Whenever ``area`` divides ``N``
both agree with the official module.

BatchNorm: train mode normalises with batch statistics; eval mode folds the running statistics
into the projections and the positional kernel on the fly (:mod:`.batchnorm`); compare in eval
mode. ``bn_eps`` defaults
to ``1e-3``, the value ultralytics' ``initialize_weights`` sets on every ``BatchNorm2d`` of a YOLO
model. Weights follow ``ABlock._init_weights`` (truncated normal, std 0.02).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.mixers.vision.batchnorm import conv_bn, linear_bn
from attnzoo.ops.common import attention_flops
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

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
    """

    area: int | None = None
    strip_length: int | None = None
    ragged: bool = True
    pe_kernel_size: int = 5
    bn_eps: float = 1e-3

    def validate(self) -> None:
        owner = self._owner()
        if self.area is not None and self.strip_length is not None:
            raise ValueError(
                f"{owner}: set either area (number of strips) or strip_length (tokens per "
                f"strip), not both; got area={self.area}, strip_length={self.strip_length}"
            )
        if self.area is not None and self.area < 1:
            raise ValueError(f"{owner}: area must be >= 1, got {self.area}")
        if self.strip_length is not None and self.strip_length < 1:
            raise ValueError(f"{owner}: strip_length must be >= 1, got {self.strip_length}")
        if self.pe_kernel_size < 1 or self.pe_kernel_size % 2 == 0:
            raise ValueError(
                f"{owner}: pe_kernel_size must be a positive odd int (same-size padding), "
                f"got {self.pe_kernel_size}"
            )
        if not self.bn_eps > 0:
            raise ValueError(f"{owner}: bn_eps must be > 0, got {self.bn_eps}")

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
    dims=2,
    patterns=("noncausal-self",),
    masks=("full",),
    state="none",
    exact=False,
    complexity="O(N·L·C) time, O(N·C) memory with N = h·w and strip length L "
    "(area mode: L = N/area, so O(N²·C/area); strip_length mode: L fixed, linear in N)",
    paper=PAPER,
    peer="explicit per-strip softmax loop; one strip = full softmax attention + shift-and-add "
    "depthwise conv (tests)",
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

    def attend(self, q: Tensor, k: Tensor, v: Tensor, L: int) -> Tensor:
        """Softmax attention inside consecutive strips of ``L`` tokens (the last one may be
        shorter). Shapes: q, k, v ``[B, N, C]`` -> ``[B, N, C]``."""
        H, N = self.cfg.heads, q.shape[1]
        full = N - N % L

        def run(a: int, b: int, strip: int) -> Tensor:
            qs, ks, vs = (
                rearrange(t[:, a:b], "b (s l) (h d) -> (b s) h l d", l=strip, h=H)
                for t in (q, k, v)
            )
            o = F.scaled_dot_product_attention(qs, ks, vs)  # [B*strips, H, l, d]
            return rearrange(o, "(b s) h l d -> b (s l) (h d)", b=q.shape[0])

        parts = [run(0, full, L)] if full else []
        if full < N:
            parts.append(run(full, N, N - full))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        B, h, w, C = x.shape
        L, _ = self.check_grid(h, w)
        qkv = linear_bn(x, self.qkv.weight, None, self.qkv_bn)  # [B, h, w, 3C]
        v_img = rearrange(qkv[..., 2 * C :], "b h w c -> b c h w")
        pe = rearrange(conv_bn(v_img, self.pe, self.pe_bn), "b c h w -> b h w c")  # [B, h, w, C]
        q, k, v = rearrange(qkv, "b h w c -> b (h w) c").split(C, dim=-1)  # [B, N, C] each
        o = rearrange(self.attend(q, k, v, L), "b (h w) c -> b h w c", w=w)
        return linear_bn(o + pe, self.proj.weight, None, self.proj_bn)  # [B, h, w, C]
