"""TNT token mixer (V-TNT): inner attention over the visual words of each patch + outer
attention over the patches, on one packed channels-last tensor.

Han et al., "Transformer in Transformer", 2021. https://arxiv.org/abs/2103.00112
Code: https://github.com/huawei-noah/Efficient-AI-Backbones (``tnt_pytorch/tnt.py``: ``Block``).
Peer in the tests: ``timm.models.tnt.Block`` (timm 1.0.31), weights copied by
:func:`load_timm_weights`.

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
:func:`load_timm_weights`); dropout and drop path are left out. Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention`. Works on any grid ``h x w``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import MixerConfig
from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import default_heads
from attnzoo.ops.common import attention_flops
from attnzoo.ops.masks import Mask
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
    """

    words_per_side: int = 2
    inner_dim: int | None = None
    num_heads_inner: int | None = None
    num_heads_outer: int | None = None
    mlp_ratio: float = 4.0
    inner_mlp_ratio: float = 4.0
    qkv_bias: bool = False
    outer_mlp: bool = True
    legacy: bool = False
    norm_eps: float = 1e-5

    def validate(self) -> None:
        owner = self._owner()
        for name in ("words_per_side", "inner_dim", "num_heads_inner", "num_heads_outer"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
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
        for name in ("mlp_ratio", "inner_mlp_ratio"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{owner}: {name} must be > 0, got {value}")
        if not self.norm_eps > 0:
            raise ValueError(f"{owner}: norm_eps must be > 0, got {self.norm_eps}")

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
    """Multi-head softmax self-attention over ``[..., L, dim]`` with one fused q/k/v linear."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x ``[n, L, dim]`` -> ``[n, L, dim]``."""
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        o = F.scaled_dot_product_attention(q, k, v)  # [n, H, L, d]
        return self.proj(rearrange(o, "n h l d -> n l (h d)"))


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


@register_mixer(
    "tnt",
    config=TNTConfig,
    family="softmax",
    dims=2,
    patterns=("noncausal-self",),
    masks=("full",),
    state="none",
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

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: x ``[B, h, w, D + m*c]`` (channels-last, packed) -> same shape (the update)."""
        self.pattern_of(context)
        self.check_input(x)
        self.check_mask(mask)
        cfg = self.cfg
        B, h, w, _ = x.shape
        m, c, D = cfg.words, cfg.inner_width, cfg.outer_dim
        patch = x[..., :D].reshape(B, h * w, D)  # [B, N, D]
        words = x[..., D:].reshape(B * h * w, m, c)  # [B*N, m, c]
        # inner transformer over the words of each patch
        dw = self.attn_in(self.norm_in(words))  # [B*N, m, c]
        dw = dw + self.mlp_in(self.norm_mlp_in(words + dw))
        words = words + dw
        # fusion: words -> patch
        if cfg.legacy:
            flat = self.norm1_proj(words).reshape(B, h * w, m * c)
            fused = self.proj(flat)
        else:
            fused = self.norm2_proj(self.proj(self.norm1_proj(words.reshape(B, h * w, m * c))))
        dp = fused  # [B, N, D]
        dp = dp + self.attn_out(self.norm_out(patch + dp))
        if cfg.outer_mlp:
            dp = dp + self.mlp(self.norm_mlp(patch + dp))
        y = torch.cat([dp, dw.reshape(B, h * w, m * c)], dim=-1)  # [B, N, C]
        return y.reshape(B, h, w, cfg.d_model)


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
