"""L2ViT token mixer (S-L2VIT): clamped ReLU linear attention + local concentration module.

Zheng, "The Linear Attention Resurrection in Vision Transformer", 2025.
https://arxiv.org/abs/2501.16182  Code: https://github.com/ChuanyangZheng/L2ViT
(``classification/models/l2vit.py``: ``LinearAttention``, ``LCM``, ``LGABlock``).

On channels-last ``x [B, h, w, C]``, tokens flattened row-major (``N = h*w``), per head
(``C = H * d``):

1. ``q, k = ReLU(x W_q + b_q), ReLU(x W_k + b_k)``, ``v = x W_v + b_v`` (one ``qkv`` linear,
   bias on by default as in ``LGABlock``).
2. ``o_i = tau_h * q_i (sum_j k_j^T v_j) / max(q_i . sum_j k_j, clamp_min)``: the official
   kv-first path, ``O(N·d^2)`` per head. ``tau_h`` is a learnable per-head temperature
   initialised to ``d**-0.5``; ``clamp_min = 100`` as in the official code (the commented
   qk-first variant there uses 1.0 and the fixed scale instead of ``tau``; not offered).
   Numerator and denominator come from :func:`attnzoo.ops.linear.linear_attention` in one call,
   with a column of ones appended to ``v``.
3. ``a = concat_heads(o) W_o + b_o`` (``LinearAttention.proj``).
4. LCM (``enhanced=True`` in the official block), a separate residual branch on the stream
   after attention: ``u = x + a``, ``LCM(u) = DWConv7x7(BN(GELU(DWConv7x7(u))))`` (depthwise,
   biased convolutions, ``BatchNorm2d(C)``).

The mixer returns ``y = a + LCM(x + a)`` (``y = a`` when ``lcm=False``), so that a residual
wrapper ``x + y`` equals the official ``LGABlock.forward`` up to its MLP branch::

    x = x + attn(norm1(x));  x = x + LCM(norm3(x))

with ``norm1 = norm3 = identity``, no drop path. Left out (they belong to the surrounding
block): the CPE 3x3 depthwise positional conv before attention, ``norm1``/``norm3``/``norm2``,
the MLP branch, drop path, and dropout (0 in the official configs). The LWA (window softmax)
blocks that L2ViT alternates with are a different mixer.

BatchNorm: in ``train()`` mode LCM normalises with the statistics of the current batch
(over ``B, h, w`` per channel; PyTorch then needs more than one value per channel, so a
``1 x 1`` grid with batch 1 raises) and updates its running statistics; in ``eval()`` mode it
uses the running statistics and the mixer is a deterministic per-sample function. Compare
numbers in eval mode. Works on any grid ``h x w``.

Paths (``impl``):

- ``reference``: the official (commented) qk-first form, written out: the ``[B, H, N, N]``
  score matrix ``S = q k^T`` materialised, the weights ``A = S / max(rowsum(S), clamp_min)``
  (``L2ViTMixer._weights``), ``o = tau * A v``; the LCM by
  :func:`~attnzoo.ops.conv.depthwise_conv` ``(impl="reference")`` (shifted copies), GELU and
  :func:`~attnzoo.mixers.vision.batchnorm.bn_reference` (``L2ViTMixer._lcm_reference``). In train
  mode it normalises with batch statistics but does not update the running statistics (it is
  the spec the fast path is checked against, not a training path). ``O(N²)`` memory per head.
- ``chunk`` (``auto``): the kv-first global state above through
  :func:`~attnzoo.ops.linear.linear_attention`, ``O(N·d²)``; the LCM with ``nn.Conv2d`` and
  ``nn.BatchNorm2d`` on a channels-last ``[B, C, h, w]`` view.

Precision: in float16 both paths compute the attention in float32 and cast the normalised
output back (``attention`` for ``chunk``, ``_weights`` for ``reference``): the sums over a few
hundred tokens, numerator and denominator, pass float16's range (65504); their ratio does not.

Attention maps: the weights ``A`` (normalised and clamped, without the temperature), the values
``v``; ``finish`` applies ``tau``, the output projection and the LCM branch, so
``finish(A @ v)`` is the mixer's output.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.mixers.vision.batchnorm import bn_reference
from attnzoo.ops.conv import depthwise_conv
from attnzoo.ops.linear import linear_attention, linear_attention_flops
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import LowPrecision, Tolerance

PAPER = Paper(
    title="The Linear Attention Resurrection in Vision Transformer",
    year=2025,
    url="https://arxiv.org/abs/2501.16182",
    code="https://github.com/ChuanyangZheng/L2ViT",
)


@dataclasses.dataclass(frozen=True)
class L2ViTConfig(HeadsConfig):
    """L2ViT LGA mixer. ``d_model`` is the channel count C.

    Attributes:
        num_heads: heads; ``None`` means :func:`~attnzoo.mixers.common.default_heads`
            (L2ViT itself uses head width 32, e.g. 3 heads at C=96).
        qkv_bias: bias on the q/k/v projection (official ``LGABlock`` default: on).
        clamp_min: lower clamp of the denominator ``q . sum_j k_j`` (official: 100); a finite
            float > 0 (0 divides by zero when a ReLU query is all zeros).
        lcm: add the local concentration module branch (official ``enhanced=True``).
        lcm_kernel_size: kernel of both depthwise LCM convolutions (official: 7); odd.
        bn_eps: epsilon of the LCM BatchNorm.
        impl: ``auto`` (= ``chunk``) | ``reference`` (materialised ``[N, N]`` scores,
            shift-and-add LCM) | ``chunk`` (kv-first global state, ``nn.Conv2d`` LCM).
    """

    qkv_bias: bool = True
    clamp_min: float = limit(100.0, gt=0, finite=True)
    lcm: bool = True
    lcm_kernel_size: int = limit(7, ge=1, odd=True)
    bn_eps: float = limit(1e-5, gt=0)
    impl: Literal["auto", "reference", "chunk"] = "auto"


def l2vit_flops(cfg: L2ViTConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T`` is the token count ``h*w``: q/k/v and output projections, the kv-first linear
    attention with its denominator, and the two depthwise LCM convolutions (elementwise GELU,
    BatchNorm, clamp and division not counted)."""
    C, H, d = cfg.d_model, cfg.heads, cfg.dim_head
    proj = 2 * batch * T * (C * 3 * C + C * C)
    attn = linear_attention_flops(batch, H, d, d, T, T, normalize=True)
    lcm = 2 * (2 * batch * T * C * cfg.lcm_kernel_size**2) if cfg.lcm else 0
    return proj + attn + lcm


