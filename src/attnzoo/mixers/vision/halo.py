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

Computed as fused SDPA with ``rel(q) = q . E`` as the additive mask, where ``E [b², s², dk]``
is the summed embedding per (query offset, window offset), in chunks of (sample, head, block)
groups so that the ``[b², s²]`` relative logits of all blocks never exist at once.

**Any grid.** timm requires ``h`` and ``w`` divisible by ``block_size``. Here the projected
q/k/v are padded at the bottom/right up to a multiple of ``b`` and the output is cropped back to
``h x w``. The key grid is the image zero-padded by ``r`` (as in timm); key positions farther
than ``r`` outside the image (reachable only because of the rounding) are masked out of the
softmax. So when ``b`` divides ``h`` and ``w`` nothing is masked and the mixer is timm's
function, and otherwise every pixel sees its block's window restricted to the image plus
the ``r``-wide zero border.

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

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer

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
        block_size: query block side ``b`` (HaloNet: 8); >= 1.
        halo_size: halo ``r`` around each block (HaloNet: 3, some timm configs 2); >= 0.
        qkv_bias: bias on the q/k/v projections (timm default: off).
        scale_pos_embed: scale the relative logits too (timm's ``scale_pos_embed``).
    """

    qk_dim_head: int | None = None
    block_size: int = 8
    halo_size: int = 3
    qkv_bias: bool = False
    scale_pos_embed: bool = False

    def validate(self) -> None:
        owner = self._owner()
        for name in ("num_heads", "qk_dim_head", "block_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
        if self.halo_size < 0:
            raise ValueError(f"{owner}: halo_size must be >= 0, got {self.halo_size}")
        if self.d_model % self.heads != 0:
            raise ValueError(
                f"{owner}: d_model={self.d_model} is not divisible by num_heads={self.heads}"
            )

    @property
    def dim_qk(self) -> int:
        return self.qk_dim_head if self.qk_dim_head is not None else self.d_model // self.heads

    @property
    def dim_v(self) -> int:
        return self.d_model // self.heads

    @property
    def win_size(self) -> int:
        return self.block_size + 2 * self.halo_size


CHUNK_ELEMENTS = 1 << 21  # relative-logit elements per SDPA call (8 MB in fp32)


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
    dims=2,
    patterns=("noncausal-self",),
    masks=("full",),
    state="none",
    exact=False,
    complexity="O(h·w·s²·d) time and O(h·w·s²/b²·d) window memory, window s = block + 2·halo",
    paper=PAPER,
    peer="timm.layers.halo_attn.HaloAttn (weights copied; grids divisible by block_size)",
    flops=halo_flops,
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

    def border_mask(self, h: int, w: int, nh: int, nw: int, ref: Tensor) -> Tensor | None:
        """Additive ``[nh*nw, 1, s²]`` mask (``-inf``) on window keys farther than the halo from
        the image, which only the rounding to whole blocks creates; ``None`` when there are none."""
        b, r, s = self.cfg.block_size, self.cfg.halo_size, self.cfg.win_size
        if h % b == 0 and w % b == 0:
            return None
        # a padded key row/column p (0 = top of the r-wide top border) exists iff p < size + 2r
        offs = torch.arange(s, device=ref.device)
        ok_y = torch.arange(nh, device=ref.device)[:, None] * b + offs < h + 2 * r  # [nh, s]
        ok_x = torch.arange(nw, device=ref.device)[:, None] * b + offs < w + 2 * r  # [nw, s]
        ok = ok_y[:, None, :, None] & ok_x[None, :, None, :]  # [nh, nw, s, s]
        mask = torch.zeros(ok.shape, dtype=ref.dtype, device=ref.device)
        mask.masked_fill_(~ok, float("-inf"))
        return rearrange(mask, "nh nw ky kx -> (nh nw) 1 (ky kx)")

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        cfg = self.cfg
        n, dk, b, r, s = cfg.heads, cfg.dim_qk, cfg.block_size, cfg.halo_size, cfg.win_size
        B, h, w, _ = x.shape
        ph, pw = -h % b, -w % b
        nh, nw = (h + ph) // b, (w + pw) // b
        qkv = self.qkv(x)  # [B, h, w, n*(2dk + dv)]
        q, kv = qkv[..., : n * dk], qkv[..., n * dk :]
        if ph or pw:
            q = F.pad(q, (0, 0, 0, pw, 0, ph))  # [B, nh*b, nw*b, n*dk]
        # G = B*n*nh*nw (sample, head, block) groups, each attending on its own
        q = rearrange(q, "B (nh y) (nw x) (n d) -> (B n nh nw) (y x) d", y=b, x=b, n=n)
        kv = F.pad(kv, (0, 0, r, r + pw, r, r + ph))  # zero k/v halo border (+ rounding)
        # overlapping s x s windows with step b, as views: [B, nh, nw, n*(dk+dv), s, s]
        kv = kv.unfold(1, s, b).unfold(2, s, b)
        pattern = "B nh nw (n d) ky kx -> (B n nh nw) (ky kx) d"
        k = rearrange(kv[:, :, :, : n * dk], pattern, n=n)  # [G, s², dk]
        v = rearrange(kv[:, :, :, n * dk :], pattern, n=n)  # [G, s², dv]
        e_t = self.rel_table().transpose(1, 2)  # [b², dk, s²]
        border = self.border_mask(h, w, nh, nw, x)  # [nh*nw, 1, s²] or None
        if border is not None:
            border = border.repeat(B * n, 1, 1)  # [G, 1, s²]
        # the [G, b², s²] relative logits are the SDPA mask; chunks keep them small (allocating
        # tens of MB at once costs more than computing them)
        G, step = q.shape[0], max(1, CHUNK_ELEMENTS // (b * b * s * s))
        outs = []
        for g in range(0, G, step):
            qc = q[g : g + step]  # [g, b², dk]
            bias = torch.bmm(qc.transpose(0, 1), e_t).transpose(0, 1)  # [g, b², s²]
            if border is not None:
                bias = bias + border[g : g + step]
            kc, vc = k[g : g + step], v[g : g + step]
            outs.append(
                F.scaled_dot_product_attention(qc, kc, vc, attn_mask=bias, scale=self.scale)
            )
        o = outs[0] if len(outs) == 1 else torch.cat(outs)  # [G, b², dv]
        o = rearrange(
            o, "(B n nh nw) (y x) d -> B (nh y) (nw x) (n d)", n=n, nh=nh, nw=nw, y=b, x=b
        )
        return o[:, :h, :w]  # [B, h, w, C]


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
