"""Fit an :class:`attnzoo.Mask` to the key ranges one sample's query rows may attend.

transformers hands attention a boolean (or 0 / -inf) tensor ``[B, 1, T, S]``. attnzoo's
:class:`~attnzoo.Mask` has no dense form: it describes each query row by one contiguous key range
``[lo, hi)`` built from a few parameters (causal, window, documents, ...), which is what lets the
ops skip empty tiles and use fused kernels. This module recovers those parameters from the
ranges of one sample, or says it cannot.

Every candidate is *verified*: its :meth:`Mask.ranges` must equal the observed ranges on every
row that is not *free*. A free row belongs to a padding token; its output is never read by a real
token (nobody may attend its key), so any range is acceptable there (see :mod:`attnzoo.hf.masks`).

What the constructions cover (all bottom-right aligned per document, as attnzoo defines them):

- causal, with or without a sliding window, with any key offset (a KV cache of ``S - T`` keys);
- bidirectional, with or without a window;
- any of these split into documents: packed sequences, left or right padding (the padding keys
  become documents no query attends, the padding queries documents with no keys), a static
  cache's unused tail. Documents may be empty (``Mask`` accepts zero lengths).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from attnzoo.ops.masks import Mask

# a document: (queries, keys)
Doc = tuple[int, int]


def row_ranges(allowed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First and one-past-last allowed key of every row, and whether the row is contiguous.

    Shapes:
        allowed ``[B, T, S]`` bool -> lo ``[B, T]``, hi ``[B, T]`` (int64; ``lo = hi = 0`` for a
        row without keys), contiguous ``[B, T]`` bool (every key in ``[lo, hi)`` is allowed).
    """
    S = allowed.shape[-1]
    a = allowed.to(torch.int8)
    has = allowed.any(-1)  # [B, T]
    lo = a.argmax(-1)  # first True
    hi = S - a.flip(-1).argmax(-1)  # one past the last True
    count = allowed.sum(-1)
    lo = torch.where(has, lo, torch.zeros_like(lo))
    hi = torch.where(has, hi, torch.zeros_like(hi))
    return lo, hi, (count == hi - lo) | ~has


def fit_mask(lo: Tensor, hi: Tensor, free: Tensor, S: int, *, causal: bool) -> Mask | None:
    """A :class:`Mask` over ``S`` keys that reproduces ``(lo, hi)`` on every non-free row,
    trying masks of the hinted causality first, or ``None`` when none does.

    Shapes:
        lo, hi, free ``[T]`` (one sample; ``hi <= lo`` means no keys).
    """
    for c in (causal, not causal):
        for m in _candidates(lo, hi, free, S, causal=c):
            if _matches(m, lo, hi, free, S):
                return m
    return None


def _matches(m: Mask, lo: Tensor, hi: Tensor, free: Tensor, S: int) -> bool:
    try:
        elo, ehi = m.ranges(lo.shape[0], S, device=lo.device)
    except ValueError:
        return False
    e_empty, o_empty = ehi <= elo, hi <= lo
    same = torch.where(o_empty, e_empty, ~e_empty & (elo == lo) & (ehi == hi))
    return bool((same | free).all())


def _candidates(lo: Tensor, hi: Tensor, free: Tensor, S: int, *, causal: bool) -> Iterator[Mask]:
    """Simplest first: the plain mask (fast paths, and all a mixer without mask support takes),
    the plain mask with a window, then documents without and with a window."""
    yield Mask(causal=causal)
    T = lo.shape[0]
    lo_l, hi_l = lo.tolist(), hi.tolist()
    live = [not f and h > lo_ for f, lo_, h in zip(free.tolist(), lo_l, hi_l, strict=True)]
    widths = [h - lo_ for h, lo_, ok in zip(hi_l, lo_l, live, strict=True) if ok]
    # a causal window W shows W keys; a bidirectional one 2 W - 1 to a row far from the edges
    window = None if not widths else max(widths) if causal else (max(widths) + 1) // 2
    if window is not None:
        yield Mask(causal=causal, window=window)
    for w in (None, window) if window is not None else (None,):
        build = _causal_docs if causal else _bidirectional_docs
        docs = build(lo_l, hi_l, live, S, w)
        if docs is not None:
            yield _mask(docs, T, S, causal=causal, window=w)


