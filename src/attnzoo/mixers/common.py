"""Pieces shared by mixers: the multi-head q/k/v attention layer with a KV cache.

``softmax`` and ``sigmoid`` differ only in the op they call; everything else (projections, GQA,
config-derived masks, call-time masks, KV-cache streaming, FLOP accounting) lives here once.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import MixerConfig, limit
from attnzoo.mixers.base import AttentionMaps, Mixer, StreamingMixer
from attnzoo.ops.common import attention_flops, expand_kv
from attnzoo.ops.masks import MASK_KINDS, Mask

ATTENTION_MASKS = MASK_KINDS  # every kind: the ops evaluate any mask (attnzoo.ops.mask_rows)


def default_heads(d_model: int) -> int:
    """``d_model // 64`` heads of width 64 when 64 divides ``d_model``, otherwise one head."""
    return d_model // 64 if d_model >= 64 and d_model % 64 == 0 else 1


def load_matching_state(mixer: Mixer, theirs: dict[str, Tensor], *, source: str) -> None:
    """Load a peer's ``state_dict`` whose names and shapes equal ours (``source`` names the peer
    in errors): a missing, extra or mis-shaped entry raises ``ValueError`` naming it."""
    name = mixer.spec.name
    ours = mixer.state_dict()
    if set(ours) != set(theirs):
        raise ValueError(
            f"{name}: {source} state_dict keys {sorted(theirs)} do not match ours {sorted(ours)} "
            "(check qkv_bias)"
        )
    for key, t in theirs.items():
        if ours[key].shape != t.shape:
            raise ValueError(
                f"{name}: {source} '{key}' has shape {tuple(t.shape)}, ours {tuple(ours[key].shape)}"
            )
    mixer.load_state_dict(theirs)


@dataclasses.dataclass(frozen=True)
class HeadsConfig(MixerConfig):
    """Base of configs that split ``d_model`` into ``num_heads`` equal heads.

    ``num_heads=None`` means :meth:`default_num_heads` (:func:`default_heads` unless a mechanism
    overrides it with its paper's head width); ``d_model`` must be divisible by it.

    Attributes:
        num_heads: heads; ``None`` means the mechanism's default (its paper's head width, or
            :func:`default_heads`).
    """

    num_heads: int | None = limit(None, ge=1)
    # d_model splits evenly into the heads (False: a subclass checks its own head widths)
    split_heads: ClassVar[bool] = True

    def default_num_heads(self) -> int:
        return default_heads(self.d_model)

    @property
    def heads(self) -> int:
        return self.num_heads if self.num_heads is not None else self.default_num_heads()

    @property
    def dim_head(self) -> int:
        return self.d_model // self.heads

    def validate(self) -> None:
        # a config with its own head_dim field decouples the head width from d_model
        split = self.split_heads and getattr(self, "head_dim", None) is None
        if split and self.d_model % self.heads != 0:
            hint = (
                "; pick num_heads dividing d_model or set head_dim"
                if hasattr(self, "head_dim")
                else ""
            )
            raise ValueError(
                f"{self._owner()}: d_model={self.d_model} is not divisible by "
                f"num_heads={self.heads}{hint}"
            )


@dataclasses.dataclass(frozen=True)
class GatedConfig(HeadsConfig):
    """Base of the gated-linear-attention layers (GLA and ViG): low-rank log forget gates.

    Attributes:
        expand_k: ``key_dim = int(d_model * expand_k)`` (q, k and gate width).
        gate_low_rank_dim: inner width of the low-rank gate projection.
        gate_logit_normalizer: ``gk = logsigmoid(.) / gate_logit_normalizer``.
        norm_eps: epsilon of the per-head RMSNorm(s).
        impl: op path of :func:`attnzoo.ops.gla.gated_linear_attention`: ``auto`` (``native``
            on CPU when it builds, else ``chunk``) | ``reference`` | ``chunk`` | ``native``
            (fused C++ CPU kernels) | ``recurrent``.
        chunk_size: chunk length of the ``chunk`` path.
    """

    expand_k: float = limit(0.5, gt=0)
    gate_low_rank_dim: int = limit(16, ge=1)
    gate_logit_normalizer: float = limit(16.0, gt=0)
    norm_eps: float = limit(1e-5, gt=0)
    impl: Literal["auto", "reference", "chunk", "native", "recurrent"] = "auto"
    chunk_size: int = limit(64, ge=1)
    split_heads: ClassVar[bool] = False  # key_dim and value_dim split, checked below

    @property
    def key_dim(self) -> int:
        return int(self.d_model * self.expand_k)

    @property
    def value_dim(self) -> int:
        return self.d_model

    def validate(self) -> None:
        for name, dim in (("key_dim", self.key_dim), ("value_dim", self.value_dim)):
            if dim < 1 or dim % self.heads != 0:
                raise ValueError(
                    f"{self._owner()}: {name}={dim} (d_model={self.d_model} times its expand "
                    f"ratio) must be a positive multiple of num_heads={self.heads}"
                )


