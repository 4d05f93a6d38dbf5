"""TNT token mixer (V-TNT): inner attention over the visual words of each patch + outer
attention over the patches, on one packed channels-last tensor.

Han et al., "Transformer in Transformer", 2021. https://arxiv.org/abs/2103.00112
Code: https://github.com/huawei-noah/Efficient-AI-Backbones (``tnt_pytorch/tnt.py``: ``Block``).
Peer: ``timm.models.tnt.Block`` (timm 1.0.31), weights copied by :func:`load_timm_weights`, in
the tests and in the peer case ``tnt/timm`` below.

Layout. A TNT block carries two streams: per patch, ``m = words_per_side**2`` visual words of
width ``c = inner_dim`` (timm's ``pixel_embed [B*N, m, c]``), and one patch token of width
``D = outer_dim`` (timm's ``patch_embed [B, 1 + N, D]``, class token first). This mixer packs both
streams of one patch into the channels of one grid cell::

    x [B, h, w, C],  C = D + m * c,  N = h * w patches (row-major)
    x[..., :D]  = patch_embed[:, 1:]                     reshaped to [B, h, w, D]
    x[..., D:]  = pixel_embed.reshape(B, N, m * c)       reshaped to [B, h, w, m * c]

(words word-major, the order timm's fusion ``pixel_embed.reshape(B, N - 1, -1)`` flattens them
in). The channels are not one feature vector: the two slices are separate residual streams with
their own norms, and both are needed, since the patch stream accumulates across blocks.

The mixer is the whole TNT block as a residual update, ``x + y == Block(x)``, because TNT's
norms and MLPs act per stream and no generic wrapper around a mixer could apply them:

1. inner: ``words += attn_in(LN(words))``, ``words += mlp_in(LN(words))`` (per patch, over its
   ``m`` words);
2. fusion: ``patch += LN(Linear(LN(flatten(words))))`` (legacy: ``Linear(flatten(LN(words)))``
   with bias, no second norm);
3. outer: ``patch += attn_out(LN(patch))`` over all ``h*w`` patches, then
   ``patch += mlp(LN(patch))`` (``outer_mlp=True``; turn it off when a surrounding block
   supplies the feed-forward, which then sees the packed channels).

Differences from timm's ``Block``: no class token (a 2-D mixer has none; the tests compare the
patch stream against timm's own submodules run without it, and the word stream against
``Block.forward`` itself); q/k/v are one fused linear (timm: ``qk`` and ``v``, concatenated by
:func:`load_timm_weights`); dropout and drop path are left out. Works on any grid ``h x w``.

Windows. The words of all patches form a ``[B, h*s, w*s, c]`` grid (``s = words_per_side``; a
patch's words row-major in its ``s x s`` cell, as timm's ``PixelEmbed`` unfolds them), and the
inner attention is window attention in ``(s, s)`` windows of that grid
(:mod:`attnzoo.ops.window`); the outer attention is global over the ``h*w`` patches
(:func:`attnzoo.ops.softmax.softmax_attention`). Paths (``impl``):

- ``reference``: the word grid built explicitly and attended with
  ``window_attention(impl="reference")`` (dense ``[h*s*w*s, h*s*w*s]`` weights, zero across
  patches), the outer attention with ``softmax_attention(impl="reference")`` (materialised
  ``[h*w, h*w]`` weights), LayerNorms (biased variance), GELU MLPs and linears written out.
- ``sdpa`` (``auto``): the torch modules, and the same windows in the words' stored order: each
  patch's ``m`` words are consecutive, so the ``(s, s)`` windows of the word grid are the 1-D
  windows of ``m`` tokens of the flattened words (``window_attention(impl="sdpa")`` on
  ``[B, h*w*m, H, d]``, no permute; going through the 2-D grid costs ~3x on this
  attention); the outer attention with ``softmax_attention(impl="sdpa")``.

No attention maps: the block holds two attentions (words, then patches) in sequence, and the
output is not one set of weights applied to values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import MixerConfig, limit
from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import default_heads
from attnzoo.ops.common import attention_flops
from attnzoo.ops.masks import Mask
from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.window import window_attention
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="Transformer in Transformer",
    year=2021,
    url="https://arxiv.org/abs/2103.00112",
    code="https://github.com/huawei-noah/Efficient-AI-Backbones",
)


@dataclasses.dataclass(frozen=True)
class TNTConfig(MixerConfig):
    """TNT block as one mixer. ``d_model = outer_dim + words_per_side**2 * inner_dim``.

    Attributes:
        words_per_side: a patch is ``words_per_side x words_per_side`` visual words (TNT: 4).
        inner_dim: word width ``c``; ``None`` gives the words half the channels,
            ``d_model // (2 * words)`` (TNT-S: ``d_model=768, words_per_side=4`` -> 24, outer 384;
            TNT-B: 1280 -> 40, outer 640).
        num_heads_inner: word-attention heads; ``None``: 4 (TNT) when ``inner_dim`` is a multiple
            of 4 and at least 16, else 1.
        num_heads_outer: patch-attention heads; ``None``:
            :func:`~attnzoo.mixers.common.default_heads` of ``outer_dim``.
        mlp_ratio: hidden width of the outer MLP over ``outer_dim``.
        inner_mlp_ratio: hidden width of the inner MLP over ``inner_dim`` (timm: 4).
        qkv_bias: bias on the q/k/v projections (TNT: off).
        outer_mlp: include the patch-stream MLP (the full TNT block).
        legacy: timm's ``legacy=True`` fusion (per-word LN, biased projection, no second LN).
        norm_eps: LayerNorm epsilon.
        impl: ``auto`` (``sdpa``) | ``reference`` | ``sdpa`` (see the module docstring).
    """

    words_per_side: int = limit(2, ge=1)
    inner_dim: int | None = limit(None, ge=1)
    num_heads_inner: int | None = limit(None, ge=1)
    num_heads_outer: int | None = limit(None, ge=1)
    mlp_ratio: float = limit(4.0, gt=0)
    inner_mlp_ratio: float = limit(4.0, gt=0)
    qkv_bias: bool = False
    outer_mlp: bool = True
    legacy: bool = False
    norm_eps: float = limit(1e-5, gt=0)
    impl: Literal["auto", "reference", "sdpa"] = "auto"

    def validate(self) -> None:
        owner = self._owner()
        if self.inner_width < 1 or self.outer_dim < 1:
            raise ValueError(
                f"{owner}: d_model={self.d_model} must exceed words * inner_dim = "
                f"{self.words} * {self.inner_width} (the word channels), leaving outer_dim >= 1; "
                "lower words_per_side or inner_dim"
            )
        for name, dim, heads in (
            ("num_heads_inner", self.inner_width, self.heads_inner),
            ("num_heads_outer", self.outer_dim, self.heads_outer),
        ):
            if dim % heads != 0:
                raise ValueError(f"{owner}: {name}={heads} does not divide its width {dim}")

    @property
    def words(self) -> int:
        return self.words_per_side**2

    @property
    def inner_width(self) -> int:
        return self.inner_dim if self.inner_dim is not None else self.d_model // (2 * self.words)

    @property
    def outer_dim(self) -> int:
        return self.d_model - self.words * self.inner_width

    @property
    def heads_inner(self) -> int:
        if self.num_heads_inner is not None:
            return self.num_heads_inner
        c = self.inner_width
        return 4 if c % 4 == 0 and c >= 16 else 1

    @property
    def heads_outer(self) -> int:
        return (
            self.num_heads_outer
            if self.num_heads_outer is not None
            else default_heads(self.outer_dim)
        )


def tnt_flops(cfg: TNTConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T`` is the patch count ``h*w``: linears, inner attention over ``m`` words per patch,
    outer attention over ``T`` patches (norms, GELU, softmax not counted)."""
    m, c, D = cfg.words, cfg.inner_width, cfg.outer_dim
    ci, co = int(c * cfg.inner_mlp_ratio), int(D * cfg.mlp_ratio)
    inner = 2 * batch * T * m * (c * 3 * c + c * c + 2 * c * ci)
    inner += attention_flops(
        batch * T, cfg.heads_inner, c // cfg.heads_inner, c // cfg.heads_inner, m * m
    )
    fuse = 2 * batch * T * m * c * D
    outer = 2 * batch * T * (D * 3 * D + D * D + (2 * D * co if cfg.outer_mlp else 0))
    outer += attention_flops(
        batch, cfg.heads_outer, D // cfg.heads_outer, D // cfg.heads_outer, T * T
    )
    return inner + fuse + outer


