"""DaViT channel group attention (V-DAVIT, the "channel" half of DaViT's dual attention).

Ding et al., "DaViT: Dual Attention Vision Transformers", 2022.
https://arxiv.org/abs/2204.03645  Code: https://github.com/dingmyu/davit
(``timm/models/davit.py`` in that repository: ``ChannelAttention``, ``ChannelBlock``). The peer
tests compare against timm's ``timm.models.davit.ChannelAttention`` and ``ChannelBlock``.

On channels-last ``x [B, h, w, C]``, tokens flattened row-major (``N = h*w``), ``C = H * d``:
``q, k, v = x W_qkv + b`` split into ``H`` channel groups ``[N, d]``; per group a ``d x d``
attention over channels, ``A = softmax_j(d**-0.5 * (k^T v)[i, j])``,
``o[n, i] = sum_j A[i, j] q[n, j]`` (``q`` plays the role of the values, as in the official
code), then ``y = concat(o) W_p + b_p``. Linear in ``N``; works on any grid ``h x w``.

**Paths** (``impl``):

- ``reference``: the official order, written out: project, ``k^T v`` per group, softmax,
  ``A q``, project.
- ``gram``: the same function in another order: ``k^T v = W_k (x^T x) W_v^T`` plus bias terms,
  and ``q``, ``A`` and ``W_p`` fold into one per-sample ``[C, C]`` matrix, so the call costs
  ``2·N·C²`` (``x^T x`` and ``x W_eff``) plus ``O(C³)`` instead of ``4·N·C² + 2·N·C·d``.
- ``auto``: ``gram`` when ``h*w >= C``, else ``reference`` (the official order is the cheaper
  one on grids with fewer tokens than channels).

The two round differently (``gram`` sums ``x x^T`` before projecting); at 56x56x96 both stay
within ~1e-5 relative of a float64 evaluation, with or without a LayerNorm in front.

No attention maps: the weights are ``d x d`` channel maps per group, not token maps.

Left out: the surrounding block (``ConvPosEnc``, norms, MLP, drop path) and the Florence-2
``ChannelAttentionV2`` variant (dynamic ``N**-0.5`` scale, ``q^T k`` order).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig, default_heads, load_matching_state
from attnzoo.ops.masks import Mask
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case, tokens_peer_pair
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="DaViT: Dual Attention Vision Transformers",
    year=2022,
    url="https://arxiv.org/abs/2204.03645",
    code="https://github.com/dingmyu/davit",
)

HEAD_WIDTH = 32  # DaViT's group / head width (3, 6, 12, 24 heads at C = 96, 192, 384, 768)


def davit_heads(d_model: int) -> int:
    """``d_model // 32`` when 32 divides ``d_model``, else :func:`default_heads` (DaViT's
    head-width default, shared with ``davit_window``)."""
    return d_model // HEAD_WIDTH if d_model % HEAD_WIDTH == 0 else default_heads(d_model)


@dataclasses.dataclass(frozen=True)
class DaViTConfig(HeadsConfig):
    """What both DaViT mixers share. ``d_model`` is the channel count C.

    Attributes:
        num_heads: heads (channel groups); ``None`` means head width 32 (DaViT's) when 32
            divides C, else :func:`~attnzoo.mixers.common.default_heads`.
        qkv_bias: bias on the q/k/v projection (DaViT models: on).
    """

    qkv_bias: bool = True

    def default_num_heads(self) -> int:
        return davit_heads(self.d_model)


@dataclasses.dataclass(frozen=True)
class DaViTChannelConfig(DaViTConfig):
    """DaViT channel group attention: :class:`DaViTConfig` plus

    Attributes:
        impl: ``auto`` | ``reference`` (official order) | ``gram`` (folded, ``x^T x`` first).
    """

    impl: Literal["auto", "reference", "gram"] = "auto"


def channel_flops(
    cfg: DaViTChannelConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """``T = h*w``. Official order: q/k/v and output projections, ``k^T v`` and ``A q`` per
    group (softmax not counted). ``impl="gram"`` does fewer: see the module docstring."""
    C, d = cfg.d_model, cfg.dim_head
    return 2 * batch * T * 4 * C * C + 2 * 2 * batch * T * C * d


@register_mixer(
    "davit_channel",
    config=DaViTChannelConfig,
    family="other",
    layout="grid2d",
    complexity="O(h·w·C²) time (softmax over d x d channel scores per group); O(H·d²) scores",
    paper=PAPER,
    peer="timm.models.davit.ChannelAttention / ChannelBlock (tests, both paths)",
    flops=channel_flops,
)
class DaViTChannelMixer(Mixer):
    cfg: DaViTChannelConfig

    def __init__(self, cfg: DaViTChannelConfig) -> None:
        super().__init__(cfg)
        C = cfg.d_model
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)
        self.proj = nn.Linear(C, C)

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
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


def load_timm_weights(mixer: DaViTChannelMixer, timm_module: nn.Module) -> None:
    """Copy a timm ``ChannelAttention`` into ``mixer``. The parameter names and layouts are the
    same: ``qkv.weight [3C, C]`` (rows ordered q, k, v, then head, then channel),
    ``qkv.bias [3C]``, ``proj.weight [C, C]``, ``proj.bias [C]``. Raises ``ValueError`` on
    missing, extra or mis-shaped entries (e.g. a different width or ``qkv_bias`` setting)."""
    load_matching_state(mixer, timm_module.state_dict(), source="timm")


# ---- peer: timm's ChannelAttention (issue 5's sizes: forward, fp32, batch 8, same weights) ----
PEER_BATCH = 8


def _timm_case(side: int, g: torch.Generator) -> PeerPair:
    """DaViT-T's first stage (C = 96, 3 groups); timm takes ``[B, N, C]`` tokens, a free view
    of our channels-last grid (row-major)."""
    from timm.models.davit import ChannelAttention

    C = 96
    theirs = randomise_biases(ChannelAttention(C, num_heads=3, qkv_bias=True), g)
    ours = DaViTChannelMixer(DaViTChannelConfig(d_model=C, num_heads=3)).eval()
    load_timm_weights(ours, theirs)
    x = torch.randn(PEER_BATCH, side, side, C, generator=g)
    return tokens_peer_pair(
        ours, theirs, x, channel_flops(ours.cfg, PEER_BATCH, side * side, None, None)
    )


register_case(PeerCase("davit_channel/timm", "davit_channel", "timm davit.ChannelAttention",
                       ("timm", "torchvision"), _timm_case, (28, 56), (56,),
                       smoke_size=9))  # fmt: skip
