"""DaViT token mixers (V-DAVIT): channel group attention and window self-attention.

Ding et al., "DaViT: Dual Attention Vision Transformers", 2022.
https://arxiv.org/abs/2204.03645  Code: https://github.com/dingmyu/davit
(``timm/models/davit.py`` in that repository: ``ChannelAttention``, ``WindowAttention``,
``SpatialBlock``). The peer tests compare against timm's ``timm.models.davit.ChannelAttention``
and ``timm.models.davit.WindowAttention`` / ``SpatialBlock``.

On channels-last ``x [B, h, w, C]``, tokens flattened row-major (``N = h*w``), ``C = H * d``:

``davit_channel`` (channel group attention, linear in ``N``): ``q, k, v = x W_qkv + b``
split into ``H`` channel groups ``[N, d]``; per group a ``d x d`` attention over channels,
``A = softmax_j(d**-0.5 * (k^T v)[i, j])``, ``o[n, i] = sum_j A[i, j] q[n, j]`` (``q`` plays the
role of the values, as in the official code), then ``y = concat(o) W_p + b_p``.
``impl="gram"`` computes the same thing in another order: ``k^T v = W_k (x^T x) W_v^T`` plus
bias terms, and ``q``, ``A`` and ``W_p`` fold into one per-sample ``[C, C]`` matrix, so the call
costs ``2·N·C²`` (``x^T x`` and ``x W_eff``) plus ``O(C³)`` instead of ``4·N·C² + 2·N·C·d``.
``impl="reference"`` follows the official order. ``auto`` picks ``gram`` when ``h*w >= C``.
The two round differently (``gram`` sums ``x x^T`` before projecting); at 56x56x96 both stay
within ~1e-5 relative of a float64 evaluation, with or without a LayerNorm in front.

``davit_window`` (window self-attention, as ``SpatialBlock`` applies ``WindowAttention``):
zero-pad the grid at the bottom/right to multiples of ``window_size`` (as timm does; padded
tokens are not masked: they enter as keys/values with ``x = 0``, i.e. ``k = b_k, v = b_v``),
cut non-overlapping ``window_size²`` windows, multi-head softmax attention inside each window
(no relative position bias, as in DaViT), output projection, merge windows, crop the padding.
Two exact rewrites save passes over the activations: the key bias is dropped from the compute
(it adds ``q_i . b_k`` to every score of row ``i``, which softmax ignores; its gradient is zero,
in timm too up to rounding) and the value bias moves after attention (rows of the attention
sum to 1, so ``P (V + b_v) W_p^T + b_p = P V W_p^T + (W_p b_v + b_p)``).

Left out: the surrounding blocks (``ConvPosEnc``, norms, MLP, drop path) and the Florence-2
``ChannelAttentionV2`` variant (dynamic ``N**-0.5`` scale, ``q^T k`` order). Both mixers work on
any grid ``h x w``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig, default_heads, load_matching_state
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="DaViT: Dual Attention Vision Transformers",
    year=2022,
    url="https://arxiv.org/abs/2204.03645",
    code="https://github.com/dingmyu/davit",
)

HEAD_WIDTH = 32  # DaViT's group / head width (3, 6, 12, 24 heads at C = 96, 192, 384, 768)


def davit_heads(d_model: int) -> int:
    """``d_model // 32`` when 32 divides ``d_model``, else :func:`default_heads`."""
    return d_model // HEAD_WIDTH if d_model % HEAD_WIDTH == 0 else default_heads(d_model)


@dataclasses.dataclass(frozen=True)
class DaViTChannelConfig(HeadsConfig):
    """DaViT channel group attention. ``d_model`` is the channel count C.

    Attributes:
        num_heads: channel groups; ``None`` means head width 32 (DaViT's) when 32 divides C,
            else :func:`~attnzoo.mixers.common.default_heads`.
        qkv_bias: bias on the q/k/v projection (DaViT models: on).
        impl: ``auto`` | ``gram`` (folded, ``x^T x`` first) | ``reference`` (official order).
    """

    qkv_bias: bool = True
    impl: Literal["auto", "gram", "reference"] = "auto"

    def default_num_heads(self) -> int:
        return davit_heads(self.d_model)