class _Attention(nn.Module):
    """The projections of multi-head softmax self-attention: one fused q/k/v linear (rows q, k,
    v, each head-major) and the output projection; the mixer runs the attention itself."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def _linear(t: Tensor, lin: nn.Linear) -> Tensor:
    """``t W^T + b`` written out."""
    return t @ lin.weight.T + (lin.bias if lin.bias is not None else 0.0)


def _layer_norm(t: Tensor, ln: nn.Module) -> Tensor:
    """LayerNorm over the last axis with the biased variance, written out (identity for an
    ``nn.Identity``)."""
    if not isinstance(ln, nn.LayerNorm):
        return t
    mean = t.mean(-1, keepdim=True)
    var = ((t - mean) ** 2).mean(-1, keepdim=True)
    return (t - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _mlp(t: Tensor, mlp: _Mlp) -> Tensor:
    """``fc2(GELU(fc1(t)))`` written out (exact erf GELU)."""
    return _linear(F.gelu(_linear(t, mlp[0])), mlp[2])


def _qkv(attn: _Attention, t: Tensor, linear: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Shapes: t ``[B, *S, dim]`` -> q, k, v ``[B, *S, H, dim/H]``."""
    qkv = _linear(t, attn.qkv) if linear else attn.qkv(t)
    q, k, v = qkv.unflatten(-1, (3, attn.heads, -1)).unbind(-3)
    return q, k, v


