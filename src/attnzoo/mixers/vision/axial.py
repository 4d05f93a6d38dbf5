"""Axial attention (S-AXIAL): softmax attention along one grid axis at a time.

Ho, Kalchbrenner, Weissenborn, Salimans, "Axial Attention in Multidimensional Transformers",
2019. https://arxiv.org/abs/1912.12180  Code: https://github.com/google-research/google-research
(``axial/nn.py``: ``attn_nd``, ``shift_down``, ``shift_right``; ``axial/transformers.py``:
``AttnBlock``, ``Transformer2d._upper_context`` / ``_row_autoregressive``). Peer: lucidrains'
``axial_attention.AxialAttention`` (PyPI ``axial-attention``), compared with copied weights.

One mechanism, three layouts, one file. Each *pass* along grid axis ``a`` projects its input,
``q = x W_q``, ``[k | v] = x W_kv`` (no bias by default, as the peer), splits ``H`` heads of
width ``K = C/H``, attends along ``a`` only (:func:`attnzoo.ops.axial.axial_attention`, scale
``K**-0.5``) and projects back, ``o W_out + b_out``. Every pass has its own projections, as in
the official code (one ``AttnBlock`` per axis, each with its own ``q``, ``k``, ``v``,
``proj_out``) and the peer (one ``SelfAttention`` per axis).

- ``axial`` (grid2d ``[B, h, w, C]``, noncausal-self) and ``axial3d`` (grid3d
  ``[B, d, h, w, C]``): one pass per grid axis, in axis order (``h`` then ``w``; ``d, h, w``),
  as the peer orders them. ``combine="sum"``: every pass reads ``x`` and the outputs are summed
  (the peer's ``sum_axial_out=True``, so each pass's output bias is added once per axis);
  ``combine="sequential"``: each pass reads the previous pass's output, ``y = P_w(P_h(x))``
  (``sum_axial_out=False``; no residual between passes, as in the peer: the official model
  wraps each pass in its own residual block with LayerNorm and MLP, which belong to a
  backbone). Sequential passes give every position the whole grid in one block; a sum sees
  only its own row and column (its "cross").
- ``axial_ar`` (tokens ``[B, T, D]``, causal-self): the paper's autoregressive decoder (outer
  and inner decoder) for a 1-D sequence folded row-major into rows of ``W`` tokens
  (``row_width``; ``None`` means ``ceil(sqrt(T))``, a square grid as the paper's images). The
  last row is zero-padded to ``R = ceil(T/W)`` rows and the output cropped to ``T``. On the
  grid ``g``::

      u = ShiftDown(P_col^causal(P_row(g)))      # outer decoder: unmasked row, masked column
      y = P_row^causal(g + u)                    # inner decoder: masked row

  ``ShiftDown`` moves every row one down and fills the first with zeros (official
  ``shift_down``). The outer output at row ``i`` has seen every token of rows ``<= i``, so after
  the shift row ``i`` receives all of rows ``< i``; the inner masked row pass adds the tokens of
  row ``i`` at columns ``<= j``. So output ``t`` depends on *every* input ``s <= t`` and on no
  ``s > t``: the whole causal prefix in one block.

  **Shifts and the repo's convention.** The paper predicts ``x_t`` from ``x_{<t}``, so its inner
  decoder reads ``ShiftRight(h) + ShiftDown(u)`` (``_row_autoregressive``). attnzoo's causal-self
  mixers let token ``t`` see itself (the model shifts the targets), so the shift *right* is
  dropped (``g + u``); the shift *down* stays, because the unmasked row pass mixes whole rows
  and only rows strictly above may reach row ``i``. (The official code adds position
  embeddings and a conditioning term here; those belong to the backbone.) One outer row pass
  and one outer column pass stand for the paper's stack of ``L_upper`` alternating layers, and
  one inner pass for its ``L_row`` layers.

  **Padding never leaks**: the padded slots are the last row's columns ``>= T mod W``. Real
  tokens of that row reach them only through the unmasked outer row pass, whose last-row output
  the shift drops; the masked column and inner row passes never look down or right. So the
  output at ``t`` equals that of the block on ``x[:, :T']`` for any ``T' > t`` with a fixed
  ``row_width`` (with ``row_width=None`` the fold, hence the output, depends on ``T``).

Paths (``impl``), both through the op: ``reference`` materialises the softmax weights of every
line; ``sdpa`` (``auto``) folds the other axes into the batch and calls torch's fused SDPA.

Attention maps are not declared: the passes have their own values and output projections, so
a sum is not one ``weights @ values`` (it would need the two value sets stacked as separate
keys), and a sequence of passes is a product of maps with projections in between.

Streaming (``state="none"``) is left out. The grid blocks have no order. ``axial_ar`` could
stream at a fixed ``row_width`` (the paper's semi-parallel sampler: when a row completes, run
the outer passes on it with cached column keys/values to get the next row's context, and keep
the inner row pass's keys/values within the row), but its default ``row_width=None`` folds by
the total length, which a stream does not know, and the state would be three caches and a
row buffer: left out to keep the block small.

Left out: the official model's LayerNorms, MLPs, residuals, position embeddings, the channel
(3-D) decoder ``Transformer3d`` and its unmasked "exterior" layers, dropout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import Mixer
from attnzoo.mixers.common import HeadsConfig, load_matching_state
from attnzoo.ops.axial import axial_attention
from attnzoo.ops.common import attention_flops
from attnzoo.ops.masks import Mask
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="Axial Attention in Multidimensional Transformers",
    year=2019,
    url="https://arxiv.org/abs/1912.12180",
    code="https://github.com/google-research/google-research/tree/master/axial",
)
PEER = "axial_attention.AxialAttention"


@dataclasses.dataclass(frozen=True)
class AxialConfig(HeadsConfig):
    """Axial attention on a grid. ``d_model`` is the channel count C.

    Attributes:
        combine: ``sum`` (one pass per axis on the input, outputs summed; the peer's
            ``sum_axial_out=True``) | ``sequential`` (passes one after another in axis order;
            ``sum_axial_out=False``).
        qkv_bias: bias on the q and k/v projections of every pass (the peer has none; the
            official code has one). The output projections always have a bias.
        impl: ``auto`` (``sdpa``) | ``reference`` (materialised per-line weights) | ``sdpa``.
    """

    combine: Literal["sum", "sequential"] = "sum"
    qkv_bias: bool = False
    impl: Literal["auto", "reference", "sdpa"] = "auto"


@dataclasses.dataclass(frozen=True)
class Axial3dConfig(AxialConfig):
    """Axial attention on a volume ``[B, d, h, w, C]``: the fields of :class:`AxialConfig`."""


@dataclasses.dataclass(frozen=True)
class AxialARConfig(HeadsConfig):
    """The Axial Transformer's autoregressive decoder on a sequence folded into rows.

    Attributes:
        row_width: tokens per row ``W``; ``None`` means ``ceil(sqrt(T))`` (a square grid, cost
            ``O(T^1.5)``). A fixed width makes the output at ``t`` independent of ``T``.
        qkv_bias: bias on the q and k/v projections of the three passes.
        impl: ``auto`` (``sdpa``) | ``reference`` (materialised per-line weights) | ``sdpa``.
    """

    row_width: int | None = limit(None, ge=1)
    qkv_bias: bool = False
    impl: Literal["auto", "reference", "sdpa"] = "auto"

    def width(self, T: int) -> int:
        """The row width for ``T`` tokens."""
        return self.row_width if self.row_width is not None else math.isqrt(max(T, 1) - 1) + 1


class AxialPass(nn.Module):
    """Projections and attention along one grid axis (the peer's ``SelfAttention``)."""

    def __init__(self, cfg: HeadsConfig, axis: int, causal: bool, qkv_bias: bool) -> None:
        super().__init__()
        C, H, K = cfg.d_model, cfg.heads, cfg.dim_head
        self.axis, self.causal, self.heads = axis, causal, H
        self.to_q = nn.Linear(C, H * K, bias=qkv_bias)
        self.to_kv = nn.Linear(C, 2 * H * K, bias=qkv_bias)  # [k | v]
        self.to_out = nn.Linear(H * K, C)

    def forward(self, x: Tensor, impl: str) -> Tensor:
        """Shapes: x ``[B, *grid, C]`` -> ``[B, *grid, C]``."""
        H = self.heads
        q = self.to_q(x).unflatten(-1, (H, -1))  # [B, *grid, H, K]
        k, v = self.to_kv(x).unflatten(-1, (2, H, -1)).unbind(-3)  # [B, *grid, H, K] each
        o = axial_attention(q, k, v, axis=self.axis, causal=self.causal, impl=impl)
        return self.to_out(o.flatten(-2))


def _pass_flops(cfg: HeadsConfig, batch: int, tokens: int, pairs: int) -> int:
    """One pass over ``tokens`` positions: q, k, v and output projections plus attention over
    ``pairs`` (query, key) pairs."""
    H, K, C = cfg.heads, cfg.dim_head, cfg.d_model
    return 2 * batch * tokens * C * 4 * H * K + attention_flops(batch, H, K, K, pairs)


def axial_flops(cfg: AxialConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T`` grid positions, counted on the most even grid (side ``round(T^(1/n))`` for ``n``
    axes, the grid the bench measures): one pass per axis, each position attending to the
    ``side`` positions of its line. Softmax exponentials are not counted."""
    n = 3 if isinstance(cfg, Axial3dConfig) else 2
    side = round(T ** (1.0 / n)) if T > 0 else 0
    return n * _pass_flops(cfg, batch, T, T * side)


def axial_ar_flops(cfg: AxialARConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """On the padded ``R x W`` grid (what is computed): the unmasked row pass (``W`` keys per
    position), the causal column pass (``R(R+1)/2`` pairs per column) and the causal row pass
    (``W(W+1)/2`` pairs per row), each with its four projections."""
    if T == 0:
        return 0
    W = cfg.width(T)
    R = -(-T // W)
    P = R * W
    pairs = (P * W, W * R * (R + 1) // 2, R * W * (W + 1) // 2)
    return sum(_pass_flops(cfg, batch, P, p) for p in pairs)


@register_mixer(
    "axial",
    config=AxialConfig,
    family="sparse",
    layout="grid2d",
    complexity="O(h·w·(h + w)·C) time (N^1.5 on a square grid); O(h·w·C) memory with SDPA "
    "(the reference holds O(H·h·w·(h + w)) scores)",
    paper=PAPER,
    peer=f"{PEER}(num_dimensions=2, sum_axial_out=True/False), weights copied, fwd+bwd",
    flops=axial_flops,
)
class AxialMixer(Mixer):
    cfg: AxialConfig

    def __init__(self, cfg: AxialConfig) -> None:
        super().__init__(cfg)
        n = len(self.spec.input_layout.axes)
        self.passes = nn.ModuleList(AxialPass(cfg, a, False, cfg.qkv_bias) for a in range(n))

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, *grid, C]`` (channels-last) -> ``[B, *grid, C]``."""
        impl = self.cfg.impl
        if self.cfg.combine == "sum":
            return sum(p(x, impl) for p in self.passes)  # type: ignore[return-value]
        for p in self.passes:
            x = p(x, impl)
        return x


@register_mixer(
    "axial3d",
    config=Axial3dConfig,
    family="sparse",
    layout="grid3d",
    complexity="O(d·h·w·(d + h + w)·C) time (N^(4/3) on a cube); O(d·h·w·C) memory with SDPA",
    paper=PAPER,
    peer=f"{PEER}(num_dimensions=3, sum_axial_out=True/False), weights copied, fwd+bwd",
    flops=axial_flops,
)
class Axial3dMixer(AxialMixer):
    cfg: Axial3dConfig


@register_mixer(
    "axial_ar",
    config=AxialARConfig,
    family="sparse",
    patterns=("causal-self",),
    complexity="O(T^1.5·C) time at the default row width ceil(T^0.5), T·(W + T/W)·C at a fixed "
    "width W; O(T·C) memory with SDPA",
    paper=PAPER,
    peer="torch SDPA over the flattened tokens with dense row / causal-column / causal-row "
    "masks and the shift down by W tokens (no pip peer has the decoder); causality and the "
    "whole-prefix receptive field by perturbation and Jacobian",
    flops=axial_ar_flops,
    export=ExportSupport(
        dynamic="the row width and the padding to whole rows are Python ints computed from T, "
        "so an exported program is fixed to one fold"
    ),
)
class AxialARMixer(Mixer):
    cfg: AxialARConfig

    def __init__(self, cfg: AxialARConfig) -> None:
        super().__init__(cfg)
        b = cfg.qkv_bias
        self.outer_row = AxialPass(cfg, 1, False, b)  # unmasked, along each row
        self.outer_col = AxialPass(cfg, 0, True, b)  # masked, over the rows above
        self.inner_row = AxialPass(cfg, 1, True, b)  # masked, along each row

    def mix(self, x: Tensor, context: None, mask: Mask | None) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        impl, T = self.cfg.impl, x.shape[1]
        W = self.cfg.width(T)
        R = -(-T // W)
        g = F.pad(x, (0, 0, 0, R * W - T)).unflatten(1, (R, W))  # [B, R, W, D]
        c = self.outer_col(self.outer_row(g, impl), impl)  # [B, R, W, D]
        u = F.pad(c[:, :-1], (0, 0, 0, 0, 1, 0))  # shift down: row i gets row i-1, row 0 zeros
        y = self.inner_row(g + u, impl)  # [B, R, W, D]
        return y.flatten(1, 2)[:, :T]


# ---- peer: lucidrains' AxialAttention ---------------------------------------------------------
def load_peer_weights(mixer: AxialMixer, peer: nn.Module) -> None:
    """Copy an ``axial_attention.AxialAttention`` (channels last, ``dim_index=-1``, one
    ``SelfAttention`` per axis in axis order) into ``mixer``: ``axial_attentions.{i}.fn.X`` is
    ``passes.{i}.X`` (``to_q``, ``to_kv`` with ``[k | v]`` halves, ``to_out``; heads split as
    ``(head, width)`` in both). Raises ``ValueError`` on a mismatch."""
    n = len(mixer.passes)
    total, dim = getattr(peer, "total_dimensions", None), getattr(peer, "dim_index", None)
    if total != n + 2 or dim != n + 1:
        raise ValueError(
            f"{mixer.spec.name}.load_peer_weights: expected a channels-last AxialAttention with "
            f"num_dimensions={n} and dim_index=-1, got total_dimensions={total}, dim_index={dim}"
        )
    if bool(getattr(peer, "sum_axial_out", True)) != (mixer.cfg.combine == "sum"):
        raise ValueError(
            f"{mixer.spec.name}.load_peer_weights: the peer has sum_axial_out="
            f"{peer.sum_axial_out} but the mixer has combine={mixer.cfg.combine!r}"
        )
    theirs = {
        key.replace("axial_attentions.", "passes.").replace(".fn.", "."): t
        for key, t in peer.state_dict().items()
    }
    load_matching_state(mixer, theirs, source=PEER)


PEER_BATCH, PEER_C, PEER_HEADS = 4, 64, 8


def _peer_case(combine: str, n: int) -> Callable[[int, torch.Generator], PeerPair]:
    """The peer at ``n`` grid axes with ``sum_axial_out = (combine == "sum")``, biases moved off
    zero, its weights copied into ours; both take the same channels-last ``x``."""

    def build(side: int, g: torch.Generator) -> PeerPair:
        from axial_attention import AxialAttention

        peer = AxialAttention(PEER_C, num_dimensions=n, heads=PEER_HEADS, dim_index=-1,
                              sum_axial_out=combine == "sum")  # fmt: skip
        peer = randomise_biases(peer, g)
        name = "axial" if n == 2 else "axial3d"
        cls = AxialMixer if n == 2 else Axial3dMixer
        cfg_cls = AxialConfig if n == 2 else Axial3dConfig
        ours = cls(cfg_cls(d_model=PEER_C, num_heads=PEER_HEADS, combine=combine)).eval()
        load_peer_weights(ours, peer)
        x = torch.randn((PEER_BATCH,) + (side,) * n + (PEER_C,), generator=g)
        size = f"B={PEER_BATCH} {'x'.join([str(side)] * n)}x{PEER_C} ({name}, {combine})"
        flops = axial_flops(ours.cfg, PEER_BATCH, side**n, None, None)
        return PeerPair(ours=lambda: ours(x), peer=lambda: peer(x), flops=flops, size=size)

    return build


for _combine in ("sum", "sequential"):
    register_case(PeerCase(f"axial/axial-attention-{_combine}", "axial", f"{PEER} "
                           f"(sum_axial_out={_combine == 'sum'})", ("axial_attention",),
                           _peer_case(_combine, 2), (32, 64), (32,), smoke_size=8))  # fmt: skip
register_case(PeerCase("axial3d/axial-attention-sum", "axial3d", f"{PEER} (num_dimensions=3)",
                       ("axial_attention",), _peer_case("sum", 3), (8, 16), (8,),
                       smoke_size=4))  # fmt: skip