@dataclasses.dataclass(frozen=True)
class DaViTWindowConfig(HeadsConfig):
    """DaViT window self-attention. ``d_model`` is the channel count C.

    Attributes:
        num_heads: heads; ``None`` as in :class:`DaViTChannelConfig`.
        window_size: side of the square windows (DaViT: 7); grids are zero-padded up to a
            multiple of it, as in timm.
        qkv_bias: bias on the q/k/v projection (DaViT models: on).
    """

    window_size: int = limit(7, ge=1)
    qkv_bias: bool = True

    def default_num_heads(self) -> int:
        return davit_heads(self.d_model)


def channel_flops(
    cfg: DaViTChannelConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """``T = h*w``. Official order: q/k/v and output projections, ``k^T v`` and ``A q`` per
    group (softmax not counted). ``impl="gram"`` does fewer: see the module docstring."""
    C, d = cfg.d_model, cfg.dim_head
    return 2 * batch * T * 4 * C * C + 2 * 2 * batch * T * C * d


def window_flops(
    cfg: DaViTWindowConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """``T = h*w``: projections and ``window_size²`` keys per query (padding not counted)."""
    C, n = cfg.d_model, cfg.window_size**2
    return 2 * batch * T * 4 * C * C + 2 * 2 * batch * T * n * C


@register_mixer(
    "davit_channel",
    config=DaViTChannelConfig,
    family="other",
    dims=2,
    patterns=("noncausal-self",),
    masks=("full",),
    state="none",
    exact=False,
    complexity="O(h·w·C²) time (softmax over d x d channel scores per group); O(H·d²) scores",
    paper=PAPER,
    peer="timm.models.davit.ChannelAttention / ChannelBlock (tests)",
    flops=channel_flops,
)
class DaViTChannelMixer(Mixer):
    cfg: DaViTChannelConfig

    def __init__(self, cfg: DaViTChannelConfig) -> None:
        super().__init__(cfg)
        C = cfg.d_model
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)
        self.proj = nn.Linear(C, C)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        B, h, w, C = x.shape
        tokens = x.reshape(B, h * w, C)  # [B, N, C], row-major tokens
        impl = self.cfg.impl
        if impl == "auto":
            impl = "gram" if h * w >= C else "reference"
        y = self._gram(tokens) if impl == "gram" else self._reference(tokens)
        return y.view(B, h, w, C)

    def _reference(self, x: Tensor) -> Tensor:
        """The official order. Shapes: x ``[B, N, C]`` -> ``[B, N, C]``."""
        H, d = self.cfg.heads, self.cfg.dim_head
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=H)
        a = (torch.einsum("bhni,bhnj->bhij", k, v) * d**-0.5).softmax(-1)  # [B, H, d, d]
        o = torch.einsum("bhij,bhnj->bnhi", a, q)  # [B, N, H, d]
        return self.proj(o.reshape(x.shape))

    def _gram(self, x: Tensor) -> Tensor:
        """``k^T v`` from ``x^T x``; ``q``, ``A``, ``W_p`` folded. ``[B, N, C]`` -> ``[B, N, C]``."""
        B, N, C = x.shape
        H, d = self.cfg.heads, self.cfg.dim_head
        wq, wk, wv = self.qkv.weight.view(3, C, C)  # rows (head, channel) of each
        wp = self.proj.weight
        u = torch.bmm(x.transpose(1, 2), x) @ wv.t()  # G W_v^T with G = x^T x [B, C, C]
        if self.qkv.bias is not None:
            bq, bk, bv = self.qkv.bias.view(3, C)
            s = x.sum(1)  # [B, C]
            u = torch.addcmul(u, s[:, :, None], bv)  # x^T v = G W_v^T + s b_v^T
            v_sum = torch.addmm(bv * N, s, wv.t())  # sum_n v_n [B, C]
        kv = (wk @ u).view(B, H, d, H, d).diagonal(dim1=1, dim2=3)  # W_k x^T v, diagonal blocks
        kv = kv.permute(0, 3, 1, 2)  # [B, H, d(i), d(j)]
        if self.qkv.bias is not None:
            kv = torch.addcmul(kv, bk.view(H, d, 1), v_sum.view(B, H, 1, d))  # + b_k sum_n v_n^T
        a = torch.softmax(kv * d**-0.5, dim=-1)  # [B, H, d, d]
        # y = (x W_q^T + b_q) blockdiag(A)^T W_p^T + b_p
        w_eff = wp @ (a @ wq.view(H, d, C)).reshape(B, C, C)  # W_p blockdiag(A) W_q [B, C, C]
        if self.qkv.bias is not None:
            b_eff = torch.addmm(self.proj.bias, (a @ bq.view(H, d, 1)).view(B, C), wp.t())
        else:
            b_eff = self.proj.bias.expand(B, C)
        return torch.baddbmm(b_eff[:, None], x, w_eff.transpose(1, 2))  # [B, N, C]


