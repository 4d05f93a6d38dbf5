"""VOLO outlook attention (V-OUTLOOK): k x k aggregation weights generated from the centre token.

Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", 2021.
https://arxiv.org/abs/2106.13112  Code: https://github.com/sail-sg/volo
(``models/volo.py``: ``OutlookAttention``, ``Outlooker``). The peer test compares against timm's
port, ``timm.models.volo.OutlookAttention``.

On channels-last ``x [B, h, w, C]`` with kernel ``k`` (odd), padding ``p = k // 2``, stride
``s`` and ``n`` heads of width ``d = C / n``:

1. ``v = x W_v (+ b_v)`` per pixel (bias off by default, VOLO's ``qkv_bias=False``).
2. Centre tokens: ``c = AvgPool_s(x)`` on the ``h' x w' = ceil(h/s) x ceil(w/s)`` grid (as
   timm/VOLO: ``ceil_mode=True``, so an edge window that sticks out of the image averages only
   its in-image pixels); ``c = x`` when ``s = 1``.
3. Outlook weights straight from the centre token, no query-key product:
   ``A = softmax_j(scale * (c W_a + b_a))`` reshaped to ``[n, k², k²]`` (output offset ``i``,
   input offset ``j``, both ``(ky, kx)`` row-major) with ``scale = d**-0.5``.
4. For each pooled position ``(y, x)`` the ``k x k`` window of ``v`` whose top-left corner is
   ``(y*s - p, x*s - p)`` (zero outside the image) is mixed, ``o_i = sum_j A_ij v_j`` per head,
   and the ``k²`` results are scattered back to their window pixels and summed where windows
   overlap (``F.fold``); pixels outside the image are dropped.
5. ``y = o W_o + b_o``.

``impl`` picks how steps 2-4 run:

- ``reference``: every piece written out. The centre token is the sum of the ``s x s`` cell's
  pixels (a loop over the cell offsets on the zero-padded grid) divided by its count of
  in-image pixels; ``A`` is ``torch.softmax`` of the materialised ``[B, h', w', n, k², k²]``
  logits; the unfold is a loop over the ``k²`` input offsets ``j``, each a strided slice of the
  zero-padded ``v`` (the ``j``-th pixel of every window), and the fold a loop over the ``k²``
  output offsets ``i``, each adding ``o_i`` into a strided slice of a zero-padded output.
- ``unfold`` (``auto``): the unfold / fold work on the channels-last tensor (windows via
  ``Tensor.unfold``, the fold as one ``index_add_`` onto the padded grid), with no
  im2col/col2im round trip through channels-first layout, a few samples at a time; the centre
  tokens come from ``F.avg_pool2d(ceil_mode=True)`` and the short softmax is written out
  (:func:`softmax_last`).

No attention maps: the weights live per window (``[n, k², k²]`` at each pooled position) and
the fold sums the outputs of overlapping windows, so they are no per-pixel attention rows.

Any ``h, w`` work, with the same pooled grid as timm: for odd ``k`` and ``p = k // 2`` the
unfolded window count ``floor((h + 2p - k)/s) + 1`` equals ``ceil(h/s)``. ``stride`` is capped at
``kernel_size`` (larger strides leave pixels in no window).

:func:`load_timm_weights` copies ``v``, ``attn``, ``proj`` one to one (same layouts); the peer
case ``outlook/timm`` compares the default path with timm at VOLO-D1's stage 1. Left out:
attention / projection dropout (0 in VOLO), and the block around the mixer (norms, MLP).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.masks import Mask
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="VOLO: Vision Outlooker for Visual Recognition",
    year=2021,
    url="https://arxiv.org/abs/2106.13112",
    code="https://github.com/sail-sg/volo",
)


CHUNK_ELEMENTS = 1 << 21  # window elements (k² x the values) per chunk of samples: 8 MB fp32


@dataclasses.dataclass(frozen=True)
class OutlookConfig(HeadsConfig):
    """Outlook attention. ``d_model`` is the channel count C.

    Attributes:
        num_heads: heads; ``None`` means :func:`~attnzoo.mixers.common.default_heads`
            (VOLO-D1 uses 6 heads at C=192).
        kernel_size: window side ``k`` (VOLO: 3); odd, padding is ``k // 2``.
        stride: pooling stride of the centre tokens (VOLO's outlookers: 2); 1 <= stride <= k.
        qkv_bias: bias on the value projection (VOLO default: off).
        impl: ``auto`` (= ``unfold``) | ``reference`` (loops over kernel offsets) | ``unfold``
            (channels-last unfold and one scatter-add fold); see the module docstring.
    """

    kernel_size: int = limit(3, ge=1, odd=True)
    stride: int = limit(2, ge=1)
    qkv_bias: bool = False
    impl: Literal["auto", "reference", "unfold"] = "auto"

    def validate(self) -> None:
        if self.stride > self.kernel_size:
            raise ValueError(
                f"{self._owner()}: stride must be in [1, kernel_size={self.kernel_size}] (a "
                f"larger stride leaves pixels in no window), got {self.stride}"
            )


def outlook_flops(cfg: OutlookConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T = h*w`` pixels, ``ceil(T / s²)`` pooled positions (exact when ``s`` divides ``h`` and
    ``w``): value and output projections, the weight linear (``n k⁴`` outputs) and the
    ``k² x k²`` mixing per pooled position and head (pooling, softmax and fold sums not
    counted)."""
    C, n, k2 = cfg.d_model, cfg.heads, cfg.kernel_size**2
    P = -(-T // cfg.stride**2)
    proj = 2 * batch * T * C * C * 2
    weights = 2 * batch * P * C * n * k2 * k2
    mix = 2 * batch * P * k2 * k2 * C
    return proj + weights + mix


@register_mixer(
    "outlook",
    config=OutlookConfig,
    family="conv",
    layout="grid2d",
    complexity="O(h·w·(C² + n·k⁴·C/s² + k⁴·C/s²)) time with kernel k, stride s, n heads",
    paper=PAPER,
    peer="timm.models.volo.OutlookAttention (weights copied; odd and even grids, strides 1-5)",
    export=ExportSupport(
        dynamic="avg_pool2d(ceil_mode=True)'s output size adds the guard 2·((h-1)//2) < h, which "
        "torch's symbolic shapes cannot prove for every h, w; even sides, Dim(...)*2, export"
    ),
    flops=outlook_flops,
)
class OutlookMixer(Mixer):
    cfg: OutlookConfig

    def __init__(self, cfg: OutlookConfig) -> None:
        super().__init__(cfg)
        C, n, k = cfg.d_model, cfg.heads, cfg.kernel_size
        self.scale = (C // n) ** -0.5
        self.v = nn.Linear(C, C, bias=cfg.qkv_bias)
        self.attn = nn.Linear(C, n * k**4)
        self.proj = nn.Linear(C, C)

    def weights(self, x: Tensor) -> Tensor:
        """Outlook weights. Shapes: x ``[B, h, w, C]`` -> ``[B, h', w', n, k², k²]``."""
        s, k = self.cfg.stride, self.cfg.kernel_size
        if s > 1:
            x = F.avg_pool2d(rearrange(x, "B h w C -> B C h w"), s, s, ceil_mode=True)
            x = rearrange(x, "B C h w -> B h w C")  # [B, h', w', C]
        a = rearrange(self.attn(x), "B h w (n i j) -> B h w n i j", n=self.cfg.heads, i=k * k)
        return softmax_last(a, self.scale)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        if self.cfg.impl == "reference":
            return self._reference(x)
        n, k, s = self.cfg.heads, self.cfg.kernel_size, self.cfg.stride
        B, H, W, C = x.shape
        p = k // 2
        h, w = math.ceil(H / s), math.ceil(W / s)  # pooled grid = number of windows
        a = self.weights(x)  # [B, h, w, n, k², k²]
        v = F.pad(self.v(x), (0, 0, p, p, p, p))  # [B, H + 2p, W + 2p, C]
        # fold target: window (y, x), offset (iy, ix) -> padded pixel (y*s + iy, x*s + ix)
        Hp, Wp = H + 2 * p, W + 2 * p
        out = x.new_zeros(B, Hp, Wp, C)
        # a few samples at a time: the k² x larger windows stay small enough to be reused
        # from the allocator (and cache) instead of being page-faulted in on every call
        step = min(B, max(1, CHUNK_ELEMENTS // (h * w * k * k * C)))
        target = fold_index(h, w, k, s, Wp, x.device)  # [h*w*k²] pixel of one sample
        target = (torch.arange(step, device=x.device)[:, None] * Hp * Wp + target).flatten()
        for b0 in range(0, B, step):
            nb = min(step, B - b0)
            vw = v[b0 : b0 + nb].unfold(1, k, s).unfold(2, k, s)  # [b, h, w, C, ky, kx] view
            vw = rearrange(vw, "b h w (n d) ky kx -> b h w n (ky kx) d", n=n)
            o = a[b0 : b0 + nb] @ vw  # [b, h, w, n, k², d]: window output offset i
            o = rearrange(o, "b h w n i d -> (b h w i) (n d)")
            # fold: one scatter-add of every window output onto its (padded) pixel
            out[b0 : b0 + nb].view(-1, C).index_add_(0, target[: o.shape[0]], o)
        return self.proj(out[:, p : p + H, p : p + W])  # [B, H, W, C]

    def _reference(self, x: Tensor) -> Tensor:
        """Steps 1-5 written out, with loops over cell and kernel offsets (module docstring).
        Shapes: x ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        n, k, s = self.cfg.heads, self.cfg.kernel_size, self.cfg.stride
        _, H, W, C = x.shape
        p = k // 2
        h, w = math.ceil(H / s), math.ceil(W / s)  # pooled grid = number of windows
        # centre tokens: mean of the in-image pixels of each s x s cell
        grow = (0, 0, 0, w * s - W, 0, h * s - H)
        cells = F.pad(x, grow)  # [B, h*s, w*s, C], zeros past the image
        inside = F.pad(x.new_ones(1, H, W, 1), grow)  # [1, h*s, w*s, 1]
        cell = [(cy, cx) for cy in range(s) for cx in range(s)]
        total = sum(cells[:, cy::s, cx::s] for cy, cx in cell)  # [B, h, w, C]
        count = sum(inside[:, cy::s, cx::s] for cy, cx in cell)  # [1, h, w, 1]
        centre = total / count
        logits = self.attn(centre).unflatten(-1, (n, k * k, k * k))  # [B, h, w, n, k², k²]
        a = (self.scale * logits).softmax(-1)
        # window (y, x)'s pixel at kernel offset (iy, ix) is padded pixel (y*s + iy, x*s + ix)
        v = F.pad(self.v(x), (0, 0, p, p, p, p)).unflatten(-1, (n, C // n))  # [B, Hp, Wp, n, d]
        kernel = [(iy, ix) for iy in range(k) for ix in range(k)]
        rows = [slice(iy, iy + (h - 1) * s + 1, s) for iy in range(k)]
        cols = [slice(ix, ix + (w - 1) * s + 1, s) for ix in range(k)]
        # unfold: the j-th pixel of every window is one strided slice of the padded v
        win = torch.stack([v[:, rows[iy], cols[ix]] for iy, ix in kernel], -2)
        o = a @ win  # [B, h, w, n, k², d]: o_i = sum_j A_ij v_j
        out = v.new_zeros(v.shape)  # [B, Hp, Wp, n, d]
        # fold: output offset i of every window adds into one strided slice
        for i, (iy, ix) in enumerate(kernel):
            out[:, rows[iy], cols[ix]] += o[..., i, :]
        return self.proj(out[:, p : p + H, p : p + W].flatten(-2))  # [B, H, W, C]


def fold_index(h: int, w: int, k: int, s: int, row: int, device: torch.device) -> Tensor:
    """Flat pixel ``(y*s + iy) * row + x*s + ix`` of window ``(y, x)``'s offset ``(iy, ix)`` on
    the padded grid of row length ``row``, ordered ``(y, x, iy, ix)``. Shape ``[h*w*k²]``."""
    ar = functools.partial(torch.arange, device=device)
    ys = (ar(h) * s)[:, None, None, None] + ar(k)[None, None, :, None]  # [h, 1, k, 1]
    xs = (ar(w) * s)[None, :, None, None] + ar(k)[None, None, None, :]  # [1, w, 1, k]
    return (ys * row + xs).flatten()


def softmax_last(a: Tensor, scale: float) -> Tensor:
    """``softmax(scale * a)`` over the last dim (size ``k²``). Written out: for rows this short
    ``F.softmax`` spends most of its time per row (about 10x slower here). The max is detached:
    softmax does not depend on the shift."""
    e = (a - a.detach().amax(-1, keepdim=True)).mul_(scale).exp_()
    return e / e.sum(-1, keepdim=True)


def load_timm_weights(mixer: OutlookMixer, timm_module: nn.Module) -> None:
    """Copy a ``timm.models.volo.OutlookAttention`` into ``mixer``: ``v``, ``attn`` and ``proj``
    map one to one (same ``(head, i, j)`` weight layout). Raises ``ValueError`` on any mismatch
    (shapes, ``padding != kernel_size // 2``, stride or head count)."""
    cfg = mixer.cfg
    C, n, k = cfg.d_model, cfg.heads, cfg.kernel_size
    got_geom = tuple(getattr(timm_module, a, None) for a in ("num_heads", "kernel_size"))
    got_geom += tuple(getattr(timm_module, a, None) for a in ("padding", "stride"))
    want_geom = (n, k, k // 2, cfg.stride)
    if got_geom != want_geom:
        raise ValueError(
            "outlook.load_timm_weights: timm module has (num_heads, kernel_size, padding, "
            f"stride)={got_geom}, the mixer needs {want_geom}"
        )
    sd = timm_module.state_dict()
    ours = mixer.state_dict()
    got = {key: tuple(t.shape) for key, t in sd.items()}
    want = {key: tuple(t.shape) for key, t in ours.items()}
    if got != want:
        raise ValueError(
            f"outlook.load_timm_weights: the timm module's state_dict {got} does not match the "
            f"mixer's (d_model={C}, heads={n}, kernel_size={k}, qkv_bias={cfg.qkv_bias}): {want}"
        )
    mixer.load_state_dict(sd)


# ---- peer: timm's VOLO outlook attention -------------------------------------------------------
PEER_BATCH = 8
TIMM = ("timm", "torchvision")


def _timm_case(side: int, g: torch.Generator) -> PeerPair:
    """timm ``volo.OutlookAttention`` (VOLO-D1 stage 1: 6 heads, kernel 3, stride 2); it takes
    channels-last ``[B, H, W, C]`` like ours."""
    from timm.models.volo import OutlookAttention

    C = 192
    theirs = randomise_biases(OutlookAttention(C, 6, kernel_size=3, padding=1, stride=2), g)
    ours = OutlookMixer(OutlookConfig(d_model=C, num_heads=6, kernel_size=3, stride=2)).eval()
    load_timm_weights(ours, theirs)
    x = torch.randn(PEER_BATCH, side, side, C, generator=g)
    return PeerPair(ours=lambda: ours(x), peer=lambda: theirs(x),
                    flops=outlook_flops(ours.cfg, PEER_BATCH, side * side, None, None),
                    size=f"B={PEER_BATCH} {side}x{side}x{C}")  # fmt: skip


register_case(PeerCase("outlook/timm", "outlook", "timm volo.OutlookAttention", TIMM, _timm_case,
                       (28, 56), (28,), smoke_size=7))  # fmt: skip
