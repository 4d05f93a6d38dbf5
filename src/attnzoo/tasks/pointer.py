"""Pointer-network tasks (sorting, planar convex hull) and an additive pointer head.

Vinyals, Fortunato, Jaitly, "Pointer Networks", NeurIPS 2015. https://arxiv.org/abs/1506.03134
No official code was released; the unofficial ``github.com/shirgur/PointerNet`` (PyTorch) and
``github.com/vshallc/PtrNets`` (convex-hull data) were read for the conventions.

An example has ``n`` inputs, ``n`` drawn uniformly from the split's inclusive range
(``cfg.train_n`` or the longer ``cfg.test_n`` for the generalisation test). A batch is padded to
``N = max`` of that range; padded inputs are 0 and ``input_mask`` is False there.

- ``sort``: ``n`` numbers i.i.d. uniform in ``[0, 1)`` (features ``F = 1``). The target is the
  ascending argsort, a sequence of ``n`` pointers (ties, which float32 makes possible, go to the
  lower index first: a stable sort). ``M = N`` target steps; steps ``>= n`` are ``IGNORE_INDEX``.
  No end token: the model knows ``n`` from ``input_mask``.
- ``hull``: ``n`` points i.i.d. uniform in the unit square ``[0, 1)^2`` (``F = 2``). The target is
  the convex hull's vertices as input indices, counter-clockwise (x right, y up), starting from
  the lowest-index vertex, then the end token ``END = N`` (a pointer to the extra slot that
  :class:`PointerHead` appends after the ``N`` padded inputs with ``end_slot=True``). Vertices are
  extreme points only: points on a hull edge are not vertices; of coincident points only the
  lowest index can be one. ``M = N + 1``; steps after ``END`` are ``IGNORE_INDEX``. The
  orientation test runs in float64, exact for ``torch.rand``'s multiples of 2^-24 in [0, 1).

Differences from the paper: Vinyals et al.'s data (and vshallc/PtrNets) use 1-based indices;
here indices are 0-based and every target sequence ends with an explicit ``END``. The paper's
encoder/decoder LSTMs are the model's business; the paper's hull "area coverage" metric is not
provided (:func:`metric` is its exact-match accuracy). Train/test ranges default to the paper's
``5..10`` and a longer ``11..20``, scaled down from its ``n = 50 / 500`` hull runs for CPU.

Training with teacher forcing: ``Batch.exclude[b, i]`` masks padding and the inputs targeted at
steps ``< i``; pass it as ``chosen_mask`` to :class:`PointerHead` and train with :func:`loss`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.tasks.checks import check_int

IGNORE_INDEX = -100
Split = Literal["train", "test"]
_MIN_N = {"sort": 1, "hull": 3}


@dataclasses.dataclass(frozen=True)
class PointerConfig:
    """Parameters of the pointer tasks.

    Attributes:
        task: ``"sort"`` or ``"hull"``.
        train_n: inclusive ``(min, max)`` number of inputs per training example.
        test_n: inclusive ``(min, max)`` for the generalisation split (usually longer).
    """

    task: Literal["sort", "hull"] = "sort"
    train_n: tuple[int, int] = (5, 10)
    test_n: tuple[int, int] = (11, 20)

    def __post_init__(self) -> None:
        for name in ("train_n", "test_n"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        owner = "PointerConfig"
        if self.task not in _MIN_N:
            raise ValueError(f"{owner}: task must be 'sort' or 'hull', got {self.task!r}")
        for name in ("train_n", "test_n"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 2:
                raise ValueError(f"{owner}: {name} must be a (min, max) pair, got {value!r}")
            check_int(owner, f"{name}[0]", value[0], _MIN_N[self.task])
            check_int(owner, f"{name}[1]", value[1], value[0])

    @property
    def feature_dim(self) -> int:
        """Features per input: 1 (a number) or 2 (a point)."""
        return 1 if self.task == "sort" else 2

    def n_range(self, split: Split) -> tuple[int, int]:
        """The inclusive range of ``n`` for ``split``."""
        if split not in ("train", "test"):
            raise ValueError(f"PointerConfig: split must be 'train' or 'test', got {split!r}")
        return self.train_n if split == "train" else self.test_n


@dataclasses.dataclass(frozen=True)
class Batch:
    """One pointer-task batch (``N`` padded inputs, ``M`` target steps).

    Attributes:
        inputs: ``[B, N, F]`` float32, 0 at padding.
        lengths: ``[B]`` int64, ``n`` per example.
        input_mask: ``[B, N]`` bool, True at the ``n`` real inputs.
        targets: ``[B, M]`` int64 pointers into ``[0, N)``, ``END = N`` (hull), else
            ``IGNORE_INDEX``.
        exclude: ``[B, M, N]`` bool teacher-forcing exclusion (see :func:`exclusion_mask`).
        end_index: ``N`` for the hull task, None for sorting.
    """

    inputs: Tensor  # [B, N, F]
    lengths: Tensor  # [B]
    input_mask: Tensor  # [B, N]
    targets: Tensor  # [B, M]
    exclude: Tensor  # [B, M, N]
    end_index: int | None

    @property
    def mask(self) -> Tensor:
        """Scored target steps ``[B, M]`` (bool)."""
        return self.targets != IGNORE_INDEX


def sort_targets(values: Tensor, lengths: Tensor) -> Tensor:
    """Ascending stable argsort of each row's first ``n`` values, ``IGNORE_INDEX`` after.

    Shapes:
        values: ``[B, N]``; lengths: ``[B]``; returns ``[B, N]`` int64.
    """
    valid = torch.arange(values.shape[1]) < lengths[:, None]  # [B, N]
    keys = values.masked_fill(~valid, float("inf"))  # [B, N]
    order = torch.argsort(keys, dim=1, stable=True)  # [B, N]
    return order.masked_fill(~valid, IGNORE_INDEX)


def _turn(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """> 0 when o -> a -> b turns counter-clockwise (exact on the 2^-24 grid in [0, 1))."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def convex_hull(points: Tensor) -> list[int]:
    """Indices of the hull's vertices, counter-clockwise from the lowest index (monotone chain).

    Shapes:
        points: ``[n, 2]`` (x, y); returns a list of ``h <= n`` distinct indices.
    """
    if points.dim() != 2 or points.shape[1] != 2 or points.shape[0] < 1:
        raise ValueError(f"convex_hull: points must be [n>=1, 2], got {tuple(points.shape)}")
    xy = [tuple(p) for p in points.double().tolist()]
    order = sorted(range(len(xy)), key=lambda i: (xy[i][0], xy[i][1], i))
    # of coincident points keep the lowest index (it sorts first)
    uniq = [i for k, i in enumerate(order) if k == 0 or xy[i] != xy[order[k - 1]]]
    if len(uniq) == 1:
        return uniq

    def chain(idx: list[int]) -> list[int]:
        out: list[int] = []
        for i in idx:
            while len(out) >= 2 and _turn(xy[out[-2]], xy[out[-1]], xy[i]) <= 0:
                out.pop()
            out.append(i)
        return out

    hull = chain(uniq)[:-1] + chain(uniq[::-1])[:-1]
    start = hull.index(min(hull))
    return hull[start:] + hull[:start]