@dataclasses.dataclass(frozen=True)
class AttentionConfig(MixerConfig):
    """Multi-head q/k/v attention.

    Attributes:
        num_heads: query heads; ``None`` means :func:`default_heads`.
        num_kv_heads: key/value heads (grouped-query attention); ``None`` means ``num_heads``.
        head_dim: per-head width; ``None`` means ``d_model // num_heads``.
        qkv_bias: bias on the q/k/v projections.
        qk_norm: LayerNorm on q and k per head (stabilises training; the sigmoid paper's advice).
        window: sliding-window size (see :class:`attnzoo.Mask`), or ``None``.
        prefix: prefix-LM length (needs ``causal=True``), or ``None``.
        block: block-causal block size (needs ``causal=True``), or ``None``.
        context_dim: width of ``context`` for cross patterns; ``None`` means ``d_model``.
    """

    num_heads: int | None = limit(None, ge=1)
    num_kv_heads: int | None = limit(None, ge=1)
    head_dim: int | None = limit(None, ge=1)
    qkv_bias: bool = False
    qk_norm: bool = False
    window: int | None = None
    prefix: int | None = None
    block: int | None = None
    context_dim: int | None = limit(None, ge=1)

    # the mask parameters this mechanism computes (linear-time kinds take none of them)
    mask_options: ClassVar[tuple[str, ...]] = ("window", "prefix", "block")

    def validate(self) -> None:
        owner = self._owner()
        for name in ("window", "prefix", "block"):
            if name not in self.mask_options and getattr(self, name) is not None:
                raise ValueError(
                    f"{owner}: {name}={getattr(self, name)} is not supported; {owner} takes only "
                    "the full and causal masks"
                )
        heads = self.heads
        if self.head_dim is None and self.d_model % heads != 0:
            raise ValueError(
                f"{owner}: d_model={self.d_model} is not divisible by num_heads={heads}; "
                "pick num_heads dividing d_model or set head_dim"
            )
        if heads % self.kv_heads != 0:
            raise ValueError(
                f"{owner}: num_heads={heads} must be a multiple of num_kv_heads={self.kv_heads}"
            )
        # a Mask checks window / prefix / block consistency with causal and names the argument
        self.mask()

    @property
    def heads(self) -> int:
        return self.num_heads if self.num_heads is not None else default_heads(self.d_model)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.heads

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.heads

    def mask(self) -> Mask:
        """The mask this config describes (call-time masks may replace it)."""
        try:
            return Mask(
                causal=self.causal, window=self.window, prefix=self.prefix, block=self.block
            )
        except ValueError as e:
            raise ValueError(f"{self._owner()}: {e}") from None


@dataclasses.dataclass
class KVCache:
    """Growing key/value state for streaming (truncated to the window when one is set).

    Shapes:
        k ``[B, t, Hkv, K]``, v ``[B, t, Hkv, V]``; ``position`` counts tokens seen.
    """

    k: Tensor
    v: Tensor
    position: int = 0


