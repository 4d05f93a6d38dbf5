"""MobileViG sparse vision graph attention (V-SVGA): max-relative aggregation over every K-th
pixel of the same row and column, inside MobileViG's ``Grapher``.

Munir, Avery, Marculescu, "MobileViG: Graph-Based Sparse Attention for Mobile Vision
Applications", CVPRW 2023. https://arxiv.org/abs/2307.00395
Code: https://github.com/SLDGroup/MobileViG (``models/mobilevig.py``: ``MRConv4d`` = SVGA,
``Grapher``). timm has no MobileViG; the fast paths are checked against ``impl="reference"``, an
explicit loop over offsets (see "Paths" below).

On channels-last ``x [B, h, w, C]``, with hop ``K`` (official: 2):

1. ``u = BN(x W_1 + b_1)`` (``Grapher.fc1``: a biased 1x1 convolution and ``BatchNorm2d(C)``).
2. SVGA (``MRConv4d``): the graph neighbours of pixel ``(r, c)`` are the pixels
   ``((r - i) mod h, c)`` for ``i = K, 2K, ... < h`` and ``(r, (c - j) mod w)`` for
   ``j = K, 2K, ... < w`` (every K-th pixel of its row and column, wrapping around).
   ``u_j = max(0, max_n (u - u_n))`` elementwise per channel: the official code starts from
   ``x - x = 0`` and takes ``max(x_j, x - roll(x, i))``, so the aggregate is
   ``relu(u - min_n u_n)`` (zero when a grid has no neighbours, ``h <= K`` and ``w <= K``).
   Then ``g = GELU(BN(concat[u, u_j] W_g + b_g))``: a 1x1 convolution on the ``2C`` channels
   ``[u, u_j]`` (that order, as ``torch.cat([x, x_j], 1)``), ``2C -> 2C`` in the ``Grapher``.
   The official convolution is dense (``groups=1``); ``groups`` > 1 is offered as the grouped
   form of Vision GNN's ``MRConv2d`` (Han et al. 2022), still with MobileViG's channel order.
3. ``y = BN(g W_2 + b_2)`` (``Grapher.fc2``, ``2C -> C``).

The mixer returns ``y``, so that a residual wrapper ``x + y`` is the official ``Grapher.forward``
(no drop path). ``grapher=False`` drops ``fc1``/``fc2`` and maps the ``2C`` concatenation straight
back to ``C`` channels (``BN(C)``, GELU), i.e. ``MRConv4d(C, C)``; the official code only uses
``MRConv4d(C, 2C)`` inside the ``Grapher`` (its ``BatchNorm2d(2C)`` fixes the output width). The
``FFN`` that follows each ``Grapher`` in MobileViG belongs to the block, not the mixer.

Paths (``impl``):

- ``reference`` (``SVGAMixer._reference``): the block written out. For each row offset
  ``i = K, 2K, ... < h`` (then each column offset ``< w``) the neighbour map is an index gather
  ``u[:, [(r - i) mod h for r]]`` and ``u_j = max(u_j, u - neighbour)`` from ``u - u = 0``, the
  official ``MRConv4d`` loop; the 1x1 convolutions are matmuls over channels (one per group),
  every BatchNorm is :func:`~attnzoo.mixers.vision.batchnorm.bn_reference`. In train mode it
  normalises with batch statistics but does not update the running statistics (it is the spec
  the fast paths are checked against, not a training path).
- ``roll``: the official loop over ``torch.roll`` copies, ``(h-1)//K + (w-1)//K`` full-size
  maxima per call: ``O(h·w·C·(h+w)/K)``, quadratic in the side length; BatchNorms folded into
  the 1x1 convolutions on the fly in eval mode (:mod:`.batchnorm`).
- ``scan``: since ``max_n (u - u_n) = u - min_n u_n``, the neighbour minimum per axis in
  ``O(h·w·C)``: along an axis of length ``n`` the neighbours of row ``p`` are every row of its
  residue class mod ``K`` below ``p`` plus, wrapped around, a tail of the class of
  ``(p + n) mod K``, both read from running minima along the classes (see
  :func:`neighbour_min`); the rest as ``roll``.
- ``auto``: ``roll`` when it needs at most 8 maxima (e.g. a ``7 x 7`` grid with ``K = 2``,
  MobileViG's resolution, where it is faster), ``scan`` otherwise.

All give the same values; gradients agree except at exact ties (each routes a tie's gradient
differently).

BatchNorm: train mode normalises with batch statistics (over ``B, h, w``); eval mode uses the
running statistics (the fast paths fold them into the 1x1 convolutions on the fly,
:mod:`.batchnorm`); compare in eval mode. Works on any grid ``h x w``.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import MixerConfig, limit
from attnzoo.mixers.base import Mixer
from attnzoo.mixers.vision.batchnorm import bn_reference, channels_last_bn, fold_bn, linear_bn
from attnzoo.ops.masks import Mask
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="MobileViG: Graph-Based Sparse Attention for Mobile Vision Applications",
    year=2023,
    url="https://arxiv.org/abs/2307.00395",
    code="https://github.com/SLDGroup/MobileViG",
)

ROLL_MAX_STEPS = 8  # impl="auto" loops over the rolls when it needs at most this many maxima


@dataclasses.dataclass(frozen=True)
class SVGAConfig(MixerConfig):
    """MobileViG Grapher with SVGA. ``d_model`` is the channel count C.

    Attributes:
        hop: K, the step between graph neighbours along a row or column (official: 2).
        grapher: wrap SVGA in the Grapher's ``fc1`` (C -> C) and ``fc2`` (2C -> C) with the
            graph convolution ``2C -> 2C`` (official); ``False``: SVGA alone, ``2C -> C``.
        groups: groups of the graph 1x1 convolution (official MobileViG: 1); must divide its
            input and output widths.
        bn_eps: epsilon of every BatchNorm.
        impl: ``auto`` (``roll`` on small grids, else ``scan``) | ``reference`` (the block
            written out, an explicit loop over offsets) | ``roll`` (the official loop over
            rolled copies) | ``scan`` (neighbour minimum per axis from running minima, linear in
            ``h*w``).
    """

    hop: int = limit(2, ge=1)
    grapher: bool = True
    groups: int = limit(1, ge=1)
    bn_eps: float = limit(1e-5, gt=0)
    impl: Literal["auto", "reference", "roll", "scan"] = "auto"

    def validate(self) -> None:
        if (2 * self.d_model) % self.groups or self.out_width % self.groups:
            raise ValueError(
                f"{self._owner()}: groups={self.groups} must divide the graph convolution's input "
                f"width 2*d_model={2 * self.d_model} and output width {self.out_width}"
            )

    @property
    def out_width(self) -> int:
        """Output channels of the graph convolution: 2C inside the Grapher, C alone."""
        return 2 * self.d_model if self.grapher else self.d_model


def svga_flops(cfg: SVGAConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T`` is the token count ``h*w``: the 1x1 convolutions (``fc1``, the grouped graph
    convolution, ``fc2``). Comparisons of the max-relative aggregation, BatchNorm and GELU are
    elementwise and not counted."""
    C, G = cfg.d_model, cfg.groups
    graph = 2 * batch * T * (2 * C) * cfg.out_width // G
    fc = 2 * batch * T * (C * C + 2 * C * C) if cfg.grapher else 0
    return graph + fc


