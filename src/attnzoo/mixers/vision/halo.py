"""HaloNet token mixer (V-HALO): blocked local self-attention with a halo and relative positions.

Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones", 2021.
https://arxiv.org/abs/2103.12731  No official code was released; the de-facto reference is timm
(https://github.com/huggingface/pytorch-image-models, ``timm/layers/halo_attn.py``:
``HaloAttn`` with ``PosEmbedRel``), which the peer test compares against.

On channels-last ``x [B, h, w, C]`` with block size ``b``, halo ``r`` (``halo_size``) and
window ``s = b + 2r``, per head (``n`` heads, query/key width ``dk``, value width ``dv = C/n``):

1. ``q = x W_q + b_q``, ``k = x W_k + b_k``, ``v = x W_v + b_v`` per pixel (timm's 1x1 convs
   ``q`` and ``kv``; bias off by default as in timm).
2. The query grid is cut into non-overlapping ``b x b`` blocks. ``k`` and ``v`` are zero-padded
   by ``r`` on every side *after* the projection (so an out-of-image key is ``k = 0, v = 0``, not
   the bias) and each block attends to the ``s x s`` window centred on it.
3. ``logits = scale * q . k + rel(q)`` with ``scale = dk**-0.5`` (``scale_pos_embed=True``:
   ``scale * (q . k + rel(q))``), where for a query at block offset ``(qy, qx)`` and a key at
   window offset ``(ky, kx)``::

       rel(q) = q . R_h[ky - qy + b - 1] + q . R_w[kx - qx + b - 1]

   i.e. ``R_h``, ``R_w`` ``[2(b + r) - 1, dk]`` are indexed by the displacement
   ``(ky - r) - qy`` shifted to start at 0 (the factorised relative embedding of
   "Attention Augmented Convolutional Networks", https://arxiv.org/abs/1904.09925).
4. ``o = softmax(logits) v`` over the window; heads are concatenated as ``(head, dv)``.
   There is no output projection (timm's ``HaloAttn`` has none; in HaloNet the following 1x1
   conv of the bottleneck plays that role).

**Paths** (``impl``), both through :func:`attnzoo.ops.window.window_attention` with ``halo=r``,
``sizes=(h, w)`` and the relative logits as a query-dependent ``bias`` (``rel(q) = q . E``, where
``E [b², s², dk]`` is the summed embedding per (query offset, window offset)):

- ``reference``: the op's reference, dense ``[N, M]`` softmax weights over the rounded query
  grid and the key grid, query ``i`` seeing key ``j`` only inside its block's window, the
  relative logits written into the dense logits (its index tables come from explicit loops over
  the blocks). The unit tests check both paths against a third formulation, an explicit loop
  over blocks and window pixels (``halo_by_hand`` in ``tests/mixers/vision/test_halo.py``).
- ``sdpa`` (``auto``): the op's fused path, SDPA per chunk of windows with the relative logits
  as the additive mask, so that the ``[b², s²]`` relative logits of all blocks never exist at
  once (``attnzoo.ops.window.CHUNK_ELEMENTS`` sets the chunk).

**Any grid.** timm requires ``h`` and ``w`` divisible by ``block_size``. Here the projected
q/k/v are padded at the bottom/right up to a multiple of ``b``
(:func:`~attnzoo.ops.window.pad_grid`) and the output is cropped back to ``h x w``. The key grid
is the image zero-padded by ``r`` (as in timm); key positions farther than ``r`` outside the
image (reachable only because of the rounding) are masked out of the softmax (the op's
``sizes``). So when ``b`` divides ``h`` and ``w`` nothing is masked and the mixer is timm's
function, and otherwise every pixel sees its block's window restricted to the image plus the
``r``-wide zero border.

**Attention maps** (exact): weights ``[B, H, h·w, M]`` over the real query pixels and the key
grid zero-padded by the halo *after rounding*, ``M = (h' + 2r)(w' + 2r)`` with
``h' = ceil(h/b)·b`` (likewise ``w'``), row-major: the zero border keys take weight in HaloNet
(their logit is the relative term alone), so they are columns of the map, with zero values;
keys past the border (rounding only) weigh 0. ``M`` is not ``h·w``.

Mapping from timm (:func:`load_timm_weights`): ``q.weight [n*dk, C, 1, 1]`` is the first block
of our fused ``qkv`` linear; ``kv.weight [n*(dk+dv), C, 1, 1]`` is grouped per head as
``(head, [k | v])`` and is regrouped into our ``[k (head, dk) | v (head, dv)]`` blocks.
timm's ``height_rel``/``width_rel`` have ``2s - 1`` rows indexed by ``ky - qy + s - 1``; only
rows ``2r .. 2s - 2`` are ever read (the first ``2r`` rows never receive a gradient), so ours
keep the ``2(b + r) - 1`` used rows: ``R = timm_rel[2r:]``.

Left out: timm's ``stride=2`` (strided query blocks / average-pool downsampling; a mixer keeps
the grid), ``dim_out != dim`` and ``qk_ratio`` rounding (set ``qk_dim_head`` directly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.masks import Mask
from attnzoo.ops.window import crop_grid, pad_grid, window_attention, window_weights
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport, LowPrecision, Tolerance

PAPER = Paper(
    title="Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
    year=2021,
    url="https://arxiv.org/abs/2103.12731",
    code="https://github.com/huggingface/pytorch-image-models/blob/main/timm/layers/halo_attn.py",
)


@dataclasses.dataclass(frozen=True)
class HaloConfig(HeadsConfig):
    """HaloNet attention. ``d_model`` is the channel count C (also the output width).

    Attributes:
        num_heads: heads; ``None`` means :func:`~attnzoo.mixers.common.default_heads`
            (timm's default is 8; HaloNet configs use 4 to 8).
        qk_dim_head: query/key width per head; ``None`` means ``C // num_heads``
            (timm's ``dim_head``). The value width is always ``C // num_heads``.
        block_size: query block side ``b`` (HaloNet: 8).
        halo_size: halo ``r`` around each block (HaloNet: 3, some timm configs 2).
        qkv_bias: bias on the q/k/v projections (timm default: off).
        scale_pos_embed: scale the relative logits too (timm's ``scale_pos_embed``).
        impl: ``auto`` (``sdpa``) | ``reference`` (dense masked weights) | ``sdpa`` (windows
            and fused attention, chunked); see the module docstring.
    """

    qk_dim_head: int | None = limit(None, ge=1)
    block_size: int = limit(8, ge=1)
    halo_size: int = limit(3, ge=0)
    qkv_bias: bool = False
    scale_pos_embed: bool = False
    impl: Literal["auto", "reference", "sdpa"] = "auto"

    @property
    def dim_qk(self) -> int:
        return self.qk_dim_head if self.qk_dim_head is not None else self.d_model // self.heads

    @property
    def dim_v(self) -> int:
        return self.d_model // self.heads

    @property
    def win_size(self) -> int:
        return self.block_size + 2 * self.halo_size


def halo_flops(cfg: HaloConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T = h*w`` tokens, counted as if ``block_size`` divides ``h`` and ``w`` (rounding adds at
    most one block row and column): projections, window scores and weighted sum (``s²`` keys per
    query) and the relative logits ``q . E`` (``s²`` products of width ``dk`` per query; the
    ``[b², s², dk]`` table itself is not counted)."""
    n, dk, dv, s = cfg.heads, cfg.dim_qk, cfg.dim_v, cfg.win_size
    proj = 2 * batch * T * cfg.d_model * n * (2 * dk + dv)
    attn = 2 * batch * n * T * s * s * (dk + dv)
    rel = 2 * batch * n * T * s * s * dk
    return proj + attn + rel


def _rel_index(block_size: int, win_size: int) -> Tensor:
    """``[b, s]`` table row for (query offset, window offset): ``ky - qy + b - 1``."""
    return torch.arange(win_size)[None, :] - torch.arange(block_size)[:, None] + block_size - 1


@register_mixer(
    "halo",
    config=HaloConfig,
    family="sparse",
    layout="grid2d",
    attention_maps=True,
    complexity="O(h·w·s²·d) time and O(h·w·s²/b²·d) window memory, window s = block + 2·halo",
    paper=PAPER,
    peer="timm.layers.halo_attn.HaloAttn (weights copied; grids divisible by block_size; "
    "both paths)",
    export=ExportSupport(
        dynamic="pads h, w to whole blocks (8) and masks the padded keys in Python only where "
        "needed, which fixes the padding; sides declared as multiples, Dim(...)*8, export"
    ),
    flops=halo_flops,
    # impl='reference' rounds its dense [N, M] softmax weights to the dtype
    low_precision=LowPrecision(bfloat16=Tolerance(rtol=2.5e-2), float16=Tolerance(rtol=3e-3)),
)
class HaloMixer(Mixer):
    cfg: HaloConfig

    def __init__(self, cfg: HaloConfig) -> None:
        super().__init__(cfg)
        C, n, dk, dv = cfg.d_model, cfg.heads, cfg.dim_qk, cfg.dim_v
        b, s = cfg.block_size, cfg.win_size
        self.scale = dk**-0.5
        self.qkv = nn.Linear(C, n * (2 * dk + dv), bias=cfg.qkv_bias)  # [q | k | v]
        self.rel_h = nn.Parameter(torch.empty(2 * (b + cfg.halo_size) - 1, dk))
        self.rel_w = nn.Parameter(torch.empty(2 * (b + cfg.halo_size) - 1, dk))
        self.register_buffer("rel_index", _rel_index(b, s), persistent=False)  # [b, s]
        nn.init.trunc_normal_(self.qkv.weight, std=C**-0.5)  # timm: fan-in init
        nn.init.trunc_normal_(self.rel_h, std=self.scale)
        nn.init.trunc_normal_(self.rel_w, std=self.scale)

    def rel_table(self) -> Tensor:
        """Relative embedding per (query offset, window offset): ``E[(qy qx), (ky kx)] =
        R_h[ky - qy + b - 1] + R_w[kx - qx + b - 1]``, so ``rel(q) = q . E``.
        Shape ``[b², s², dk]`` (times ``scale`` when ``scale_pos_embed``)."""
        eh = self.rel_h[self.rel_index]  # [b, s, dk]: query row qy, window row ky
        ew = self.rel_w[self.rel_index]  # [b, s, dk]: query column qx, window column kx
        e = eh[:, None, :, None, :] + ew[None, :, None, :, :]  # [b, b, s, s, dk]
        if self.cfg.scale_pos_embed:
            e = e * self.scale
        return rearrange(e, "y x ky kx d -> (y x) (ky kx) d")

    def rel_bias(self) -> Callable[[Tensor], Tensor]:
        """The window op's ``bias``: the relative logits ``q . E`` of a chunk of windows.
        Shapes: ``[G, H, b², dk] -> [G, H, b², s²]``."""
        e_t = self.rel_table().transpose(1, 2)  # [b², dk, s²]

        def bias(q: Tensor) -> Tensor:
            G, H, n, dk = q.shape
            # one [G·H, dk] x [dk, s²] product per query offset
            t = q.permute(2, 0, 1, 3).reshape(n, G * H, dk)  # [b², G·H, dk]
            return torch.bmm(t, e_t).view(n, G, H, -1).permute(1, 2, 0, 3)  # [G, H, b², s²]

        return bias

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v on the grid zero-padded at the bottom/right to whole blocks (after the
        projection, as timm pads k/v). Shapes: x ``[B, h, w, C]`` -> q, k ``[B, h', w', H, dk]``,
        v ``[B, h', w', H, dv]``."""
        n, dk = self.cfg.heads, self.cfg.dim_qk
        qkv = pad_grid(self.qkv(x), self.cfg.block_size)  # [B, h', w', n*(2dk + dv)]
        q, k, v = qkv.split([n * dk, n * dk, qkv.shape[-1] - 2 * n * dk], dim=-1)
        return q.unflatten(-1, (n, dk)), k.unflatten(-1, (n, dk)), v.unflatten(-1, (n, -1))

    def _sizes(self, x: Tensor) -> tuple[int, int] | None:
        """The op's ``sizes``: the real grid when rounding padded it (``None``: nothing masked)."""
        h, w, b = x.shape[1], x.shape[2], self.cfg.block_size
        return None if h % b == 0 and w % b == 0 else (h, w)

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        cfg = self.cfg
        impl = "sdpa" if cfg.impl == "auto" else cfg.impl
        q, k, v = self._project(x)
        o = window_attention(q, k, v, cfg.block_size, halo=cfg.halo_size, sizes=self._sizes(x),
                             bias=self.rel_bias(), scale=self.scale, impl=impl)  # fmt: skip
        return crop_grid(o.flatten(-2), x.shape[1:3])  # [B, h, w, C]

    def maps(self, x: Tensor, context: None, mask: Mask | None) -> AttentionMaps:
        """Weights ``[B, H, h·w, M]`` over the real queries and the rounded grid zero-padded by
        the halo (``M = (h' + 2r)(w' + 2r)``, see the module docstring); values ``[B, H, M, dv]``
        (zero on the border); exact."""
        cfg = self.cfg
        h, w, r = x.shape[1], x.shape[2], cfg.halo_size
        q, k, v = self._project(x)
        a = window_weights(q, k, cfg.block_size, halo=r, sizes=self._sizes(x),
                           bias=self.rel_bias(), scale=self.scale)  # fmt: skip
        a = a.unflatten(2, q.shape[1:3])[:, :, :h, :w].flatten(2, 3)  # [B, H, h*w, M]
        values = rearrange(F.pad(v, (0, 0, 0, 0, r, r, r, r)), "b y x n d -> b n (y x) d")
        finish = lambda o: rearrange(o, "b n (y x) d -> b y x (n d)", y=h)  # noqa: E731
        return AttentionMaps(a, values, finish)


def load_timm_weights(mixer: HaloMixer, timm_module: nn.Module) -> None:
    """Copy a ``timm.layers.halo_attn.HaloAttn`` (``stride=1``, ``dim_out == dim``) into
    ``mixer``; the mapping is in the module docstring. Raises ``ValueError`` on any mismatch."""
    cfg = mixer.cfg
    sd = timm_module.state_dict()
    n, dk, dv, C, r, s = cfg.heads, cfg.dim_qk, cfg.dim_v, cfg.d_model, cfg.halo_size, cfg.win_size
    want = {
        "q.weight": (n * dk, C, 1, 1),
        "kv.weight": (n * (dk + dv), C, 1, 1),
        "pos_embed.height_rel": (2 * s - 1, dk),
        "pos_embed.width_rel": (2 * s - 1, dk),
    }
    if cfg.qkv_bias:
        want.update({"q.bias": (n * dk,), "kv.bias": (n * (dk + dv),)})
    got = {key: tuple(t.shape) for key, t in sd.items()}
    if got != want:
        raise ValueError(
            f"halo.load_timm_weights: the timm module's state_dict {got} does not match the "
            f"mixer's config (heads={n}, qk_dim_head={dk}, block_size={cfg.block_size}, "
            f"halo_size={r}, qkv_bias={cfg.qkv_bias}); expected {want}"
        )
    if getattr(timm_module, "block_stride", 1) != 1:
        raise ValueError(
            "halo.load_timm_weights: expected a stride-1 HaloAttn (a mixer keeps the grid), got "
            f"block_stride={timm_module.block_stride}"
        )
    if bool(getattr(timm_module, "scale_pos_embed", False)) != cfg.scale_pos_embed:
        raise ValueError(
            f"halo.load_timm_weights: timm scale_pos_embed={timm_module.scale_pos_embed} but "
            f"the mixer has scale_pos_embed={cfg.scale_pos_embed}"
        )

    def regroup(t: Tensor) -> Tensor:
        """timm ``(head, [k | v])`` rows -> ours ``[k (head, dk) | v (head, dv)]``."""
        t = t.reshape(n, dk + dv, -1)
        return torch.cat([t[:, :dk].reshape(n * dk, -1), t[:, dk:].reshape(n * dv, -1)])

    with torch.no_grad():
        q_w, kv_w = sd["q.weight"].flatten(1), sd["kv.weight"].flatten(1)
        mixer.qkv.weight.copy_(torch.cat([q_w, regroup(kv_w)]))
        if cfg.qkv_bias:
            kv_b = regroup(sd["kv.bias"][:, None])[:, 0]
            mixer.qkv.bias.copy_(torch.cat([sd["q.bias"], kv_b]))
        mixer.rel_h.copy_(sd["pos_embed.height_rel"][2 * r :])
        mixer.rel_w.copy_(sd["pos_embed.width_rel"][2 * r :])


# ---- peer: timm's HaloAttn (issue 5's sizes: forward, fp32, batch 8, same weights) -----------
PEER_BATCH = 8


def _timm_case(side: int, g: torch.Generator) -> PeerPair:
    """timm ``HaloAttn`` (its default 8 heads, block 8, halo 3) on ``[B, C, H, W]``; the
    permutes to and from timm's layout are free views outside the timing."""
    from timm.layers.halo_attn import HaloAttn

    C = 64
    theirs = randomise_biases(HaloAttn(C, num_heads=8, block_size=8, halo_size=3), g)
    ours = HaloMixer(HaloConfig(d_model=C, num_heads=8, block_size=8, halo_size=3)).eval()
    load_timm_weights(ours, theirs)
    x = torch.randn(PEER_BATCH, side, side, C, generator=g)
    x_nchw = x.permute(0, 3, 1, 2)
    return PeerPair(ours=lambda: ours(x), peer=lambda: theirs(x_nchw),
                    flops=halo_flops(ours.cfg, PEER_BATCH, side * side, None, None),
                    size=f"B={PEER_BATCH} {side}x{side}x{C}",
                    check=lambda: (ours(x), theirs(x_nchw).permute(0, 2, 3, 1)))  # fmt: skip


register_case(PeerCase("halo/timm", "halo", "timm halo_attn.HaloAttn", ("timm", "torchvision"),
                       _timm_case, (32, 64), (32,), smoke_size=16))  # fmt: skip