def exclusion_mask(targets: Tensor, input_mask: Tensor) -> Tensor:
    """Teacher-forcing exclusion: padding plus every input targeted at an earlier step.

    At unscored steps (``IGNORE_INDEX``) only padding is excluded, so no row of a sorting batch
    is ever fully masked (a fully masked row would make the ignored loss terms NaN). ``END``
    targets exclude nothing. Hull rows may exclude every input; the head's end slot stays open.

    Shapes:
        targets: ``[B, M]``; input_mask: ``[B, N]``; returns ``[B, M, N]`` bool.
    """
    n = input_mask.shape[1]
    is_ptr = (targets >= 0) & (targets < n)  # [B, M]
    hit = F.one_hot(targets.clamp(0, n - 1), n).bool() & is_ptr[..., None]  # [B, M, N]
    before = (hit.long().cumsum(dim=1) - hit.long()) > 0  # [B, M, N]
    before = before & (targets != IGNORE_INDEX)[..., None]
    return before | ~input_mask[:, None, :]


def make_batch(
    cfg: PointerConfig, batch_size: int, generator: torch.Generator, split: Split = "train"
) -> Batch:
    """Draw ``batch_size`` examples of ``cfg.task``; identical for identical generator states.

    Shapes:
        see :class:`Batch`: ``N = cfg.n_range(split)[1]``, ``M = N`` (sort) or ``N + 1`` (hull).
    """
    check_int("pointer.make_batch", "batch_size", batch_size, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"pointer.make_batch: generator must be a torch.Generator, got {generator!r}"
        )
    lo, hi = cfg.n_range(split)
    lengths = torch.randint(lo, hi + 1, (batch_size,), generator=generator)  # [B]
    input_mask = torch.arange(hi) < lengths[:, None]  # [B, N]
    inputs = torch.rand(batch_size, hi, cfg.feature_dim, generator=generator)  # [B, N, F]
    inputs = inputs * input_mask[..., None]
    if cfg.task == "sort":
        targets = sort_targets(inputs[..., 0], lengths)  # [B, N]
        end_index = None
    else:
        end_index = hi
        targets = torch.full((batch_size, hi + 1), IGNORE_INDEX, dtype=torch.int64)  # [B, N+1]
        for b in range(batch_size):
            hull = convex_hull(inputs[b, : int(lengths[b])])
            targets[b, : len(hull)] = torch.tensor(hull)
            targets[b, len(hull)] = end_index
    exclude = exclusion_mask(targets, input_mask)  # [B, M, N]
    return Batch(inputs, lengths, input_mask, targets, exclude, end_index)