# ---- the max-relative aggregation -------------------------------------------------------------
def neighbour_steps(n: int, hop: int) -> int:
    """Neighbours of a pixel along an axis of length ``n``: ``len(range(hop, n, hop))``."""
    return len(range(hop, n, hop))


def max_relative_roll(x: Tensor, hop: int) -> Tensor:
    """The official loop: ``max(0, max_i x - roll(x, i))`` over rolls along h then w.

    Shapes: x ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
    x_j = torch.zeros_like(x)
    for dim in (1, 2):
        for i in range(hop, x.shape[dim], hop):
            x_j = torch.maximum(x_j, x - torch.roll(x, i, dim))
    return x_j


def _cummin(y: Tensor, dim: int, reverse: bool) -> Tensor:
    """Inclusive running minimum along ``dim`` (a short axis: one slice per step)."""
    n = y.shape[dim]
    out: list[Tensor] = []
    cur: Tensor | None = None
    for j in range(n - 1, -1, -1) if reverse else range(n):
        s = y.select(dim, j)
        cur = s if cur is None else torch.minimum(cur, s)
        out.append(cur)
    return torch.stack(out[::-1] if reverse else out, dim)


@lru_cache(maxsize=256)
def _neighbour_index(n: int, hop: int) -> tuple[int, ...]:
    """For each row ``p`` two indices into ``concat[prefix_min, suffix_min]`` (rows padded to
    ``R = ceil(n/hop)*hop``): the exclusive prefix of ``p``'s class, ``p - hop``, and the suffix
    of the wrapped rows from ``q = p + n - M*hop`` (offset by ``R``); a missing part repeats the
    other. All ``2n`` first indices, then all second ones."""
    M, R = neighbour_steps(n, hop), -(-n // hop) * hop
    first, second = [], []
    for p in range(n):
        q = p + n - M * hop
        a = p - hop if p >= hop else R + q  # p >= hop or q < n holds because M >= 1
        b = R + q if q < n else p - hop
        first.append(a)
        second.append(b)
    return tuple(first + second)


def neighbour_min(x: Tensor, dim: int, hop: int) -> Tensor | None:
    """Per pixel and channel, the minimum over its neighbours along ``dim`` (``None`` if it has
    none), in ``O(numel)``. Shapes: x ``[B, h, w, C]`` -> ``[B, h, w, C]``.

    With ``M = (n-1)//hop`` steps, the neighbours of row ``p`` (class ``p mod hop``) are every
    row of its class below ``p`` (``p - m*hop >= 0``) plus, wrapped around, the rows of class
    ``(p + n) mod hop`` from ``q = p + n - M*hop`` to the end: an exclusive prefix of one class
    and a suffix of another, read from running minima along the classes."""
    n = x.shape[dim]
    if neighbour_steps(n, hop) == 0:
        return None
    L = -(-n // hop)  # rows per class after padding to L*hop with +max (never a minimum)
    if L * hop > n:
        pad = list(x.shape)
        pad[dim] = L * hop - n
        x = torch.cat([x, x.new_full(pad, torch.finfo(x.dtype).max)], dim)
    y = x.unflatten(dim, (L, hop))  # y[.., t, r, ..] = row t*hop + r
    ps = torch.cat([_cummin(y, dim, False), _cummin(y, dim, True)], dim).flatten(dim, dim + 1)
    idx = torch.tensor(_neighbour_index(n, hop), device=x.device)
    both = ps.index_select(dim, idx).unflatten(dim, (2, n))
    return torch.minimum(both.select(dim, 0), both.select(dim, 1))


def max_relative_scan(x: Tensor, hop: int) -> Tensor:
    """``relu(x - min over row and column neighbours)``; equals :func:`max_relative_roll`.

    Shapes: x ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
    mins = [m for m in (neighbour_min(x, 1, hop), neighbour_min(x, 2, hop)) if m is not None]
    if not mins:
        return torch.zeros_like(x)
    m = mins[0] if len(mins) == 1 else torch.minimum(mins[0], mins[1])
    return F.relu(x - m)


