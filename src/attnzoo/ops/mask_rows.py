"""A :class:`attnzoo.Mask` evaluated at ``T`` queries over ``S`` keys: each row's key ranges and
the per-token filters, from which every op takes what it needs (a dense mask, the allowed pairs
of one tile, exact pair counts for FLOPs).

Every kind gives each row at most two disjoint, sorted key ranges (global tokens + window;
a question + one's own answer); QK-sparse and hash-sparse then hide pairs inside those ranges
by token (a dropped query or key, a different bucket). Nothing here is ``O(T * S)`` except
:meth:`Rows.dense` and the counts of a mask with more than :data:`MAX_COUNTED_BUCKETS` buckets.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
from torch import Tensor


class Mask(Protocol):
    """The fields of :class:`attnzoo.ops.masks.Mask` read here (that module imports this one)."""

    causal: bool
    window: int | None
    prefix: int | None
    block: int | None
    documents: tuple[int, ...] | None
    kv_documents: tuple[int, ...] | None
    global_tokens: int | None
    shares_question: bool
    last_sees_all: bool
    drop_q: tuple[int, ...] | None
    drop_k: tuple[int, ...] | None
    buckets: tuple[int, ...] | None
    kv_buckets: tuple[int, ...] | None


# above this many distinct buckets, pair counts come from dense row chunks instead of one prefix
# sum per bucket (memory buckets x S)
MAX_COUNTED_BUCKETS = 256


@dataclasses.dataclass(frozen=True)
class Rows:
    """A mask at fixed sizes.

    Attributes:
        lo, hi: ``[T, R]`` int64 global key ranges of each row (``R`` is 1 or 2): row ``i``
            attends keys ``j`` with ``lo[i, r] <= j < hi[i, r]`` for some ``r``; ranges are
            disjoint and an empty one has ``hi == lo``.
        q_keep, k_keep: ``[T]`` / ``[S]`` bool, or ``None`` (QK-sparse: dropped tokens are False).
        q_bucket, k_bucket: ``[T]`` / ``[S]`` int64, or ``None`` (hash-sparse).
    """

    T: int
    S: int
    lo: Tensor
    hi: Tensor
    q_keep: Tensor | None = None
    k_keep: Tensor | None = None
    q_bucket: Tensor | None = None
    k_bucket: Tensor | None = None

    @property
    def filtered(self) -> bool:
        return self.q_keep is not None or self.q_bucket is not None

    def allowed(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The allowed pairs among query indices ``rows [n]`` and key indices ``cols [m]``.

        Shapes: -> ``[n, m]`` bool (on ``rows``' device).
        """
        dev = self.lo.device
        r, c = rows.to(dev), cols.to(dev)
        key = c[None, :, None]  # [1, m, 1]
        ok = ((key >= self.lo[r][:, None, :]) & (key < self.hi[r][:, None, :])).any(-1)  # [n, m]
        if self.q_keep is not None and self.k_keep is not None:
            ok = ok & self.q_keep[r][:, None] & self.k_keep[c][None, :]
        if self.q_bucket is not None and self.k_bucket is not None:
            ok = ok & (self.q_bucket[r][:, None] == self.k_bucket[c][None, :])
        return ok.to(rows.device)

    def dense(self) -> Tensor:
        """Shapes: -> ``[T, S]`` bool."""
        dev = self.lo.device
        return self.allowed(torch.arange(self.T, device=dev), torch.arange(self.S, device=dev))

    def row_counts(self) -> Tensor:
        """Allowed keys of every row, exactly. Shapes: -> ``[T]`` int64."""
        width = (self.hi - self.lo).clamp(min=0)  # [T, R]
        if not self.filtered:
            return width.sum(-1)
        if self.q_bucket is not None and self.k_bucket is not None:
            buckets = torch.unique(self.k_bucket)
            if buckets.numel() > MAX_COUNTED_BUCKETS:
                return self._dense_counts()
            weight = (self.k_bucket[None, :] == buckets[:, None]).long()  # [U, S]
            if self.k_keep is not None:
                weight = weight * self.k_keep.long()[None, :]
            cum = torch.nn.functional.pad(weight.cumsum(-1), (1, 0))  # [U, S + 1]
            slot = torch.searchsorted(buckets, self.q_bucket).clamp(max=buckets.numel() - 1)
            known = buckets[slot] == self.q_bucket  # a query bucket no key has counts 0
            c = cum[slot]  # [T, S + 1]
            counts = (c.gather(1, self.hi) - c.gather(1, self.lo)).sum(-1) * known
        else:
            assert self.k_keep is not None
            cum = torch.nn.functional.pad(self.k_keep.long().cumsum(0), (1, 0))  # [S + 1]
            counts = (cum[self.hi] - cum[self.lo]).sum(-1)
        return counts * self.q_keep.long() if self.q_keep is not None else counts

    def _dense_counts(self, chunk: int = 1024) -> Tensor:
        dev = self.lo.device
        cols = torch.arange(self.S, device=dev)
        parts = [self.allowed(torch.arange(a, min(a + chunk, self.T), device=dev), cols).sum(-1)
                 for a in range(0, self.T, chunk)]  # fmt: skip
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=dev)


