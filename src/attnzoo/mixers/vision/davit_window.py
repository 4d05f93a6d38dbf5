"""DaViT window self-attention (V-DAVIT, the "spatial" half of DaViT's dual attention).

Ding et al., "DaViT: Dual Attention Vision Transformers", 2022.
https://arxiv.org/abs/2204.03645  Code: https://github.com/dingmyu/davit
(``timm/models/davit.py`` in that repository: ``WindowAttention`` as ``SpatialBlock`` applies
it). The peer tests compare against timm's ``timm.models.davit.WindowAttention`` (with
``SpatialBlock``'s pad, partition and reverse) and ``SpatialBlock`` itself.

On channels-last ``x [B, h, w, C]`` with window side ``s`` and ``C = H * d``, as ``SpatialBlock``
does it: zero-pad the *input* grid at the bottom/right to multiples of ``s``
(:func:`~attnzoo.ops.window.pad_grid`; padded tokens are not masked: they enter as keys and
values with ``x = 0``, i.e. ``k = b_k, v = b_v``), ``q, k, v = x W_qkv + b``, multi-head softmax
attention inside each non-overlapping ``s x s`` window (scale ``d**-0.5``, no relative position
bias, as in DaViT), output projection, crop the padding. This is the padding policy of
:mod:`attnzoo.ops.window` for blocks that pad before projecting: the op runs on the divisible
grid with no ``sizes``. Works on any grid ``h x w``.

**Paths** (``impl``), both through :func:`attnzoo.ops.window.window_attention`:

- ``reference``: the plain projections with every bias, and the op's reference (dense
  ``[N, N]`` softmax weights over the padded grid, masked to each query's window).
- ``sdpa`` (``auto``): windows first, as timm's ``SpatialBlock`` does: the padded ``x`` is cut
  into windows (:func:`~attnzoo.ops.window.partition`), projected there, attended with the op's
  SDPA path (each window passed as a grid of one window, so q, k and v need no partition of
  their own: one copy of ``x`` instead of three of ``q, k, v``, ~10% of the call on CPU at
  56x56x96), projected out and merged back (:func:`~attnzoo.ops.window.merge`). Two exact
  rewrites save passes over the activations: the key bias is dropped from the compute (it adds
  ``q_i . b_k`` to every score of row ``i``, which softmax ignores; its gradient is zero, in
  timm too up to rounding) and the value bias moves after attention (rows of the attention
  sum to 1, so ``P (V + b_v) W_p^T + b_p = P V W_p^T + (W_p b_v + b_p)``).

**Attention maps** (exact): weights ``[B, H, h·w, M]`` from the real query tokens to the keys
of the *padded* grid, ``M = h'·w'`` with ``h' = ceil(h/s)·s`` (likewise ``w'``), row-major:
padded tokens are attended keys (their value is ``b_v``), so they are columns of the map.

Left out: the surrounding block (``ConvPosEnc``, norms, MLP, drop path).
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
from attnzoo.mixers.common import load_matching_state
from attnzoo.mixers.vision.davit_channel import PAPER, DaViTConfig
from attnzoo.ops.masks import Mask
from attnzoo.ops.window import (
    crop_grid,
    merge,
    pad_grid,
    partition,
    window_attention,
    window_weights,
)
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case
from attnzoo.registry import register_mixer
from attnzoo.spec import ExportSupport


@dataclasses.dataclass(frozen=True)
class DaViTWindowConfig(DaViTConfig):
    """DaViT window self-attention: :class:`~attnzoo.mixers.vision.davit_channel.DaViTConfig`
    plus

    Attributes:
        window_size: side of the square windows (DaViT: 7); grids are zero-padded up to a
            multiple of it, as in timm.
        impl: ``auto`` (``sdpa``) | ``reference`` (dense masked weights) | ``sdpa``.
    """

    window_size: int = limit(7, ge=1)
    impl: Literal["auto", "reference", "sdpa"] = "auto"


def window_flops(
    cfg: DaViTWindowConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """``T = h*w``: projections and ``window_size²`` keys per query (padding not counted)."""
    C, n = cfg.d_model, cfg.window_size**2
    return 2 * batch * T * 4 * C * C + 2 * 2 * batch * T * n * C


@register_mixer(
    "davit_window",
    config=DaViTWindowConfig,
    family="sparse",
    layout="grid2d",
    attention_maps=True,
    complexity="O(h·w·C·(C + s²)) time with window side s; O(B·h·w·s²) scores per head",
    paper=PAPER,
    peer="timm.models.davit.WindowAttention + window_partition/pad as in SpatialBlock (tests, "
    "both paths)",
    export=ExportSupport(
        dynamic="pads h, w to multiples of the window (7) in Python only where needed, which "
        "fixes the padding; sides declared as multiples, Dim(...)*7, export"
    ),
    flops=window_flops,
)
class DaViTWindowMixer(Mixer):
    cfg: DaViTWindowConfig

    def __init__(self, cfg: DaViTWindowConfig) -> None:
        super().__init__(cfg)
        C = cfg.d_model
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)
        self.proj = nn.Linear(C, C)

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[..., 3C] -> q, k, v [..., H, d]`` (views)."""
        q, k, v = qkv.unflatten(-1, (3, self.cfg.heads, -1)).unbind(-3)
        return q, k, v

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        s = self.cfg.window_size
        xp = pad_grid(x, s)  # zeros at the bottom/right, as timm [B, h', w', C]
        if self.cfg.impl == "reference":
            q, k, v = self._heads(self.qkv(xp))
            o = window_attention(q, k, v, s, impl="reference")  # [B, h', w', H, d]
            y = self.proj(o.flatten(-2))
        else:
            # one window per grid: q, k, v come out of the projection already partitioned
            xw = partition(xp, s).unflatten(1, (s, s))  # [B·nW, s, s, C]
            qkv = F.linear(xw, self.qkv.weight)  # no bias yet [B·nW, s, s, 3C]
            b_out = self.proj.bias
            if self.qkv.bias is not None:
                C = self.cfg.d_model
                bq, _, bv = self.qkv.bias.view(3, C)
                # q bias in place; the key bias cannot change a softmax row (module docstring)
                qkv[..., :C].add_(bq)
                b_out = torch.addmv(b_out, self.proj.weight, bv)  # the value bias, moved
            q, k, v = self._heads(qkv)
            o = window_attention(q, k, v, s, impl="sdpa")  # [B·nW, s, s, H, d]
            y = F.linear(o.flatten(-2), self.proj.weight, b_out)  # [B·nW, s, s, C]
            y = merge(y.flatten(1, 2), xp.shape[1:3], s)  # [B, h', w', C]
        if y.shape[1:3] == x.shape[1:3]:
            return y
        return crop_grid(y, x.shape[1:3]).contiguous()  # crop the padding

    def maps(self, x: Tensor, context: None, mask: Mask | None) -> AttentionMaps:
        """Weights ``[B, H, h·w, h'·w']`` from the real queries to the padded grid's keys; values
        ``[B, H, h'·w', d]`` (``b_v`` on padded tokens); exact (see the module docstring)."""
        B, h, w, _ = x.shape
        q, k, v = self._heads(self.qkv(pad_grid(x, self.cfg.window_size)))
        a = window_weights(q, k, self.cfg.window_size)  # [B, H, h'·w', h'·w']
        a = a.unflatten(2, q.shape[1:3])[:, :, :h, :w].flatten(2, 3)  # [B, H, h·w, h'·w']
        values = rearrange(v, "b y x n d -> b n (y x) d")
        finish = lambda o: self.proj(rearrange(o, "b n (y x) d -> b y x (n d)", y=h))  # noqa: E731
        return AttentionMaps(a, values, finish)