@register_mixer(
    "svga",
    config=SVGAConfig,
    family="graph",
    layout="grid2d",
    complexity="O(h·w·C²) projections + O(h·w·C) aggregation (official loop: O(h·w·C·(h+w)/K))",
    paper=PAPER,
    peer="impl='reference': explicit loop over row/column offsets, written-out 1x1 convs and "
    "BatchNorm (tests)",
    export=ExportSupport(
        dynamic="impl='auto' picks roll or scan from h, w, and both loop in Python over the grid "
        "(rolls by hop, 2·hop, ... < h; running minima per row), which fixes h and w"
    ),
    flops=svga_flops,
)
class SVGAMixer(Mixer):
    cfg: SVGAConfig

    def __init__(self, cfg: SVGAConfig) -> None:
        super().__init__(cfg)
        C, out, G = cfg.d_model, cfg.out_width, cfg.groups
        if cfg.grapher:
            self.fc1 = nn.Linear(C, C)
            self.bn1 = nn.BatchNorm1d(C, eps=cfg.bn_eps)
            self.fc2 = nn.Linear(2 * C, C)
            self.bn2 = nn.BatchNorm1d(C, eps=cfg.bn_eps)
        # the graph 1x1 convolution, weight laid out as Conv2d's [out, in/groups] (1x1 dropped)
        self.graph_weight = nn.Parameter(torch.empty(out, 2 * C // G))
        self.graph_bias = nn.Parameter(torch.zeros(out))
        self.graph_bn = nn.BatchNorm1d(out, eps=cfg.bn_eps)
        # MobileViG.model_init: Kaiming-normal conv weights (fan_in), zero biases
        nn.init.kaiming_normal_(self.graph_weight)
        if cfg.grapher:
            for lin in (self.fc1, self.fc2):
                nn.init.kaiming_normal_(lin.weight)
                nn.init.zeros_(lin.bias)

    def aggregate(self, u: Tensor) -> Tensor:
        """The max-relative aggregate ``u_j``. Shapes: u ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
        hop, impl = self.cfg.hop, self.cfg.impl
        if impl == "reference":
            return max_relative_reference(u, hop)
        if impl == "auto":
            steps = neighbour_steps(u.shape[1], hop) + neighbour_steps(u.shape[2], hop)
            impl = "roll" if steps <= ROLL_MAX_STEPS else "scan"
        return max_relative_roll(u, hop) if impl == "roll" else max_relative_scan(u, hop)

    def graph_conv(self, u: Tensor) -> Tensor:
        """SVGA: ``GELU(BN(concat[u, u_j] W_g + b_g))``. Shapes: ``[B, h, w, C]`` ->
        ``[B, h, w, out_width]``."""
        z = torch.cat([u, self.aggregate(u)], dim=-1)  # [B, h, w, 2C]
        G, bn = self.cfg.groups, self.graph_bn
        if G == 1:
            return F.gelu(linear_bn(z, self.graph_weight, self.graph_bias, bn))
        w, b = self.graph_weight, self.graph_bias
        if not bn.training:  # eval mode folds the BatchNorm into the convolution
            w, b = fold_bn(w, b, bn)
        w = rearrange(w, "(g o) i -> g o i", g=G)
        z = torch.einsum("...gi,goi->...go", z.unflatten(-1, (G, -1)), w).flatten(-2) + b
        return F.gelu(channels_last_bn(bn, z) if bn.training else z)  # [B, h, w, out_width]

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        if self.cfg.impl == "reference":
            return self._reference(x)
        if not self.cfg.grapher:
            return self.graph_conv(x)
        u = linear_bn(x, self.fc1.weight, self.fc1.bias, self.bn1)  # [B, h, w, C]
        return linear_bn(self.graph_conv(u), self.fc2.weight, self.fc2.bias, self.bn2)

    # ---- impl="reference" -----------------------------------------------------------------
    def _reference(self, x: Tensor) -> Tensor:
        """``fc2(GELU(BN(concat[u, u_j] W_g + b_g)))`` with ``u = fc1(x)``, written out.

        Shapes: x ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
        cfg = self.cfg
        u = x
        if cfg.grapher:
            u = bn_reference(self.bn1, u @ self.fc1.weight.T + self.fc1.bias)  # [B, h, w, C]
        z = torch.cat([u, max_relative_reference(u, cfg.hop)], dim=-1)  # [B, h, w, 2C]
        # the (grouped) graph 1x1 convolution: group g maps its input slice to its output slice
        ins, outs = z.chunk(cfg.groups, dim=-1), self.graph_weight.chunk(cfg.groups, dim=0)
        g = torch.cat([a @ wg.T for a, wg in zip(ins, outs, strict=True)], -1) + self.graph_bias
        g = F.gelu(bn_reference(self.graph_bn, g))  # [B, h, w, out_width]
        if not cfg.grapher:
            return g
        return bn_reference(self.bn2, g @ self.fc2.weight.T + self.fc2.bias)  # [B, h, w, C]


def max_relative_reference(x: Tensor, hop: int) -> Tensor:
    """``MRConv4d``'s aggregate by an explicit loop over offsets: from ``x - x = 0``, the
    maximum with ``x - x[(r - i) mod h]`` for ``i = hop, 2*hop, ... < h``, then with
    ``x - x[:, (c - j) mod w]`` for ``j < w`` (the neighbours as index gathers).

    Shapes: x ``[B, h, w, C]`` -> ``[B, h, w, C]``."""
    h, w = x.shape[1], x.shape[2]
    x_j = x - x
    for i in range(hop, h, hop):
        rows = [(r - i) % h for r in range(h)]
        x_j = torch.maximum(x_j, x - x[:, rows])
    for j in range(hop, w, hop):
        cols = [(c - j) % w for c in range(w)]
        x_j = torch.maximum(x_j, x - x[:, :, cols])
    return x_j
