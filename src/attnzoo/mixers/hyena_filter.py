"""Hyena's implicit long filters and gating recurrence, shared by the token block
(``mixers/seq/hyena.py``) and the grid blocks (``mixers/vision/hyena_nd.py``).

Poli et al., "Hyena Hierarchy: Towards Larger Convolutional Language Models", ICML 2023,
https://arxiv.org/abs/2302.10866 (official code: HazyResearch/safari, ``standalone_hyena.py``
and ``src/models/sequence/hyena.py``); Zimerman & Wolf, "Multi-Dimensional Hyena for Spatial
Inductive Bias", AISTATS 2024, https://arxiv.org/abs/2309.13600 (official code:
Itamarzimm/HyenaND, ``timm/models/layers/hyena2d.py``).

**Implicit filter** (``HyenaFilter`` / ``HyenaFilter2d`` of the official code). Per axis of
length ``n`` whose positions are normalised by ``L`` (the official ``l_max``)::

    t_k = k / (L - 1),   w_k = 2 pi k / L,   f = linspace(1e-4, B - 1, B),  B = (E - 1) // 2
    z_k = [t_k, cos(f w_k), -sin(f w_k)]                 # E = emb_dim features
    FFN = Linear(E', F) -> sin(a .) -> [Linear(F, F) -> sin(a .)] x inner -> Linear(F, C, no bias)
    window_c(t) = exp(-r_c t),  r = linspace(ln(1/target) / slow_pct, ln(1/target) / fast_pct, C)

With the default ``E = 3`` the one band has ``f = linspace(1e-4, 0, 1) = 1e-4``, so its cosine
and sine are nearly constant and the FFN sees essentially ``t`` (an official quirk, kept).
``a`` is ONE learned frequency vector ``[F]`` (init ``sin_freq``) shared by every sine of the
filter, as in the official code (one ``Sin`` module appended to every layer, and in Hyena N-D
shared by the per-axis FFNs too). Channel ``c``'s window falls to ``target`` at
``t = ln(1/target) / r_c``: ``slow_pct`` of ``L`` for the first channel, ``fast_pct`` for the
last. On a grid of several axes:

- ``joint`` (Hyena N-D's ``hyena2d_filter=True``, its README's training setting): one FFN on
  the concatenated per-axis features ``[z_i, z_j(, z_l)]`` (``E' = axes * E``), times the
  product of the per-axis windows ``exp(-r_c t_i) exp(-r_c t_j) ...``;
- ``product`` (the official default, ``hyena2d_filter=False``): one FFN per axis, each times its
  window, multiplied: ``h(i, j) = h_x(i) * h_y(j)`` per channel.

Filters are computed from positions at every call, for the call's sizes. The official code
stores ``z`` as a parameter trained at learning rate 1e-5 (or the model's, in its Pile config);
here the features are fixed functions of position, so any length works.

**Gating recurrence**, as both official codes run it: the input projection and short
convolution give ``order + 1`` tensors, split as ``x_0, ..., x_{N-1}, v`` (``N = order``);
then, with filters ``h_o`` and skips ``D_o`` for ``o = 0 .. N-2``::

    z = v;  for o, g in enumerate(x_{N-1}, ..., x_1):  z = h_o * (g z) + D_o (g z);   y = x_0 z

i.e. ``N`` gates and ``N - 1`` long convolutions: at order 2 the authors' form
``H(q, k) v = D_q T_h D_k v`` (HazyResearch's Hyena blog), whose ``q, k, v`` carry the short
filters. We follow the code wherever the paper's notation counts filters differently (its
short filters on the projections are filters too). Filter ``o`` and skip ``o``
are channels ``o*D .. (o+1)*D`` of the filter's output (``'(o d)'``, as in
``standalone_hyena.py`` and Hyena N-D; safari's multi-head ``hyena.py`` interleaves ``'(v o)'``,
which differs only in which decay rates go to which filter for ``order > 2``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from attnzoo.config import MixerConfig, limit


@dataclasses.dataclass(frozen=True)
class HyenaBaseConfig(MixerConfig):
    """Options every Hyena block shares (official defaults).

    Attributes:
        order: depth ``N`` of the recurrence: ``N + 1`` projections, ``N`` gates, ``N - 1``
            long convolutions (official default 2).
        filter_order: width ``F`` of the implicit filter's FFN (official 64).
        emb_dim: positional features per axis ``E`` (odd, >= 3: ``t`` and ``(E - 1) // 2``
            cosine/sine bands; official 3, safari's Pile config 33).
        filter_inner_layers: hidden ``F x F`` layers of the FFN (official ``num_inner_mlps=2``).
        sin_freq: initial frequency of the FFN's sine activations (official ``w=1``; Pile 14).
        fast_decay_pct, slow_decay_pct: where (as a fraction of the normalising length) the
            fastest and slowest channels' windows fall to ``decay_target`` (official 0.3, 1.5).
        decay_target: the window's value at those points (official 1e-2).
        modulate: multiply the filters by the decay window (official ``modulate=True``).
        short_filter_order: kernel of the depthwise short convolution on the projections
            (official 3).
        impl: the long convolutions (:func:`attnzoo.ops.longconv.long_conv`): ``auto``
            (``fft``) | ``reference`` (direct convolution) | ``fft``.
    """

    order: int = limit(2, ge=2)
    filter_order: int = limit(64, ge=1)
    emb_dim: int = limit(3, ge=3, odd=True)
    filter_inner_layers: int = limit(2, ge=0)
    sin_freq: float = limit(1.0, finite=True)
    fast_decay_pct: float = limit(0.3, gt=0, finite=True)
    slow_decay_pct: float = limit(1.5, gt=0, finite=True)
    decay_target: float = limit(1e-2, gt=0, le=1)
    modulate: bool = True
    short_filter_order: int = limit(3, ge=1)
    impl: Literal["auto", "reference", "fft"] = "auto"

    def validate(self) -> None:
        if self.fast_decay_pct > self.slow_decay_pct:
            raise ValueError(
                f"{self._owner()}: fast_decay_pct={self.fast_decay_pct} must be <= "
                f"slow_decay_pct={self.slow_decay_pct} (the fastest channel decays first)"
            )

    @property
    def long_impl(self) -> str:
        return "fft" if self.impl == "auto" else self.impl


def filter_flops(cfg: HyenaBaseConfig, positions: int, channels: int, in_features: int) -> int:
    """The implicit filter's FFN on ``positions`` points (matmuls, sines) and its window."""
    F_, inner = cfg.filter_order, cfg.filter_inner_layers
    ffn = 2 * (in_features * F_ + inner * F_ * F_ + F_ * channels) + (inner + 1) * 2 * F_
    return positions * (ffn + 2 * channels)


def decay_rates(
    channels: int,
    fast_pct: float,
    slow_pct: float,
    target: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> Tensor:
    """``r_c``: ``linspace(ln(1/target)/slow_pct, ln(1/target)/fast_pct, C)`` (the official
    ``|deltas|``), so ``exp(-r_c t)`` reaches ``target`` at ``t = slow_pct`` for the first channel
    and at ``t = fast_pct`` for the last. Shapes: -> ``[C]``."""
    top = math.log(1.0 / target)
    return torch.linspace(top / slow_pct, top / fast_pct, channels, dtype=dtype, device=device)


def positional_features(
    n: int, scale: int, emb_dim: int, *, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``z [n, E]`` and ``t [n]`` of positions ``0 .. n-1`` normalised by ``scale`` (the
    official ``l_max``; positions past ``scale`` continue the same formulas, ``t > 1``).
    ``scale = 1`` (a one-position axis) gives ``t = 0``."""
    k = torch.arange(n, device=device, dtype=dtype)
    t = k / (scale - 1 if scale > 1 else 1)
    bands = (emb_dim - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands, device=device, dtype=dtype)
    angle = f[None, :] * (2 * math.pi * k / scale)[:, None]  # [n, bands]
    return torch.cat([t[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1), t


class ImplicitFFN(nn.Module):
    """``Linear -> sin(a .) -> [Linear -> sin(a .)] x inner -> Linear (no bias)``; the sine
    frequencies ``a`` are passed in (shared). Shapes: ``[..., E'] -> [..., C]``."""

    def __init__(self, in_features: int, width: int, channels: int, inner: int) -> None:
        super().__init__()
        self.hidden = nn.ModuleList(
            [nn.Linear(in_features, width)] + [nn.Linear(width, width) for _ in range(inner)]
        )
        self.out = nn.Linear(width, channels, bias=False)

    def forward(self, z: Tensor, freq: Tensor) -> Tensor:
        for layer in self.hidden:
            z = torch.sin(freq * layer(z))
        return self.out(z)


class HyenaFilter(nn.Module):
    """Implicit filters on a grid of ``axes`` axes, plus the skips ``D`` (the official
    ``filter_fn.bias``, init ``randn``). ``joint``: one FFN on concatenated per-axis features;
    otherwise one FFN per axis and their product (identical for one axis)."""

    def __init__(self, cfg: HyenaBaseConfig, channels: int, axes: int, joint: bool) -> None:
        super().__init__()
        self.cfg, self.axes, self.joint = cfg, axes, joint or axes == 1
        width = cfg.filter_order
        self.freq = nn.Parameter(torch.full((width,), float(cfg.sin_freq)))
        n_ffn, in_features = (1, axes * cfg.emb_dim) if self.joint else (axes, cfg.emb_dim)
        self.ffns = nn.ModuleList(
            ImplicitFFN(in_features, width, channels, cfg.filter_inner_layers) for _ in range(n_ffn)
        )
        self.bias = nn.Parameter(torch.randn(channels))
        self.channels = channels

    def window(self, t: Tensor) -> Tensor:
        """``exp(-r_c t)`` (ones if ``modulate`` is off). Shapes: ``[...] -> [..., C]``."""
        cfg = self.cfg
        rates = decay_rates(self.channels, cfg.fast_decay_pct, cfg.slow_decay_pct,
                            cfg.decay_target, dtype=t.dtype, device=t.device)  # fmt: skip
        w = torch.exp(-t[..., None] * rates)
        return w if cfg.modulate else torch.ones_like(w)

    def raw(self, sizes: Sequence[int], scales: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The FFN output before the window and the window, each ``[*sizes, C]``."""
        dtype = self.freq.dtype
        # positions in at least float32: bfloat16 cannot even count to 1024
        pos = torch.promote_types(dtype, torch.float32)
        dev = self.freq.device
        feats = [positional_features(n, s, self.cfg.emb_dim, device=dev, dtype=pos)
                 for n, s in zip(sizes, scales, strict=True)]  # fmt: skip
        d = len(sizes)
        if self.joint:
            parts = [_along(z, a, d) for a, (z, _) in enumerate(feats)]  # [1.., n_a, 1.., E]
            z = torch.cat(torch.broadcast_tensors(*parts), dim=-1)  # [*S, d*E]
            raw = self.ffns[0](z.to(dtype), self.freq)  # [*S, C]
            t = sum(_along(t[:, None], a, d)[..., 0] for a, (_, t) in enumerate(feats))
            return raw, self.window(t).to(dtype)  # exp(-r sum_a t_a) = prod_a exp(-r t_a)
        raws, windows = [], []
        for a, (ffn, (z, t)) in enumerate(zip(self.ffns, feats, strict=True)):
            raws.append(_along(ffn(z.to(dtype), self.freq), a, d))  # [1.., n_a, 1.., C]
            windows.append(_along(self.window(t).to(dtype), a, d))
        return _product(raws), _product(windows)

    def forward(self, sizes: Sequence[int], scales: Sequence[int]) -> Tensor:
        """The filters on a grid of ``sizes``, axis ``a``'s positions normalised by
        ``scales[a]``. Shapes: -> ``[*sizes, C]``."""
        raw, window = self.raw(sizes, scales)
        return raw * window


def _along(x: Tensor, axis: int, axes: int) -> Tensor:
    """``[n, E] -> [1, .., n, .., 1, E]`` with ``n`` at ``axis`` of ``axes`` grid axes."""
    shape = [1] * axes + [x.shape[-1]]
    shape[axis] = x.shape[0]
    return x.reshape(shape)


def _product(parts: list[Tensor]) -> Tensor:
    out = parts[0]
    for p in parts[1:]:
        out = out * p
    return out


def split_filters(h: Tensor, skip: Tensor, order: int) -> tuple[list[Tensor], list[Tensor]]:
    """``[*S, (o d)]`` filters and ``[(o d)]`` skips -> ``order - 1`` of each (``[*S, D]``,
    ``[D]``), filter ``o`` being channels ``o*D .. (o+1)*D``."""
    return list(h.chunk(order - 1, dim=-1)), list(skip.chunk(order - 1, dim=-1))


def gating_recurrence(
    v: Tensor, gates: Sequence[Tensor], conv: Callable[[Tensor, int], Tensor]
) -> Tensor:
    """``z = v; z = conv(g * z, o)`` for ``o, g in enumerate(gates[:0:-1])``; ``gates[0] * z``.

    Shapes: v and every gate ``[B, *S, D]``; ``conv(z, o)`` keeps the shape -> ``[B, *S, D]``
    """
    z = v
    for o, g in enumerate(reversed(gates[1:])):
        z = conv(g * z, o)
    return gates[0] * z


def recurrence_matrix(gates: Sequence[Tensor], mats: Sequence[Tensor]) -> Tensor:
    """The recurrence as one data-controlled matrix per channel (the Hyena paper's
    ``y = H(u) v``): ``H = diag(x_0) M_{N-2} diag(x_1) ... M_0 diag(x_{N-1})``.

    Shapes: gates ``[B, N, D]`` each (flattened positions), mats ``[D, N, N]`` each (the
    convolutions with their skips) -> ``[B, D, N, N]``
    """
    w: Tensor | None = None
    for o, g in enumerate(reversed(gates[1:])):
        gd = g.transpose(1, 2)  # [B, D, N]
        w = torch.diag_embed(gd) if w is None else gd[..., None] * w  # [B, D, N, N]
        w = torch.einsum("cpq,bcqr->bcpr", mats[o], w)
    assert w is not None  # order >= 2
    return gates[0].transpose(1, 2)[..., None] * w