@register_mixer(
    "tnt",
    config=TNTConfig,
    family="softmax",
    layout="grid2d",
    exact=True,
    complexity="O(h·w·(m²·c + m·c·D + D²) + (h·w)²·D) with m words of width c, outer width D",
    paper=PAPER,
    peer="timm.models.tnt.Block (weights copied; patch stream vs its submodules without class token)",
    flops=tnt_flops,
)
class TNTMixer(Mixer):
    cfg: TNTConfig

    def __init__(self, cfg: TNTConfig) -> None:
        super().__init__(cfg)
        m, c, D, eps = cfg.words, cfg.inner_width, cfg.outer_dim, cfg.norm_eps
        self.norm_in = nn.LayerNorm(c, eps=eps)
        self.attn_in = _Attention(c, cfg.heads_inner, cfg.qkv_bias)
        self.norm_mlp_in = nn.LayerNorm(c, eps=eps)
        self.mlp_in = _Mlp(c, int(c * cfg.inner_mlp_ratio))
        if cfg.legacy:
            self.norm1_proj = nn.LayerNorm(c, eps=eps)
            self.proj = nn.Linear(m * c, D, bias=True)
            self.norm2_proj: nn.Module = nn.Identity()
        else:
            self.norm1_proj = nn.LayerNorm(m * c, eps=eps)
            self.proj = nn.Linear(m * c, D, bias=False)
            self.norm2_proj = nn.LayerNorm(D, eps=eps)
        self.norm_out = nn.LayerNorm(D, eps=eps)
        self.attn_out = _Attention(D, cfg.heads_outer, cfg.qkv_bias)
        if cfg.outer_mlp:
            self.norm_mlp = nn.LayerNorm(D, eps=eps)
            self.mlp = _Mlp(D, int(D * cfg.mlp_ratio))
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, h, w, D + m*c]`` (channels-last, packed) -> same shape (the update)."""
        if self.cfg.impl == "reference":
            return self._reference(x)
        cfg = self.cfg
        B, h, w, _ = x.shape
        m, c, D = cfg.words, cfg.inner_width, cfg.outer_dim
        patch = x[..., :D].reshape(B, h * w, D)  # [B, N, D]
        words = x[..., D:].reshape(B, h * w * m, c)  # [B, N*m, c], each patch's words in a row
        # inner transformer: the (s, s) windows of the word grid are runs of m stored words
        q, k, v = _qkv(self.attn_in, self.norm_in(words), linear=False)  # [B, N*m, Hi, c/Hi]
        o = window_attention(q, k, v, (m,), impl="sdpa")
        dw = self.attn_in.proj(o.flatten(-2))  # [B, N*m, c]
        dw = dw + self.mlp_in(self.norm_mlp_in(words + dw))
        words = words + dw
        # fusion: words -> patch
        if cfg.legacy:
            fused = self.proj(self.norm1_proj(words).reshape(B, h * w, m * c))
        else:
            fused = self.norm2_proj(self.proj(self.norm1_proj(words.reshape(B, h * w, m * c))))
        dp = fused  # [B, N, D]
        # outer transformer over the patches
        q, k, v = _qkv(self.attn_out, self.norm_out(patch + dp), linear=False)  # [B, N, Ho, *]
        dp = dp + self.attn_out.proj(softmax_attention(q, k, v, impl="sdpa").flatten(-2))
        if cfg.outer_mlp:
            dp = dp + self.mlp(self.norm_mlp(patch + dp))
        y = torch.cat([dp, dw.reshape(B, h * w, m * c)], dim=-1)  # [B, N, C]
        return y.reshape(B, h, w, cfg.d_model)

    def _reference(self, x: Tensor) -> Tensor:
        """The TNT block written out on the word grid. Shapes: as :meth:`mix`."""
        cfg = self.cfg
        s, D = cfg.words_per_side, cfg.outer_dim
        B, h, w, _ = x.shape
        patch = rearrange(x[..., :D], "b h w d -> b (h w) d")  # [B, N, D]
        # word (r, t) of patch (i, j) sits at (i*s + r, j*s + t) of the word grid
        words = rearrange(x[..., D:], "b h w (r t c) -> b (h r) (w t) c", r=s, t=s)
        q, k, v = _qkv(self.attn_in, _layer_norm(words, self.norm_in), linear=True)
        o = window_attention(q, k, v, (s, s), impl="reference")  # [B, h*s, w*s, Hi, c/Hi]
        dw = _linear(o.flatten(-2), self.attn_in.proj)  # [B, h*s, w*s, c]
        dw = dw + _mlp(_layer_norm(words + dw, self.norm_mlp_in), self.mlp_in)
        words = words + dw
        if cfg.legacy:  # per-word LayerNorm, then the patch's words flattened
            normed = rearrange(_layer_norm(words, self.norm1_proj),
                               "b (h r) (w t) c -> b (h w) (r t c)", r=s, t=s)  # fmt: skip
            dp = _linear(normed, self.proj)  # [B, N, D]
        else:
            flat = rearrange(words, "b (h r) (w t) c -> b (h w) (r t c)", r=s, t=s)
            normed = _layer_norm(flat, self.norm1_proj)  # [B, N, m*c]
            dp = _layer_norm(_linear(normed, self.proj), self.norm2_proj)  # [B, N, D]
        q, k, v = _qkv(self.attn_out, _layer_norm(patch + dp, self.norm_out), linear=True)
        o = softmax_attention(q, k, v, impl="reference")  # [B, N, Ho, D/Ho]
        dp = dp + _linear(o.flatten(-2), self.attn_out.proj)
        if cfg.outer_mlp:
            dp = dp + _mlp(_layer_norm(patch + dp, self.norm_mlp), self.mlp)
        dw = rearrange(dw, "b (h r) (w t) c -> b h w (r t c)", r=s, t=s)
        return torch.cat([rearrange(dp, "b (h w) d -> b h w d", h=h), dw], dim=-1)


# ---- timm weights ------------------------------------------------------------------------------
def load_timm_weights(mixer: TNTMixer, timm_module: nn.Module) -> None:
    """Copy the weights of a ``timm.models.tnt.Block`` into ``mixer`` (in place).

    Mapping (timm key -> ours): ``attn_in.qk`` + ``attn_in.v`` -> ``attn_in.qkv`` (rows
    concatenated: q, k, then v, each head-major as timm reshapes them), same for ``attn_out``;
    ``mlp_in.fc1/fc2`` -> ``mlp_in.0/2``, ``mlp.fc1/fc2`` -> ``mlp.0/2``; every other key
    (``norm_in``, ``attn_*.proj``, ``norm_mlp_in``, ``norm1_proj``, ``proj``, ``norm2_proj``,
    ``norm_out``, ``norm_mlp``) keeps its name. Raises ``ValueError`` on a missing key, an
    unused key or a shape mismatch (e.g. a legacy block into a non-legacy mixer).
    """
    src: Mapping[str, Tensor] = timm_module.state_dict()
    if not mixer.cfg.outer_mlp:
        src = {k: v for k, v in src.items() if not k.startswith(("norm_mlp.", "mlp."))}
    mapped: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in src:
            raise ValueError(f"load_timm_weights(tnt): timm module has no weight {key!r}")
        used.add(key)
        return src[key]

    ours = mixer.state_dict()
    for key in ours:
        parts = key.split(".")
        if parts[0] in ("attn_in", "attn_out") and parts[1] == "qkv":
            t = parts[2]
            qk, v = take(f"{parts[0]}.qk.{t}"), take(f"{parts[0]}.v.{t}")
            mapped[key] = torch.cat([qk, v], dim=0)
        elif parts[0] in ("mlp_in", "mlp"):
            mapped[key] = take(f"{parts[0]}.{'fc1' if parts[1] == '0' else 'fc2'}.{parts[2]}")
        else:
            mapped[key] = take(key)
        if mapped[key].shape != ours[key].shape:
            raise ValueError(
                f"load_timm_weights(tnt): shape of {key!r} is {tuple(ours[key].shape)} in the mixer "
                f"but {tuple(mapped[key].shape)} from timm; the configs differ (words, inner_dim, "
                "outer_dim, legacy, qkv_bias or MLP ratios)"
            )
    unused = sorted(set(src) - used)
    if unused:
        raise ValueError(f"load_timm_weights(tnt): timm weights without a place here: {unused}")
    mixer.load_state_dict(mapped)


# ---- peer case -------------------------------------------------------------------------------
PEER_BATCH = 8


def _timm_case(side: int, g: torch.Generator) -> PeerPair:
    """TNT-S shapes: outer dim 384, inner dim 24, 4x4 words per patch. Ours packs both streams
    into one ``[B, h, w, 384 + 16*24]`` map; timm's ``Block`` takes ``(pixel_embed, patch_embed)``
    with a class token row (one extra patch token on its side). Equality is checked on the word
    stream, which timm's full forward computes exactly as ours (its patch stream mixes in the
    class token, which a 2-D mixer has none of: tests/mixers/vision/test_tnt.py compares that
    stream against timm's own submodules)."""
    from timm.models.tnt import Block

    D, c, m = 384, 24, 16
    theirs = randomise_biases(
        Block(dim=c, dim_out=D, num_pixel=m, num_heads_in=4, num_heads_out=6), g
    )
    ours = TNTMixer(TNTConfig(d_model=D + m * c, words_per_side=4, inner_dim=c,
                              num_heads_inner=4, num_heads_outer=6)).eval()  # fmt: skip
    load_timm_weights(ours, theirs)
    N = side * side
    x = torch.randn(PEER_BATCH, side, side, D + m * c, generator=g)
    pixel = x[..., D:].reshape(PEER_BATCH * N, m, c)
    patch = torch.cat([torch.zeros(PEER_BATCH, 1, D), x[..., :D].reshape(PEER_BATCH, N, D)], 1)

    def check() -> tuple[Tensor, Tensor]:
        words = (x + ours(x))[..., D:].reshape(PEER_BATCH * N, m, c)
        return words, theirs(pixel, patch)[0]

    return PeerPair(ours=lambda: ours(x), peer=lambda: theirs(pixel, patch),
                    flops=tnt_flops(ours.cfg, PEER_BATCH, N, None, None),
                    size=f"B={PEER_BATCH} {N} patches, outer {D} / inner {c}", check=check)  # fmt: skip


register_case(PeerCase("tnt/timm", "tnt", "timm tnt.Block", ("timm", "torchvision"), _timm_case,
                       (14,), (14,), smoke_size=3))  # fmt: skip