def _predictions(output: Tensor, targets: Tensor) -> Tensor:
    if output.shape == targets.shape:
        return output
    if output.dim() == targets.dim() + 1 and output.shape[:-1] == targets.shape:
        return output.argmax(dim=-1)
    raise ValueError(
        f"pointer.metric: output must be logits [B, M, N(+1)] or pointers [B, M] matching "
        f"targets {tuple(targets.shape)}, got {tuple(output.shape)}"
    )


def metric(output: Tensor, targets: Tensor) -> float:
    """Exact-match accuracy: the fraction of examples whose every scored pointer is right.

    This is the paper's accuracy (a sorted order / a hull counts only when wholly correct,
    including ``END``). Predictions at unscored steps are ignored.

    Shapes:
        output: logits ``[B, M, N]`` / ``[B, M, N + 1]`` or pointers ``[B, M]``;
        targets: ``[B, M]``.
    """
    preds = _predictions(output, targets)  # [B, M]
    ok = (preds == targets) | (targets == IGNORE_INDEX)  # [B, M]
    return float(ok.all(dim=1).double().mean())


def token_accuracy(output: Tensor, targets: Tensor) -> float:
    """Fraction of scored pointer steps predicted correctly (``IGNORE_INDEX`` skipped)."""
    preds = _predictions(output, targets)  # [B, M]
    mask = targets != IGNORE_INDEX  # [B, M]
    return float((preds[mask] == targets[mask]).double().mean())


def loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over scored steps. logits ``[B, M, N(+1)]``, targets ``[B, M]`` -> scalar."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


class PointerHead(nn.Module):
    """Additive (Bahdanau) attention used as a pointer: ``u_ij = vᵀ tanh(W1 e_j + W2 d_i)``.

    Vinyals et al. 2015, eq. (3). The logits over input positions ``j`` are returned unnormalised;
    positions where ``chosen_mask`` is True get ``-inf``. With ``end_slot=True`` a learned vector
    is appended to the encoder states, so the logits have ``n + 1`` columns and column ``n`` is
    the end token (never masked).

    Args:
        d_model: width ``D`` of encoder and decoder states.
        d_hidden: width of the additive attention (default ``d_model``).
        end_slot: append the learned end-token slot.
    """

    def __init__(self, d_model: int, d_hidden: int | None = None, end_slot: bool = False) -> None:
        super().__init__()
        check_int("PointerHead", "d_model", d_model, 1)
        d_hidden = d_model if d_hidden is None else d_hidden
        check_int("PointerHead", "d_hidden", d_hidden, 1)
        self.d_model = d_model
        self.w_enc = nn.Linear(d_model, d_hidden, bias=False)
        self.w_dec = nn.Linear(d_model, d_hidden, bias=False)
        self.v = nn.Linear(d_hidden, 1, bias=False)
        self.end = nn.Parameter(torch.randn(d_model) * d_model**-0.5) if end_slot else None

    def forward(self, enc: Tensor, dec: Tensor, chosen_mask: Tensor | None = None) -> Tensor:
        """Pointer logits.

        Shapes:
            enc: ``[B, n, D]``; dec: ``[B, m, D]``; chosen_mask: bool ``[B, m, n]`` or
            ``[B, n]`` (True = excluded); returns ``[B, m, n]`` (``[B, m, n + 1]`` with end slot).
        """
        if enc.dim() != 3 or dec.dim() != 3 or enc.shape[-1] != self.d_model:
            raise ValueError(
                f"PointerHead: enc must be [B, n, {self.d_model}] and dec [B, m, {self.d_model}], "
                f"got {tuple(enc.shape)} and {tuple(dec.shape)}"
            )
        if dec.shape[0] != enc.shape[0] or dec.shape[-1] != self.d_model:
            raise ValueError(
                f"PointerHead: dec must be [{enc.shape[0]}, m, {self.d_model}], "
                f"got {tuple(dec.shape)}"
            )
        bsz, n, m = enc.shape[0], enc.shape[1], dec.shape[1]
        if self.end is not None:
            enc = torch.cat([enc, self.end.expand(bsz, 1, -1)], dim=1)  # [B, n+1, D]
        e = self.w_enc(enc)  # [B, n', A]
        d = self.w_dec(dec)  # [B, m, A]
        u = self.v(torch.tanh(d[:, :, None, :] + e[:, None, :, :])).squeeze(-1)  # [B, m, n']
        if chosen_mask is None:
            return u
        if chosen_mask.dtype != torch.bool or tuple(chosen_mask.shape) not in (
            (bsz, m, n),
            (bsz, n),
        ):
            raise ValueError(
                f"PointerHead: chosen_mask must be bool [{bsz}, {m}, {n}] or [{bsz}, {n}], "
                f"got {chosen_mask.dtype} {tuple(chosen_mask.shape)}"
            )
        mask = chosen_mask if chosen_mask.dim() == 3 else chosen_mask[:, None].expand(bsz, m, n)
        if self.end is not None:
            mask = F.pad(mask, (0, 1), value=False)  # [B, m, n+1]
        return u.masked_fill(mask, float("-inf"))