@register_mixer(
    "davit_window",
    config=DaViTWindowConfig,
    family="sparse",
    dims=2,
    patterns=("noncausal-self",),
    masks=("full",),
    state="none",
    exact=False,
    complexity="O(h·w·C·(C + s²)) time with window side s; O(B·h·w·s²) scores per head",
    paper=PAPER,
    peer="timm.models.davit.WindowAttention + window_partition/pad as in SpatialBlock (tests)",
    flops=window_flops,
)
class DaViTWindowMixer(Mixer):
    cfg: DaViTWindowConfig

    def __init__(self, cfg: DaViTWindowConfig) -> None:
        super().__init__(cfg)
        C = cfg.d_model
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)
        self.proj = nn.Linear(C, C)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        B, h, w, C = x.shape
        s, H = self.cfg.window_size, self.cfg.heads
        pad_b, pad_r = -h % s, -w % s
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # zeros at the bottom/right, as timm
        gh = x.shape[1] // s
        xw = rearrange(x, "b (gh i) (gw j) c -> (b gh gw) (i j) c", i=s, j=s)  # [B', s², C]
        qkv = torch.matmul(xw, self.qkv.weight.t())  # no bias yet [B', s², 3C]
        b_out = self.proj.bias
        if self.qkv.bias is not None:
            bq, _, bv = self.qkv.bias.view(3, C)
            # q bias in place; the key bias cannot change a softmax row (module docstring)
            qkv.view(*qkv.shape[:2], 3, C)[:, :, 0].add_(bq)
            b_out = torch.addmv(b_out, self.proj.weight, bv)  # the value bias, moved
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=H)
        o = F.scaled_dot_product_attention(q, k, v)  # [B', H, s², d]
        o = F.linear(rearrange(o, "b h n d -> b n (h d)"), self.proj.weight, b_out)
        o = rearrange(o, "(b gh gw) (i j) c -> b (gh i) (gw j) c", b=B, gh=gh, i=s)  # merge
        return o[:, :h, :w].contiguous() if pad_b or pad_r else o  # crop the padding


def load_timm_weights(mixer: DaViTChannelMixer | DaViTWindowMixer, timm_module: nn.Module) -> None:
    """Copy a timm ``ChannelAttention`` (into ``davit_channel``) or ``WindowAttention`` (into
    ``davit_window``) into ``mixer``. The parameter names and layouts are the same:
    ``qkv.weight [3C, C]`` (rows ordered q, k, v, then head, then channel), ``qkv.bias [3C]``,
    ``proj.weight [C, C]``, ``proj.bias [C]``. Raises ``ValueError`` on missing, extra or
    mis-shaped entries (e.g. a different width or ``qkv_bias`` setting)."""
    load_matching_state(mixer, timm_module.state_dict(), source="timm")