def _documents(mask: Mask, T: int, S: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if mask.documents is None:
        return (T,), (S,)
    q_docs = mask.documents
    k_docs = mask.kv_documents if mask.kv_documents is not None else mask.documents
    if sum(q_docs) != T:
        raise ValueError(
            f"mask: documents lengths {q_docs} sum to {sum(q_docs)} but there are T={T} queries"
        )
    if sum(k_docs) != S:
        name = "kv_documents" if mask.kv_documents is not None else "documents"
        raise ValueError(
            f"mask: {name} lengths {k_docs} sum to {sum(k_docs)} but there are S={S} keys"
        )
    return q_docs, k_docs


def check_sizes(mask: Mask, T: int, S: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The query and key document lengths; ``ValueError`` when the mask does not fit T x S."""
    docs = _documents(mask, T, S)
    for name, n, what in (("drop_q", T, "queries"), ("drop_k", S, "keys")):
        idx = getattr(mask, name)
        if idx and max(idx) >= n:
            raise ValueError(f"mask: {name} holds index {max(idx)} but there are {n} {what}")
    if mask.buckets is not None:
        kv = mask.kv_buckets if mask.kv_buckets is not None else mask.buckets
        if len(mask.buckets) != T:
            raise ValueError(
                f"mask: buckets has {len(mask.buckets)} entries but there are T={T} queries"
            )
        if len(kv) != S:
            name = (
                "kv_buckets"
                if mask.kv_buckets is not None
                else "buckets (pass kv_buckets when S != T)"
            )
            raise ValueError(f"mask: {name} has {len(kv)} entries but there are S={S} keys")
    return docs


def resolve(mask: Mask, T: int, S: int, device: torch.device | str | None = None) -> Rows:
    """Every row's key ranges (see the module docstring of :mod:`attnzoo.ops.masks` for each
    kind's definition) and filters."""
    q_docs, k_docs = check_sizes(mask, T, S)
    long = {"dtype": torch.long, "device": device}
    doc_t, doc_s = torch.tensor(q_docs, **long), torch.tensor(k_docs, **long)
    q_start = torch.cumsum(doc_t, 0) - doc_t  # first query of each document
    k_start = torch.cumsum(doc_s, 0) - doc_s
    doc_of = torch.repeat_interleave(torch.arange(len(q_docs), device=device), doc_t)  # [T]
    i = torch.arange(T, device=device)
    t_len, s_len, ks = doc_t[doc_of], doc_s[doc_of], k_start[doc_of]  # [T] each
    p = (i - q_start[doc_of]) + (s_len - t_len)  # local aligned query position
    lo, hi = torch.zeros_like(p), s_len.clone()
    if mask.causal:
        if mask.block is not None:
            hi = torch.minimum(
                hi, (torch.div(p, mask.block, rounding_mode="floor") + 1) * mask.block
            )
        elif mask.prefix is not None:
            hi = torch.minimum(
                hi, torch.clamp(torch.maximum(p, torch.full_like(p, mask.prefix - 1)), min=-1) + 1
            )
        else:
            hi = torch.minimum(hi, p + 1)
    cap = torch.clamp(hi, min=0)  # the causal limit before the window
    if mask.window is not None:
        lo = torch.maximum(lo, p - mask.window + 1)
        if not mask.causal:
            hi = torch.minimum(hi, p + mask.window)
    lo, hi = torch.clamp(lo, min=0), torch.clamp(hi, min=0)
    hi = torch.maximum(hi, lo)  # empty rows: hi == lo
    if mask.global_tokens is not None:  # [0, g) joins the window's range, per document
        g = torch.where(p < mask.global_tokens, cap, torch.clamp(cap, max=mask.global_tokens))
        spans = _union((torch.zeros_like(g), g), (lo, hi))
    elif mask.shares_question:  # answers (documents >= 1) also see the question (document 0)
        answer = doc_of > 0
        q_lo = torch.where(answer, k_start[0] - ks, 0)
        q_hi = torch.where(answer, k_start[0] + doc_s[0] - ks, 0)
        spans = _union((q_lo, q_hi), (lo, hi))
    elif mask.last_sees_all:  # the last document sees every earlier document
        last = doc_of == len(q_docs) - 1
        spans = (torch.where(last, -ks, lo)[:, None], hi[:, None])
    else:
        spans = (lo[:, None], hi[:, None])
    lo2, hi2 = spans[0] + ks[:, None], spans[1] + ks[:, None]  # [T, R] global key positions
    return Rows(T, S, lo2, hi2, *_filters(mask, T, S, device))


def _union(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Two ranges per row (``a`` starts first), merged where they touch. Shapes: -> ``[T, 2]``."""
    (a_lo, a_hi), (b_lo, b_hi) = a, b
    a_empty, b_empty = a_hi <= a_lo, b_hi <= b_lo
    merge = ~a_empty & ~b_empty & (b_lo <= a_hi)
    first_lo = torch.where(a_empty, b_lo, a_lo)
    first_hi = torch.where(a_empty, b_hi, torch.where(merge, torch.maximum(a_hi, b_hi), a_hi))
    second_lo = torch.where(a_empty | merge | b_empty, first_hi, b_lo)
    second_hi = torch.where(a_empty | merge | b_empty, first_hi, b_hi)
    return torch.stack([first_lo, second_lo], -1), torch.stack([first_hi, second_hi], -1)


def _filters(
    mask: Mask, T: int, S: int, device: torch.device | str | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    q_keep = k_keep = q_bucket = k_bucket = None
    if mask.drop_q is not None or mask.drop_k is not None:
        q_keep = torch.ones(T, dtype=torch.bool, device=device)
        k_keep = torch.ones(S, dtype=torch.bool, device=device)
        q_keep[list(mask.drop_q or ())] = False
        k_keep[list(mask.drop_k or ())] = False
    if mask.buckets is not None:
        kv = mask.kv_buckets if mask.kv_buckets is not None else mask.buckets
        q_bucket = torch.tensor(mask.buckets, dtype=torch.long, device=device)
        k_bucket = torch.tensor(kv, dtype=torch.long, device=device)
    return q_keep, k_keep, q_bucket, k_bucket