def load_timm_weights(mixer: DaViTWindowMixer, timm_module: nn.Module) -> None:
    """Copy a timm ``WindowAttention`` into ``mixer``: the parameters have the names and layouts
    :func:`attnzoo.mixers.vision.davit_channel.load_timm_weights` lists; any mismatch raises
    ``ValueError``."""
    load_matching_state(mixer, timm_module.state_dict(), source="timm")


# ---- peer: timm's WindowAttention in SpatialBlock's pad / partition / reverse ----------------
PEER_BATCH = 8


def _timm_case(side: int, g: torch.Generator) -> PeerPair:
    """DaViT-T's first stage (C = 96, 3 heads, window 7) on ``[B, side, side, C]``; timm's
    padding, partition and reverse (what its ``SpatialBlock`` does around the attention) are
    timed on its side."""
    from timm.models.davit import WindowAttention, window_partition, window_reverse

    C, s = 96, 7
    theirs = randomise_biases(WindowAttention(C, (s, s), num_heads=3, qkv_bias=True), g)
    ours = DaViTWindowMixer(DaViTWindowConfig(d_model=C, num_heads=3, window_size=s)).eval()
    load_timm_weights(ours, theirs)
    x = torch.randn(PEER_BATCH, side, side, C, generator=g)

    def peer() -> Tensor:
        pad = -side % s
        xp = F.pad(x, (0, 0, 0, pad, 0, pad))
        Hp, Wp = xp.shape[1:3]
        out = theirs(window_partition(xp, (s, s)).view(-1, s * s, C)).view(-1, s, s, C)
        return window_reverse(out, (s, s), Hp, Wp)[:, :side, :side]

    return PeerPair(ours=lambda: ours(x), peer=peer,
                    flops=window_flops(ours.cfg, PEER_BATCH, side * side, None, None),
                    size=f"B={PEER_BATCH} {side}x{side}x{C} window {s}")  # fmt: skip


register_case(PeerCase("davit_window/timm", "davit_window", "timm davit.WindowAttention (+ pad, "
                       "partition, reverse)", ("timm", "torchvision"), _timm_case, (28, 56), (56,),
                       smoke_size=9))  # fmt: skip
