"""Hyena N-D (S-HYENA on grids): Hyena's gated implicit long convolutions over 2 or 3 axes.

Zimerman & Wolf, "Multi-Dimensional Hyena for Spatial Inductive Bias", AISTATS 2024.
https://arxiv.org/abs/2309.13600  Code: https://github.com/Itamarzimm/HyenaND
(``pytorch-image-models/timm/models/layers/hyena2d.py``: ``HyenaOperator2d``, ``HyenaFilter2d``,
``fftconv2d``). The 1-D operator: Poli et al. 2023, :mod:`attnzoo.mixers.seq.hyena`. No pip
peer: the long convolution is checked against a direct convolution and a materialised matrix
(``tests/ops/test_longconv.py``), the block against its reference path and its matrix form.

Registered twice: ``hyena_nd`` on ``grid2d`` ``[B, h, w, C]`` (the official 2-D layer) and
``hyena_3d`` on ``grid3d`` ``[B, d, h, w, C]`` (the same construction over three axes, as the
paper's N-D formulation describes). Per call, with order ``N`` (the filter and the recurrence:
:mod:`attnzoo.mixers.hyena_filter`)::

    p = depthwise k x k (x k) conv, centred, biased (x W_in + b)      # [B, *S, (N+1) C]
    x_0, ..., x_{N-1}, v = split(p)
    z = v;  z = h_o * (x_g z) + D_o (x_g z)  for (o, g) = (0, N-1), ..., (N-2, 1)
    y = (x_0 z) W_out + b

**Filter support** (the official convention, not a centred one): ``h_o`` has the grid's sides
and is indexed from lag 0 on every axis, ``(h * u)[p] = sum_{q <= p} h[p - q] u[q]``
(:func:`attnzoo.ops.longconv.long_conv` with ``causal=True``): each output sees the quadrant
(octant) of the grid above-left of it. ``fftconv2d`` computes exactly this support (filter of
size ``L x L``, outputs ``[:L, :L]`` of a ``2L x 2L`` FFT), and the official model gets other
directions from ``directional_mode`` rather than from a two-sided filter:

- ``standard``: the one-quadrant convolution above;
- ``seq``: the first long convolution (``o = 0``) runs on the input flipped along every axis
  and flips back (the opposite quadrant); the official ViT alternates ``seq`` and
  ``standard`` between blocks (``--directional_mode seq``, its README's training command);
- ``4dir`` (2-D) / ``8dir`` (3-D): the recurrence runs on the ``2^axes`` flips of its inputs
  (official order on 2-D: none, both axes, ``w``, ``h``), each output is flipped back, and a
  learned ``Linear(2^axes, 1)`` (``linear_mix``) mixes them per position and channel.

Positions are normalised by the call's own sides (``t = k / (n - 1)``, ``w = 2 pi k / n`` per
axis): the official layer asserts a square ``l_max x l_max`` grid and builds its positions for
it, which this equals on such a grid; here any grid works. The filter is ``joint`` by default
(one FFN on all axes' features, the README's ``--hyena2d_filter``) or ``product`` (the
official default).

Departures: the official ``fftconv2d`` returns the true convolution divided by ``2L`` (its
``rfft2(k) / 2L`` is not cancelled by ``irfft2``'s default normalisation); here the long
convolution is the true one, as in 1-D Hyena. Left out: ``directional_mode`` ``parallel`` and
``4dirp`` (four times the short-filter channels; a concatenating mix), ``window_mode``
``learn`` / ``symettric`` and ``sqrt_decay`` (options off by default), the explicit
``direct_paramtrization`` filters, dropout (default 0), and the trainable positional features.
Time ``O(N log N · C)`` over the ``N`` positions plus ``O(N·C²)`` for the projections.

**Attention maps**: ``H(u)`` of ``y = H(u) v`` per channel (``[B, C, N, N]`` over the flattened
grid; ``4dir``/``8dir`` sum the flipped matrices with the mixing weights, the mixing bias goes
to ``finish``); exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.hyena_filter import (
    HyenaBaseConfig,
    HyenaFilter,
    filter_flops,
    gating_recurrence,
    recurrence_matrix,
    split_filters,
)
from attnzoo.ops.conv import depthwise_conv
from attnzoo.ops.longconv import long_conv, long_conv_flops, long_conv_matrix
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="Multi-Dimensional Hyena for Spatial Inductive Bias",
    year=2024,
    url="https://arxiv.org/abs/2309.13600",
    code="https://github.com/Itamarzimm/HyenaND",
)
MULTI = {"4dir": 2, "8dir": 3}  # multi-directional mode -> the axes it is defined for


@dataclasses.dataclass(frozen=True)
class HyenaNDConfig(HyenaBaseConfig):
    """Hyena N-D on a grid. ``d_model`` is the channel count C.

    Attributes:
        filter_mode: ``joint`` (one FFN on every axis' positional features; the official
            ``hyena2d_filter=True``) | ``product`` (one FFN per axis, multiplied; the official
            default).
        directional_mode: ``standard`` | ``seq`` | ``4dir`` (grid2d) | ``8dir`` (grid3d); see
            the module docstring.
    """

    filter_mode: Literal["joint", "product"] = "joint"
    directional_mode: Literal["standard", "seq", "4dir", "8dir"] = "standard"

    axes: ClassVar[int] = 2

    def validate(self) -> None:
        if self.short_filter_order % 2 == 0:
            raise ValueError(
                f"{self._owner()}: short_filter_order must be odd on a grid (a centred "
                f"same-size depthwise conv), got {self.short_filter_order}"
            )
        mode = self.directional_mode
        if mode in MULTI and MULTI[mode] != self.axes:
            ok = next(m for m, a in MULTI.items() if a == self.axes)
            raise ValueError(
                f"{self._owner()}: directional_mode={mode!r} is for {MULTI[mode]}-D grids; on "
                f"{self.axes}-D grids use 'standard', 'seq' or {ok!r}"
            )

    @property
    def flips(self) -> list[tuple[int, ...]]:
        """The grid axes (of ``[B, *S, C]``) each direction flips: ``[()]`` for one
        direction; the official order on 2-D: none, both, ``w``, ``h``; on 3-D likewise: none,
        all, the pairs, the single axes (later axes first). ``linear_mix`` weighs them so."""
        if self.directional_mode not in MULTI:
            return [()]
        axes = tuple(range(1, self.axes + 1))
        rest = [s for r in range(self.axes - 1, 0, -1)
                for s in reversed(list(itertools.combinations(axes, r)))]  # fmt: skip
        return [(), axes, *rest]


@dataclasses.dataclass(frozen=True)
class HyenaND2dConfig(HyenaNDConfig):
    """Hyena N-D on ``grid2d`` (the official 2-D layer)."""

    axes: ClassVar[int] = 2


@dataclasses.dataclass(frozen=True)
class HyenaND3dConfig(HyenaNDConfig):
    """Hyena N-D on ``grid3d``."""

    axes: ClassVar[int] = 3


def hyena_nd_flops(cfg: HyenaNDConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """``T`` is the number of positions: projections (in, short conv, out), per direction the
    ``N`` gates and ``N - 1`` FFT long convolutions (filter transform included), the direction
    mix, and the implicit filter (``joint``: on ``T`` positions; ``product``: on each side,
    counted as ``T^(1/axes)``, plus the outer product)."""
    D, N, k, d = cfg.d_model, cfg.order, cfg.short_filter_order, cfg.axes
    dirs = len(cfg.flips)
    proj = 2 * batch * T * (D * (N + 1) * D + (N + 1) * D * k**d + D * D)
    recurrence = dirs * (batch * T * D * N + (N - 1) * long_conv_flops(batch, D, T, d))
    mix = 2 * batch * T * D * dirs if dirs > 1 else 0
    C = D * (N - 1)
    if cfg.filter_mode == "joint":
        filt = filter_flops(cfg, T, C, d * cfg.emb_dim)
    else:
        side = max(1, round(T ** (1 / d)))
        filt = d * filter_flops(cfg, side, C, cfg.emb_dim) + (d - 1) * T * C * 2
    return proj + recurrence + mix + filt


class HyenaNDMixer(Mixer):
    """The grid block; registered per layout below."""

    cfg: HyenaNDConfig

    def __init__(self, cfg: HyenaNDConfig) -> None:
        super().__init__(cfg)
        D, N, k = cfg.d_model, cfg.order, cfg.short_filter_order
        width = D * (N + 1)
        self.in_proj = nn.Linear(D, width)
        conv = nn.Conv2d if cfg.axes == 2 else nn.Conv3d
        self.short_filter = conv(width, width, k, padding=k // 2, groups=width)
        self.filter_fn = HyenaFilter(cfg, D * (N - 1), cfg.axes, cfg.filter_mode == "joint")
        if len(cfg.flips) > 1:
            self.linear_mix = nn.Linear(len(cfg.flips), 1)
        self.out_proj = nn.Linear(D, D)

    def _project(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Gates ``x_0 .. x_{N-1}`` and ``v``, each ``[B, *S, C]``."""
        sf = self.short_filter
        p = depthwise_conv(self.in_proj(x), sf.weight, sf.bias, impl="conv")
        *gates, v = p.split(self.cfg.d_model, dim=-1)
        return gates, v

    def _filters(self, sizes: tuple[int, ...]) -> tuple[list[Tensor], list[Tensor]]:
        """``N - 1`` filters ``[*S, C]`` and skips ``[C]``; positions per the call's sides."""
        h = self.filter_fn(sizes, sizes)  # [*S, (N-1) C]
        return split_filters(h, self.filter_fn.bias, self.cfg.order)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, *S, C]`` (channels-last) -> ``[B, *S, C]``."""
        gates, v = self._project(x)
        hs, skips = self._filters(tuple(x.shape[1:-1]))
        every = tuple(range(1, self.cfg.axes + 1))
        impl = self.cfg.long_impl

        def conv(z: Tensor, o: int) -> Tensor:
            if o == 0 and self.cfg.directional_mode == "seq":
                z = z.flip(every)
            y = long_conv(z, hs[o], causal=True, skip=skips[o], impl=impl)
            return y.flip(every) if o == 0 and self.cfg.directional_mode == "seq" else y

        outs = []
        for axes in self.cfg.flips:
            f: Callable[[Tensor], Tensor] = (lambda t, a=axes: t.flip(a)) if axes else _same
            outs.append(f(gating_recurrence(f(v), [f(g) for g in gates], conv)))
        y = outs[0] if len(outs) == 1 else self.linear_mix(torch.stack(outs, -1))[..., 0]
        return self.out_proj(y)

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """``H(u)``: ``[B, C, N, N]`` over the flattened grid; values ``v [B, C, N, 1]``."""
        gates, v = self._project(x)
        sizes = tuple(x.shape[1:-1])
        n = math.prod(sizes)
        hs, skips = self._filters(sizes)
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        mats = [long_conv_matrix(h, sizes, causal=True) + s[:, None, None] * eye
                for h, s in zip(hs, skips, strict=True)]  # fmt: skip
        if self.cfg.directional_mode == "seq":
            # flipping every axis reverses the row-major order
            mats[0] = mats[0].flip(-1, -2)
        flat = lambda t: t.reshape(t.shape[0], n, t.shape[-1])  # noqa: E731
        positions = torch.arange(n, device=x.device).reshape(sizes)
        weights: Tensor | None = None
        for i, axes in enumerate(self.cfg.flips):
            f: Callable[[Tensor], Tensor] = (lambda t, a=axes: t.flip(a)) if axes else _same
            h = recurrence_matrix([flat(f(g)) for g in gates], mats)  # [B, C, N, N]
            perm = positions.flip([a - 1 for a in axes]).reshape(-1) if axes else None
            if perm is not None:
                h = h[:, :, perm][:, :, :, perm]
            if len(self.cfg.flips) > 1:
                h = h * self.linear_mix.weight[0, i]
            weights = h if weights is None else weights + h
        assert weights is not None
        bias = self.linear_mix.bias if len(self.cfg.flips) > 1 else None
        values = rearrange(flat(v), "b n c -> b c n 1")

        def finish(o: Tensor) -> Tensor:
            y = o[..., 0].transpose(1, 2)  # [B, N, C]
            y = y if bias is None else y + bias
            return self.out_proj(y.reshape(x.shape))

        return AttentionMaps(weights, values, finish)


def _same(t: Tensor) -> Tensor:
    return t


COMMON = {
    "family": "conv",
    "paper": PAPER,
    "peer": "identity: FFT long convolution = direct convolution = materialised matrix (fp64); "
    "no pip peer",
    "flops": hyena_nd_flops,
    "attention_maps": True,
}


@register_mixer(
    "hyena_nd",
    config=HyenaND2dConfig,
    layout="grid2d",
    complexity="O(h·w·log(h·w)·C + h·w·C²) time; O(h·w·C) memory",
    **COMMON,
)
class HyenaND2d(HyenaNDMixer):
    cfg: HyenaND2dConfig


@register_mixer(
    "hyena_3d",
    config=HyenaND3dConfig,
    layout="grid3d",
    complexity="O(d·h·w·log(d·h·w)·C + d·h·w·C²) time; O(d·h·w·C) memory",
    **COMMON,
)
class HyenaND3d(HyenaNDMixer):
    cfg: HyenaND3dConfig
