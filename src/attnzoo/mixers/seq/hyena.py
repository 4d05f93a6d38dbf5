"""Hyena (S-HYENA, 1-D): gated implicit long convolutions, causal.

Poli et al., "Hyena Hierarchy: Towards Larger Convolutional Language Models", ICML 2023.
https://arxiv.org/abs/2302.10866  Code: https://github.com/HazyResearch/safari
(``standalone_hyena.py``: ``HyenaOperator``, ``HyenaFilter``, ``fftconv``; the full layer
``src/models/sequence/hyena.py``). No pip peer: the long convolution is checked against a
direct convolution and a materialised matrix (``tests/ops/test_longconv.py``), the block
against its own reference path, its recurrence matrix and token-by-token streaming.

On ``x [B, T, D]`` with order ``N`` (see :mod:`attnzoo.mixers.hyena_filter` for the filter and
the recurrence as the official code runs them)::

    p = x W_in + b                                   # [B, T, (N+1) D]
    p = causal depthwise conv (kernel k, bias) of p  # short filter, k = 3
    x_0, ..., x_{N-1}, v = split(p)                  # [B, T, D] each
    z = v;  z = h_o * (x_g z) + D_o (x_g z)  for (o, g) = (0, N-1), ..., (N-2, 1)
    y = (x_0 z) W_out + b

where ``h_o * u`` is the causal long convolution ``sum_{s <= t} h_o[t - s] u_s``
(:func:`attnzoo.ops.longconv.long_conv`, ``causal=True``) with the implicit filter evaluated at
positions ``0 .. T-1`` normalised by ``max_len`` (the official ``l_max``). Time
``O(T log T · D)`` for the convolutions plus ``O(T·D²)`` for the projections.

Choices and departures:

- **Causal only**, as in the paper and both official codes (Hyena N-D also runs this operator
  causally on ViT tokens); the official code has no two-sided Hyena filter, so there is no
  ``noncausal-self`` pattern (the grid blocks, ``hyena_nd`` / ``hyena_3d``, are the non-causal
  form the N-D paper defines).
- **Lengths past ``max_len``**: the official code crops the sequence to ``l_max``; here the
  filter is evaluated at every position with the same normalisation (``t > 1``, where the
  window has decayed further), so any ``T`` works and a prefix's outputs never depend on the
  tokens or the length after it (``step`` equals ``forward``).
- The long convolution equals the true convolution; the official 1-D ``fftconv`` does too (its
  ``/ 2L`` and ``norm="forward"`` cancel).
- **Streaming** (``state="growing"``): the state keeps the last ``k - 1`` projections for the
  short convolution and every past input of each long convolution, and each step evaluates the
  filter at ``t + 1`` positions: ``O(t·D)`` per token, equal to ``forward``.
- **Attention maps**: the data-controlled matrix ``H(u)`` of ``y = H(u) v`` (the paper's view
  of Hyena as attention), one ``[T, T]`` map per channel (``H = D``), lower triangular; exact.

Left out: dropout (official default 0), safari's multi-head / ``inner_factor`` /
``num_blocks`` / ``outer_mixing`` / ``post_order_ffn`` variants (all off by default), the
trainable positional features (fixed here, see the filter module) and the fused FFT kernels.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, StreamingMixer
from attnzoo.mixers.hyena_filter import (
    HyenaBaseConfig,
    HyenaFilter,
    filter_flops,
    gating_recurrence,
    recurrence_matrix,
    split_filters,
)
from attnzoo.ops.longconv import long_conv, long_conv_flops, long_conv_matrix
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="Hyena Hierarchy: Towards Larger Convolutional Language Models",
    year=2023,
    url="https://arxiv.org/abs/2302.10866",
    code="https://github.com/HazyResearch/safari",
)


@dataclasses.dataclass(frozen=True)
class HyenaConfig(HyenaBaseConfig):
    """Hyena operator on tokens (causal).

    Attributes:
        max_len: the length the filter's positions are normalised by (official ``l_max``;
            safari's layer config 1024); longer inputs evaluate the filter past ``t = 1``.
    """

    max_len: int = limit(1024, ge=2)


@dataclasses.dataclass
class HyenaState:
    """Streaming state: ``short [B, k-1, (N+1) D]`` (the last projections, zeros before the
    first token), ``inputs [B, t, N-1, D]`` (every past input of each long convolution);
    ``position`` counts tokens."""

    short: Tensor
    inputs: Tensor
    position: int = 0


def hyena_flops(cfg: HyenaConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """Projections (in, short conv, out), the ``N`` gates, the ``N - 1`` FFT long convolutions
    (:func:`~attnzoo.ops.longconv.long_conv_flops`) and the implicit filter on ``T`` positions."""
    D, N, k = cfg.d_model, cfg.order, cfg.short_filter_order
    proj = 2 * batch * T * (D * (N + 1) * D + (N + 1) * D * k + D * D)
    gates = batch * T * D * N
    convs = (N - 1) * long_conv_flops(batch, D, T, 1)
    return proj + gates + convs + filter_flops(cfg, T, D * (N - 1), cfg.emb_dim)


@register_mixer(
    "hyena",
    config=HyenaConfig,
    family="conv",
    patterns=("causal-self",),
    state="growing",
    attention_maps=True,
    complexity="O(T log T·D + T·D²) time; O(T·D) memory; O(T·D) state",
    paper=PAPER,
    peer="identity: FFT long convolution = direct convolution = materialised matrix (fp64); "
    "no pip peer",
    flops=hyena_flops,
)
class Hyena(StreamingMixer):
    cfg: HyenaConfig
    state_type = HyenaState

    def __init__(self, cfg: HyenaConfig) -> None:
        super().__init__(cfg)
        D, N = cfg.d_model, cfg.order
        width = D * (N + 1)
        self.in_proj = nn.Linear(D, width)
        self.short_filter = nn.Conv1d(width, width, cfg.short_filter_order, groups=width)
        self.filter_fn = HyenaFilter(cfg, D * (N - 1), axes=1, joint=True)
        self.out_proj = nn.Linear(D, D)

    def _short(self, p: Tensor) -> Tensor:
        """Causal depthwise conv over time. Shapes: ``[B, T, W] -> [B, T, W]``."""
        k = self.cfg.short_filter_order
        y = self.short_filter(F.pad(rearrange(p, "b t w -> b w t"), (k - 1, 0)))
        return rearrange(y, "b w t -> b t w")

    def _project(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Gates ``x_0 .. x_{N-1}`` and ``v``, each ``[B, T, D]``."""
        *gates, v = self._short(self.in_proj(x)).split(self.cfg.d_model, dim=-1)
        return gates, v

    def _filters(self, T: int) -> tuple[list[Tensor], list[Tensor]]:
        """``N - 1`` filters ``[T, D]`` and skips ``[D]``."""
        h = self.filter_fn((T,), (self.cfg.max_len,))  # [T, (N-1) D]
        return split_filters(h, self.filter_fn.bias, self.cfg.order)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        gates, v = self._project(x)
        hs, skips = self._filters(x.shape[1])
        impl = self.cfg.long_impl

        def conv(z: Tensor, o: int) -> Tensor:
            return long_conv(z, hs[o], causal=True, skip=skips[o], impl=impl)

        return self.out_proj(gating_recurrence(v, gates, conv))

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """``H(u)``: ``[B, D, T, T]`` per channel; values ``v [B, D, T, 1]``; exact."""
        gates, v = self._project(x)
        T = x.shape[1]
        hs, skips = self._filters(T)
        eye = torch.eye(T, dtype=x.dtype, device=x.device)
        mats = [long_conv_matrix(h, (T,), causal=True) + s[:, None, None] * eye
                for h, s in zip(hs, skips, strict=True)]  # fmt: skip
        weights = recurrence_matrix(gates, mats)
        values = rearrange(v, "b t d -> b d t 1")
        return AttentionMaps(weights, values, lambda o: self.out_proj(o[..., 0].transpose(1, 2)))

    # ---- streaming ------------------------------------------------------------------------
    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> HyenaState:
        D, N, k = self.cfg.d_model, self.cfg.order, self.cfg.short_filter_order
        return HyenaState(
            torch.zeros(batch_size, k - 1, (N + 1) * D, device=device, dtype=dtype),
            torch.zeros(batch_size, 0, N - 1, D, device=device, dtype=dtype),
        )

    def advance(self, x_t: Tensor, state: HyenaState) -> tuple[Tensor, HyenaState]:
        window = torch.cat([state.short, self.in_proj(x_t)[:, None]], dim=1)  # [B, k, W]
        w = self.short_filter.weight[:, 0]  # [W, k]: output t sees p_{t-k+1} .. p_t
        p = torch.einsum("bkw,wk->bw", window, w) + self.short_filter.bias
        *gates, v = p.split(self.cfg.d_model, dim=-1)  # [B, D] each
        t = state.inputs.shape[1]
        hs, skips = self._filters(t + 1)
        z, inputs = v, []
        for o, g in enumerate(reversed(gates[1:])):
            z = g * z
            inputs.append(z)
            past = torch.cat([state.inputs[:, :, o], z[:, None]], dim=1)  # [B, t+1, D]
            # sum_{s <= t} h[t - s] z_s: the filter reversed against the past inputs
            z = torch.einsum("bsd,sd->bd", past, hs[o].flip(0)) + skips[o] * z
        y = self.out_proj(gates[0] * z)  # [B, D]
        new_inputs = torch.cat([state.inputs, torch.stack(inputs, dim=1)[:, None]], dim=1)
        return y, HyenaState(window[:, 1:], new_inputs)