class AttentionMixer(StreamingMixer):
    """Projections + attention op + output projection; subclasses implement :meth:`attend` (and
    :meth:`weights` for attention maps). Streams the causal-self pattern with a KV cache."""

    cfg: AttentionConfig
    state_type = KVCache

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__(cfg)
        H, Hkv, K = cfg.heads, cfg.kv_heads, cfg.dim_head
        self.q_proj = nn.Linear(cfg.d_model, H * K, bias=cfg.qkv_bias)
        self.kv_proj = nn.Linear(self.context_dim, 2 * Hkv * K, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(H * K, cfg.d_model)
        self.q_norm = nn.LayerNorm(K) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(K) if cfg.qk_norm else nn.Identity()

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        """The attention op. Shapes: q ``[B, T, H, K]``, k/v ``[B, S, Hkv, K]`` -> ``[B, T, H, K]``."""
        raise NotImplementedError

    def weights(self, q: Tensor, k: Tensor, mask: Mask) -> Tensor:
        """The op's attention weights. Shapes: q ``[B, T, H, K]``, k ``[B, S, H, K]`` ->
        ``[B, H, T, S]``."""
        raise NotImplementedError

    def _project(self, x: Tensor, source: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        H, Hkv = self.cfg.heads, self.cfg.kv_heads
        q = rearrange(self.q_proj(x), "b t (h k) -> b t h k", h=H)  # [B, T, H, K]
        kv = rearrange(self.kv_proj(source), "b s (two h k) -> two b s h k", two=2, h=Hkv)
        return self.q_norm(q), self.k_norm(kv[0]), kv[1]  # k, v: [B, S, Hkv, K]

    def _out(self, o: Tensor) -> Tensor:
        return self.out_proj(rearrange(o, "b t h k -> b t (h k)"))  # [B, T, H, K] -> [B, T, D]

    def mix(self, x: Tensor, context: Tensor | None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, T, D]``, context ``[B, S, D]`` or ``None`` -> ``[B, T, D]``."""
        q, k, v = self._project(x, x if context is None else context)
        return self._out(self.attend(q, k, v, mask if mask is not None else self.cfg.mask()))

    def maps(self, x: Tensor, context: Tensor | None, mask: Mask | None) -> AttentionMaps:
        """Weights ``[B, H, T, S]``; values ``[B, H, S, K]``; exact."""
        q, k, v = self._project(x, x if context is None else context)
        H = self.cfg.heads
        k, v = expand_kv(k, H), expand_kv(v, H)
        a = self.weights(q, k, mask if mask is not None else self.cfg.mask())
        values = rearrange(v, "b s h k -> b h s k")
        return AttentionMaps(a, values, lambda o: self._out(rearrange(o, "b h t k -> b t h k")))

    # ---- streaming (causal-self) ----------------------------------------------------------
    def stream_check(self) -> None:
        if not self.cfg.causal or self.cfg.prefix is not None or self.cfg.block is not None:
            raise ValueError(
                f"{self.spec.name}: step() streams the causal-self pattern with a causal or causal "
                f"sliding-window mask; this mixer has mask {self.cfg.mask().name!r}"
            )

    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """Empty KV cache."""
        shape = (batch_size, 0, self.cfg.kv_heads, self.cfg.dim_head)
        return KVCache(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def advance(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        x = x_t[:, None]  # [B, 1, D]
        q, k, v = self._project(x, x)
        k = torch.cat([state.k, k], dim=1)  # [B, t+1, Hkv, K]
        v = torch.cat([state.v, v], dim=1)
        if self.cfg.window is not None:
            k, v = k[:, -self.cfg.window :], v[:, -self.cfg.window :]
        o = self.attend(q, k, v, Mask())  # the cache holds exactly the visible keys
        return self._out(o)[:, 0], KVCache(k, v)


def attention_mixer_flops(
    cfg: AttentionConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """Projections plus ``attention_flops`` over the mask's attended pairs."""
    S_ = T if S is None else S
    m = mask if mask is not None else cfg.mask()
    return projection_flops(cfg, batch, T, S) + attention_flops(
        batch, cfg.heads, cfg.dim_head, cfg.dim_head, m.pairs(T, S_)
    )


def projection_flops(cfg: AttentionConfig, batch: int, T: int, S: int | None) -> int:
    """The q, k/v and output projections of an :class:`AttentionMixer` (2 FLOPs per MAC)."""
    S_ = T if S is None else S
    H, Hkv, K, D = cfg.heads, cfg.kv_heads, cfg.dim_head, cfg.d_model
    Dc = cfg.context_dim or D
    return 2 * batch * (T * D * H * K + S_ * Dc * 2 * Hkv * K + T * H * K * D)
