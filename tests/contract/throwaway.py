"""Three throwaway blocks, defined only here, that exercise the interface's other layouts and
roles: a grid3d mixer, a 2-D fusion block whose context is a grid of another size and width, and
a pooling head. Each has a plain reference and a fast path like a real block.

They are declared at import and then taken out of the registry (:func:`specs`), so that only
the tests that ask for them (``registered(*SPECS)``) see them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

import attnzoo as az
from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps
from attnzoo.registry import unregister_mixer

PAPER = az.Paper("a throwaway block of the contract tests", 2026, "-")


@dataclasses.dataclass(frozen=True)
class ToyConfig(az.MixerConfig):
    """What the throwaway blocks share.

    Attributes:
        num_heads: softmax heads over the channels.
        context_dim: width of ``context``; ``None`` means the block's default.
        impl: ``auto`` (``sdpa``) | ``reference`` | ``sdpa``.
    """

    num_heads: int = limit(2, ge=1)
    context_dim: int | None = limit(None, ge=1)
    impl: Literal["auto", "reference", "sdpa"] = "auto"


def _flops(cfg: ToyConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    S_ = T if S is None else S
    return 2 * batch * (T * cfg.d_model * cfg.d_model * 2 + 2 * T * S_ * cfg.d_model)


def _attend(q: Tensor, k: Tensor, v: Tensor, impl: str) -> Tensor:
    """Shapes: q ``[B, H, N, K]``, k/v ``[B, H, M, K]`` -> ``[B, H, N, K]``."""
    if impl == "reference":
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class _Toy(az.Mixer):
    cfg: ToyConfig

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__(cfg)
        D = cfg.d_model
        self.q = nn.Linear(D, D)
        self.kv = nn.Linear(self.context_dim, 2 * D)
        self.out = nn.Linear(D, D)

    def heads(self, t: Tensor) -> Tensor:  # [B, N, D] -> [B, H, N, K]
        return rearrange(t, "b n (h k) -> b h n k", h=self.cfg.num_heads)


@dataclasses.dataclass(frozen=True)
class VolumeConfig(ToyConfig):
    pass


@dataclasses.dataclass(frozen=True)
class FusionConfig(ToyConfig):
    pass


@dataclasses.dataclass(frozen=True)
class PoolConfig(ToyConfig):
    pass


@az.register_mixer("_contract_grid3d", config=VolumeConfig, family="softmax", layout="grid3d",
                   attention_maps=True, complexity="O(N²·C)", paper=PAPER, peer="-",
                   flops=_flops)  # fmt: skip
class VolumeAttention(_Toy):
    """Softmax attention over every voxel of ``[B, d, h, w, C]``."""

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        t = x.flatten(1, 3)  # [B, N, C]
        k, v = self.kv(t).chunk(2, -1)
        o = _attend(self.heads(self.q(t)), self.heads(k), self.heads(v), self.cfg.impl)
        return self.out(rearrange(o, "b h n k -> b n (h k)")).view(x.shape)

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        t = x.flatten(1, 3)
        k, v = self.kv(t).chunk(2, -1)
        q, k = self.heads(self.q(t)), self.heads(k)
        a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
        finish = lambda o: self.out(rearrange(o, "b h n k -> b n (h k)")).view(x.shape)  # noqa: E731
        return AttentionMaps(a, self.heads(v), finish)


@az.register_mixer("_contract_fusion2d", config=FusionConfig, family="softmax", layout="grid2d",
                   role="fusion", complexity="O(h·w·h'·w'·C)", paper=PAPER, peer="-",
                   flops=_flops)  # fmt: skip
class SkipFusion(_Toy):
    """A decoder map ``[B, h, w, C]`` attends to an encoder map ``[B, h', w', C']`` (twice as
    wide unless ``context_dim`` says otherwise)."""

    @property
    def context_dim(self) -> int:
        return self.cfg.context_dim or 2 * self.cfg.d_model

    def mix(self, x: Tensor, context: Tensor, mask: object) -> Tensor:
        k, v = self.kv(context.flatten(1, 2)).chunk(2, -1)  # [B, h'*w', C] each
        q = self.heads(self.q(x.flatten(1, 2)))
        o = _attend(q, self.heads(k), self.heads(v), self.cfg.impl)
        return self.out(rearrange(o, "b h n k -> b n (h k)")).view(x.shape)


@az.register_mixer("_contract_pool", config=PoolConfig, family="softmax", role="pooling",
                   complexity="O(T·D)", paper=PAPER, peer="-", flops=_flops)  # fmt: skip
class QueryPool(_Toy):
    """A learned query per head attends over the tokens: ``[B, T, D] -> [B, D]``."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__(cfg)
        self.query = nn.Parameter(torch.randn(1, cfg.d_model))

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        k, v = self.kv(x).chunk(2, -1)
        q = self.heads(self.q(self.query).expand(x.shape[0], 1, -1))
        o = _attend(q, self.heads(k), self.heads(v), self.cfg.impl)  # [B, H, 1, K]
        return self.out(rearrange(o, "b h 1 k -> b (h k)"))


def specs() -> list[az.MixerSpec]:
    """The three specs, out of the registry."""
    out = [VolumeAttention.spec, SkipFusion.spec, QueryPool.spec]
    for s in out:
        unregister_mixer(s.name)
    return out


SPECS = specs()
