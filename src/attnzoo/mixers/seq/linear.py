"""Plain (kernelised) linear attention.

Katharopoulos, Vyas, Pappas, Fleuret, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention", 2020. https://arxiv.org/abs/2006.16236
Code: https://github.com/idiap/fast-transformers ; peer: fla-core's
``naive_recurrent_linear_attn`` / ``naive_chunk_linear_attn``.

Per head, with a feature map ``phi`` (``elu(x) + 1`` by default)::

    o_t = sum_s (phi(q_t) . phi(k_s)) v_s / (sum_s phi(q_t) . phi(k_s) + eps)

summing over all keys (non-causal, self or cross) or over ``s <= t`` (causal). The score scale
is 1 (it cancels in the normalised form); ``eps = 1e-6`` as in fast-transformers.
``normalize=False`` drops the denominator. Causal streaming keeps the constant state
``kv = sum_s phi(k_s)^T v_s`` ``[B, H, K, V]`` and, when normalising, ``z = sum_s phi(k_s)``
``[B, H, K]``. Time ``O(T·K·V)`` per head; the ``chunk`` path adds ``O(T·C·(K+V))``.

Projections, grouped-query heads and ``qk_norm`` come from :class:`AttentionMixer`; the only
masks are full and causal (no windows, prefixes or documents); causal cross is not supported.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
from einops import rearrange
from torch import Tensor

from attnzoo import peers
from attnzoo.config import limit, suggest
from attnzoo.distributed.strategies import StatePassing, register_strategy
from attnzoo.mixers.common import AttentionConfig, AttentionMixer, projection_flops
from attnzoo.ops.chunks import chunk_flops
from attnzoo.ops.common import expand_kv
from attnzoo.ops.linear import (
    EPS,
    FEATURE_MAPS,
    feature_map,
    linear_attention,
    linear_attention_flops,
    linear_attention_step,
    linear_weights,
)
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport, LowPrecision

PAPER = Paper(
    title="Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
    year=2020,
    url="https://arxiv.org/abs/2006.16236",
    code="https://github.com/idiap/fast-transformers",
)


@dataclasses.dataclass(frozen=True)
class LinearConfig(AttentionConfig):
    """:class:`AttentionConfig` (without ``window`` / ``prefix`` / ``block``) plus:

    Attributes:
        feature_map: ``"elu+1"`` (the paper's), ``"relu"`` or ``"identity"``.
        normalize: divide by the summed scores (the paper's form); needs a non-negative map.
        impl: ``auto`` (``native`` on CPU when it builds, else ``chunk``) | ``reference`` |
            ``chunk`` | ``native`` (the fused C++ CPU kernel) | ``compiled`` (``chunk`` through
            ``torch.compile``; compiles once per input shape) | ``recurrent``.
        chunk_size: tokens per chunk of the ``chunk`` path.
    """

    feature_map: str = "elu+1"
    normalize: bool = True
    impl: Literal["auto", "reference", "chunk", "native", "compiled", "recurrent"] = "auto"
    chunk_size: int = limit(64, ge=1)
    mask_options: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        owner = self._owner()
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"{owner}: feature_map must be one of {', '.join(map(repr, FEATURE_MAPS))}, "
                f"got {self.feature_map!r}{suggest(self.feature_map, FEATURE_MAPS)}"
            )


@dataclasses.dataclass
class LinearState:
    """Streaming state of causal linear attention.

    Shapes:
        kv ``[B, H, K, V]`` (sum of ``k^T v``), z ``[B, H, K]`` (sum of ``k``) or ``None``
        without normalisation; ``position`` counts tokens seen.
    """

    kv: Tensor
    z: Tensor | None
    position: int = 0


def linear_mixer_flops(
    cfg: LinearConfig, batch: int, T: int, S: int | None, mask: Mask | None
) -> int:
    """Projections plus :func:`linear_attention_flops`."""
    S_ = T if S is None else S
    H, K = cfg.heads, cfg.dim_head
    proj = projection_flops(cfg, batch, T, S)
    return proj + linear_attention_flops(batch, H, K, K, T, S_, cfg.normalize)


@register_mixer(
    "linear",
    config=LinearConfig,
    family="linear",
    patterns=("noncausal-self", "causal-self", "noncausal-cross"),
    state="constant",
    attention_maps=True,
    complexity="O((T+S)·K·V) time; O(K·V) state per head",
    paper=PAPER,
    peer="fla-core naive_recurrent_linear_attn / naive_chunk_linear_attn, fwd+bwd",
    export=ExportSupport(
        dynamic="causal: impl='auto' exports the chunk path, whose Python loop over chunks fixes "
        "T (impl='native' exports a dynamic T as the custom op attnzoo::linear_chunk, not to "
        "ONNX)",
    ),
    flops=linear_mixer_flops,
    low_precision=LowPrecision(refused_impls=("native",)),  # a float32/float64 kernel
)
class LinearAttention(AttentionMixer):
    cfg: LinearConfig
    state_type = LinearState

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        fm = self.cfg.feature_map
        return linear_attention(
            feature_map(q, fm),
            feature_map(k, fm),
            v,
            causal=mask.causal,
            normalize=self.cfg.normalize,
            impl=self.cfg.impl,
            chunk_size=self.cfg.chunk_size,
        )  # [B, T, H, K]

    def weights(self, q: Tensor, k: Tensor, mask: Mask) -> Tensor:
        fm = self.cfg.feature_map
        return linear_weights(
            feature_map(q, fm), feature_map(k, fm), causal=mask.causal, normalize=self.cfg.normalize
        )  # [B, H, T, S]

    # ---- streaming (causal-self): constant state ------------------------------------------
    def stream_check(self) -> None:
        if not self.cfg.causal:
            raise ValueError(
                "linear: step() streams the causal-self pattern; this mixer has causal=False"
            )

    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LinearState:
        H, K = self.cfg.heads, self.cfg.dim_head
        kv = torch.zeros(batch_size, H, K, K, device=device, dtype=dtype)
        z = (
            torch.zeros(batch_size, H, K, device=device, dtype=dtype)
            if self.cfg.normalize
            else None
        )
        return LinearState(kv, z)

    def advance(self, x_t: Tensor, state: LinearState) -> tuple[Tensor, LinearState]:
        x = x_t[:, None]  # [B, 1, D]
        q, k, v = self._project(x, x)  # [B, 1, H, K], [B, 1, Hkv, K] x2
        H, fm = self.cfg.heads, self.cfg.feature_map
        k, v = expand_kv(k, H), expand_kv(v, H)
        o, kv, z = linear_attention_step(
            feature_map(q[:, 0], fm), feature_map(k[:, 0], fm), v[:, 0], state.kv, state.z, eps=EPS
        )  # o: [B, H, K]
        return self.out_proj(rearrange(o, "b h k -> b (h k)")), LinearState(kv, z)


# ---- peer: fla-core's pure-PyTorch chunked linear attention ----------------------------------
def scan_flops(T: int, train: bool, chunk: int = 64) -> int:
    """FLOPs of the chunked causal scan at the peer cases' shape: one scan, or four with the
    backward (dq, dk and dv are one scan each)."""
    return chunk_flops(peers.SEQ_B, peers.SEQ_H, peers.SEQ_K, peers.SEQ_K, T, chunk) * (
        4 if train else 1
    )


def _fla_case(T: int, g: torch.Generator, impl: str, train: bool) -> peers.PeerPair:
    peer = peers.peer_function("fla.ops.linear_attn.naive", "naive_chunk_linear_attn")
    s = peers.SEQ_K**-0.5
    return peers.seq_pair(
        lambda q, k, v: linear_attention(q, k, v, causal=True, scale=s, impl=impl),
        lambda q, k, v: peer(q, k, v, scale=s),
        peers.seq_inputs(T, g), scan_flops(T, train), T, train,
    )  # fmt: skip


# the eager chunk path, the fused C++ kernels (what auto runs on CPU), chunk through
# torch.compile, and the native kernels' forward + backward
LINEAR_VARIANTS = (
    ("chunk", False, (2048, 8192, 32768), (2048, 8192)),
    ("native", False, (2048, 8192, 32768), (2048, 8192)),
    ("compiled", False, (2048, 8192, 32768), (2048, 8192)),
    ("native", True, (2048, 8192), (2048,)),
)
peers.register_impl_cases("linear", "fla-naive-chunk", "fla naive_chunk_linear_attn", _fla_case,
                    LINEAR_VARIANTS, smoke_size=192)  # fmt: skip

# ---- context parallelism: causal states passed across ranks --------------------------------------
register_strategy(StatePassing("state-linear", "linear attention, chunk states combined across "
                               "ranks (all-gather prefix)"))  # fmt: skip