def _mask(docs: list[Doc], T: int, S: int, *, causal: bool, window: int | None) -> Mask:
    q = tuple(t for t, _ in docs)
    k = tuple(s for _, s in docs)
    if q == (T,) and k == (S,):
        return Mask(causal=causal, window=window)
    return Mask(causal=causal, window=window, documents=q, kv_documents=None if q == k else k)


class _Docs:
    """Documents built row by row: keys are consumed left to right and never shared."""

    def __init__(self) -> None:
        self.docs: list[Doc] = []
        self.kp = 0  # keys assigned so far

    def empty_row(self) -> None:
        if self.docs and self.docs[-1][1] == 0 and self.docs[-1][0] > 0:
            self.docs[-1] = (self.docs[-1][0] + 1, 0)
        else:
            self.docs.append((1, 0))

    def start(self, ks: int) -> bool:
        """Skip to key ``ks`` (an unattended gap becomes a document without queries)."""
        if ks < self.kp:
            return False  # the new document would share keys with an earlier one
        if ks > self.kp:
            self.docs.append((0, ks - self.kp))
            self.kp = ks
        return True

    def close(self, t: int, ke: int) -> bool:
        if ke < self.kp:
            return False
        self.docs.append((t, ke - self.kp))
        self.kp = ke
        return True

    def finish(self, S: int) -> list[Doc] | None:
        if self.kp > S:
            return None
        if self.kp < S:
            self.docs.append((0, S - self.kp))
        return self.docs


def _causal_docs(
    lo: list[int], hi: list[int], live: list[bool], S: int, window: int | None
) -> list[Doc] | None:
    """Causal documents: every live row ends at ``i + off + 1`` for one offset ``off`` (the
    bottom-right diagonal); a row starts a new document unless its start is what the current
    document (and the window) predicts."""
    offs = {h - i - 1 for i, (h, ok) in enumerate(zip(hi, live, strict=True)) if ok}
    if len(offs) > 1:
        return None
    off = offs.pop() if offs else 0
    b = _Docs()
    cur: tuple[int, int, int] | None = None  # (first row, first key, last row)
    for i, ok in enumerate(live):
        if cur is not None and ok:
            ks = cur[1]
            expect = ks if window is None else max(ks, hi[i] - window)
            if lo[i] == expect:
                cur = (cur[0], ks, i)
                continue
        if cur is not None:
            if not b.close(cur[2] - cur[0] + 1, cur[2] + off + 1):
                return None
            cur = None
        if not ok:
            b.empty_row()
            continue
        if not b.start(lo[i]):
            return None
        cur = (i, lo[i], i)
    if cur is not None and not b.close(cur[2] - cur[0] + 1, cur[2] + off + 1):
        return None
    return b.finish(S)


def _bidirectional_docs(
    lo: list[int], hi: list[int], live: list[bool], S: int, window: int | None
) -> list[Doc] | None:
    """Bidirectional documents. Without a window a document is a run of rows with the same
    range; with one, rows are aligned to keys from the document's first key (``p = i - q0``)
    and the document ends at its rows' furthest key."""
    b = _Docs()
    cur: tuple[int, int, int, int] | None = None  # (first row, first key, last row, end key)
    for i, ok in enumerate(live):
        if cur is not None and ok:
            q0, ks, _, ke = cur
            if window is None and (lo[i], hi[i]) == (ks, ke):
                cur = (q0, ks, i, ke)
                continue
            if window is not None and lo[i] == max(ks, ks + (i - q0) - window + 1):
                cur = (q0, ks, i, max(ke, hi[i]))
                continue
        if cur is not None:
            if not b.close(cur[2] - cur[0] + 1, cur[3]):
                return None
            cur = None
        if not ok:
            b.empty_row()
            continue
        if not b.start(lo[i]):
            return None
        cur = (i, lo[i], i, hi[i])
    if cur is not None and not b.close(cur[2] - cur[0] + 1, cur[3]):
        return None
    return b.finish(S)