class LocalConcentration(nn.Module):
    """LCM: ``DWConv -> GELU -> BatchNorm2d -> DWConv`` on ``[B, C, h, w]`` (same size)."""

    def __init__(self, channels: int, kernel_size: int, bn_eps: float) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, groups=channels)
        self.bn = nn.BatchNorm2d(channels, eps=bn_eps)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.bn(F.gelu(self.conv1(x))))  # [B, C, h, w]


@register_mixer(
    "l2vit",
    config=L2ViTConfig,
    family="linear",
    layout="grid2d",
    attention_maps=True,
    complexity="O(h·w·C·(d + k²)) time with head width d, LCM kernel k; O(H·d²) attention state",
    paper=PAPER,
    peer="impl='reference': explicit [h*w, h*w] clamped ReLU score matrix, shift-and-add LCM "
    "and BatchNorm; the LCM module against F.conv2d (tests)",
    flops=l2vit_flops,
    # impl='reference' adds the LCM convs' shifted copies one by one, rounding every partial sum
    low_precision=LowPrecision(bfloat16=Tolerance(rtol=2.5e-2), float16=Tolerance(rtol=3e-3)),
)
class L2ViTMixer(Mixer):
    cfg: L2ViTConfig

    def __init__(self, cfg: L2ViTConfig) -> None:
        super().__init__(cfg)
        C, H = cfg.d_model, cfg.heads
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)
        self.temperature = nn.Parameter(torch.full((H,), cfg.dim_head**-0.5))
        self.proj = nn.Linear(C, C)
        self.lcm = LocalConcentration(C, cfg.lcm_kernel_size, cfg.bn_eps) if cfg.lcm else None

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k = ReLU(.)``, ``v``. Shapes: x ``[B, N, C]`` -> ``[B, N, H, d]`` each."""
        H = self.cfg.heads
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=H)
        return F.relu(q), F.relu(k), v

    def _weights(self, q: Tensor, k: Tensor) -> Tensor:
        """The normalised clamped weights ``A = S / max(rowsum(S), clamp_min)``, ``S = q k^T``.

        float16 ``q``/``k`` are computed in float32 and the weights cast back: the row sums
        pass float16's largest value (65504) at a few hundred tokens.

        Shapes: q, k ``[B, N, H, d]`` -> ``[B, H, N, N]``."""
        dtype = q.dtype
        if dtype == torch.float16:
            q, k = q.float(), k.float()
        q, k = (rearrange(t, "b n h d -> b h n d") for t in (q, k))
        scores = q @ k.transpose(-1, -2)  # [B, H, N, N]
        return (scores / scores.sum(-1, keepdim=True).clamp(min=self.cfg.clamp_min)).to(dtype)

    def _out(self, o: Tensor) -> Tensor:
        """The temperature and the output projection. Shapes: o ``[B, H, N, d]`` ->
        ``[B, N, C]``."""
        o = o * self.temperature[:, None, None]
        return self.proj(rearrange(o, "b h n d -> b n (h d)"))

    def attention(self, x: Tensor) -> Tensor:
        """The clamped ReLU linear attention with output projection.

        Shapes: x ``[B, N, C]`` -> ``[B, N, C]``."""
        q, k, v = self._qkv(x)  # [B, N, H, d]
        if self.cfg.impl == "reference":
            return self._out(self._weights(q, k) @ rearrange(v, "b n h d -> b h n d"))
        v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # [B, N, H, d + 1]
        dtype = v.dtype
        if dtype == torch.float16:  # numerator and denominator pass its range, the ratio not
            q, k, v1 = q.float(), k.float(), v1.float()
        o = linear_attention(q, k, v1, causal=False, scale=1.0, impl=self.cfg.impl)
        num, den = o[..., :-1], o[..., -1:]  # q (k^T v) [B, N, H, d]; q . sum_j k_j [B, N, H, 1]
        o = (num * self.temperature[:, None] / den.clamp(min=self.cfg.clamp_min)).to(dtype)
        return self.proj(rearrange(o, "b n h d -> b n (h d)"))  # [B, N, C]

    def _lcm_reference(self, u: Tensor) -> Tensor:
        """``DWConv(BN(GELU(DWConv(u))))`` written out. Shapes: u ``[B, h, w, C]`` -> same."""
        assert self.lcm is not None
        lcm = self.lcm
        t = depthwise_conv(u, lcm.conv1.weight, lcm.conv1.bias, impl="reference")
        t = bn_reference(lcm.bn, F.gelu(t))  # [B, h, w, C]
        return depthwise_conv(t, lcm.conv2.weight, lcm.conv2.bias, impl="reference")

    def _with_lcm(self, a: Tensor, x: Tensor) -> Tensor:
        """``a + LCM(x + a)`` (``a`` without the LCM). Shapes: a, x ``[B, h, w, C]`` -> same."""
        if self.lcm is None:
            return a
        if self.cfg.impl == "reference":
            return a + self._lcm_reference(x + a)
        u = rearrange(x + a, "b h w c -> b c h w")  # the stream after the attention residual
        return a + rearrange(self.lcm(u), "b c h w -> b h w c")

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        a = self.attention(rearrange(x, "b h w c -> b (h w) c"))  # [B, N, C]
        return self._with_lcm(rearrange(a, "b (h w) c -> b h w c", w=x.shape[2]), x)

    def maps(self, x: Tensor, context: None, mask: Mask | None) -> AttentionMaps:
        """The normalised clamped weights ``[B, H, h*w, h*w]`` (without the temperature); exact."""
        w = x.shape[2]
        q, k, v = self._qkv(rearrange(x, "b h w c -> b (h w) c"))  # [B, N, H, d]

        def finish(o: Tensor) -> Tensor:  # [B, H, N, d] -> [B, h, w, C]
            a = rearrange(self._out(o), "b (h w) c -> b h w c", w=w)
            return self._with_lcm(a, x)

        return AttentionMaps(self._weights(q, k), rearrange(v, "b n h d -> b h n d"), finish)
