"""One mask description shared by every attention op (SYS-LCA's mask axis).

Every mask attnzoo supports gives each query row ``i`` one *contiguous* range of allowed keys
``[lo_i, hi_i)``. That covers full, causal, sliding window (causal and not), document / varlen,
prefix-LM and block-causal attention, and their combinations with documents. Ops use the ranges
three ways: a dense boolean ``[T, S]`` mask for the reference path, per-tile "empty / full /
partial" decisions for blocked paths, and an exact count of attended pairs for FLOP accounting.

Alignment when ``S != T`` (per document): query ``i`` sits at key position
``p = i + (S - T)``, i.e. causal masks are aligned *bottom-right* like FlashAttention's: the last
query sees every key. A query with ``p < 0`` under a causal mask has no keys; attention outputs
for such fully-masked rows are defined to be zero (and their gradients zero).

Positions below are local to a document. With ``documents=(3, 5)`` the first 3 queries and the
first 3 keys form document 0; keys of other documents are never visible.

- causal:           j <= p
- window W:         p - W < j            (and j < p + W when not causal); W keys when causal
- prefix P:         j <= max(p, P - 1)   (prefix-LM: the first P keys are bidirectional)
- block-causal Bk:  j < (p // Bk + 1) * Bk  (whole blocks visible, block-level causality)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

MASK_KINDS = (
    "full",
    "causal",
    "sliding-window",
    "document",
    "prefix-lm",
    "block-causal",
)


@dataclasses.dataclass(frozen=True)
class Mask:
    """Description of which keys each query may attend to.

    Prefer the named constructors: :meth:`full`, :meth:`causal_`, :meth:`sliding_window`,
    :meth:`document`, :meth:`prefix_lm`, :meth:`block_causal`.

    Attributes:
        causal: keys after the (bottom-right aligned) query position are hidden.
        window: sliding-window size ``W`` (see module docstring), or ``None``.
        prefix: prefix-LM prefix length (requires ``causal``), or ``None``.
        block: block-causal block size (requires ``causal``), or ``None``.
        documents: query document lengths (sum must equal T), or ``None`` for one document.
        kv_documents: key document lengths (sum must equal S); defaults to ``documents``.
    """

    causal: bool = False
    window: int | None = None
    prefix: int | None = None
    block: int | None = None
    documents: tuple[int, ...] | None = None
    kv_documents: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.causal, bool):
            raise TypeError(f"Mask: causal must be a bool, got {self.causal!r}")
        for name in ("window", "prefix", "block"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"Mask: {name} must be an int or None, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"Mask: {name} must be >= 1, got {value}")
        if self.prefix is not None and not self.causal:
            raise ValueError("Mask: prefix (prefix-LM) requires causal=True")
        if self.block is not None and not self.causal:
            raise ValueError("Mask: block (block-causal) requires causal=True")
        if self.prefix is not None and (self.window is not None or self.block is not None):
            raise ValueError("Mask: prefix cannot be combined with window or block")
        if self.block is not None and self.window is not None:
            raise ValueError("Mask: block cannot be combined with window")
        for name in ("documents", "kv_documents"):
            docs = getattr(self, name)
            if docs is None:
                continue
            docs = tuple(docs)
            if not docs or any(isinstance(d, bool) or not isinstance(d, int) for d in docs):
                raise TypeError(f"Mask: {name} must be a non-empty sequence of ints, got {docs!r}")
            if any(d < 0 for d in docs):
                raise ValueError(f"Mask: {name} lengths must be >= 0, got {docs}")
            object.__setattr__(self, name, docs)
        if self.kv_documents is not None and self.documents is None:
            raise ValueError("Mask: kv_documents given without documents")
        if (
            self.kv_documents is not None
            and self.documents is not None
            and len(self.kv_documents) != len(self.documents)
        ):
            raise ValueError(
                f"Mask: documents has {len(self.documents)} entries but kv_documents has "
                f"{len(self.kv_documents)}; they must pair up one to one"
            )

    # ---- named constructors -------------------------------------------------------------
    @classmethod
    def full(cls) -> Mask:
        return cls()

    @classmethod
    def causal_(cls) -> Mask:
        return cls(causal=True)

    @classmethod
    def sliding_window(cls, window: int, causal: bool = True) -> Mask:
        return cls(causal=causal, window=window)

    @classmethod
    def document(
        cls,
        lengths: Sequence[int],
        causal: bool = False,
        kv_lengths: Sequence[int] | None = None,
        window: int | None = None,
    ) -> Mask:
        return cls(
            causal=causal,
            window=window,
            documents=tuple(lengths),
            kv_documents=None if kv_lengths is None else tuple(kv_lengths),
        )

    @classmethod
    def prefix_lm(cls, prefix: int) -> Mask:
        return cls(causal=True, prefix=prefix)

    @classmethod
    def block_causal(cls, block: int) -> Mask:
        return cls(causal=True, block=block)

    # ---- description --------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        """Every mask kind this mask uses, e.g. ``("causal", "document")``."""
        out = []
        if self.causal and self.prefix is None and self.block is None:
            out.append("causal")
        if self.window is not None:
            out.append("sliding-window")
        if self.documents is not None:
            out.append("document")
        if self.prefix is not None:
            out.append("prefix-lm")
        if self.block is not None:
            out.append("block-causal")
        return tuple(out) or ("full",)

    @property
    def name(self) -> str:
        return "+".join(self.kinds)

    @property
    def is_full(self) -> bool:
        return self.kinds == ("full",)

    @property
    def is_plain_causal(self) -> bool:
        return self.kinds == ("causal",)

    # ---- ranges -------------------------------------------------------------------------
    def _doc_lengths(self, T: int, S: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self.documents is None:
            return (T,), (S,)
        q_docs = self.documents
        k_docs = self.kv_documents if self.kv_documents is not None else self.documents
        if sum(q_docs) != T:
            raise ValueError(
                f"mask: documents lengths {q_docs} sum to {sum(q_docs)} but there are T={T} queries"
            )
        if sum(k_docs) != S:
            name = "kv_documents" if self.kv_documents is not None else "documents"
            raise ValueError(
                f"mask: {name} lengths {k_docs} sum to {sum(k_docs)} but there are S={S} keys"
            )
        return q_docs, k_docs

    def validate(self, T: int, S: int) -> None:
        """Raise ``ValueError`` if this mask cannot describe ``T`` queries over ``S`` keys."""
        self._doc_lengths(T, S)

    def ranges(
        self, T: int, S: int, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Allowed key range of every query row.

        Shapes:
            returns ``lo [T]``, ``hi [T]`` (int64): row ``i`` attends keys ``lo[i] <= j < hi[i]``;
            ``hi <= lo`` means the row has no keys.
        """
        q_docs, k_docs = self._doc_lengths(T, S)
        doc_t = torch.tensor(q_docs, dtype=torch.long, device=device)
        doc_s = torch.tensor(k_docs, dtype=torch.long, device=device)
        q_start = torch.cumsum(doc_t, 0) - doc_t  # first query of each document
        k_start = torch.cumsum(doc_s, 0) - doc_s
        doc_of = torch.repeat_interleave(torch.arange(len(q_docs), device=device), doc_t)  # [T]
        i = torch.arange(T, device=device)
        t_len, s_len, ks = doc_t[doc_of], doc_s[doc_of], k_start[doc_of]  # [T] each
        p = (i - q_start[doc_of]) + (s_len - t_len)  # local aligned query position
        lo = torch.zeros_like(p)
        hi = s_len.clone()
        if self.causal:
            if self.block is not None:
                hi = torch.minimum(
                    hi, (torch.div(p, self.block, rounding_mode="floor") + 1) * self.block
                )
            elif self.prefix is not None:
                hi = torch.minimum(
                    hi,
                    torch.clamp(torch.maximum(p, torch.full_like(p, self.prefix - 1)), min=-1) + 1,
                )
            else:
                hi = torch.minimum(hi, p + 1)
        if self.window is not None:
            lo = torch.maximum(lo, p - self.window + 1)
            if not self.causal:
                hi = torch.minimum(hi, p + self.window)
        lo = torch.clamp(lo, min=0)
        hi = torch.clamp(hi, min=0)
        hi = torch.maximum(hi, lo)  # empty rows: hi == lo
        return lo + ks, hi + ks

    def dense(self, T: int, S: int, device: torch.device | str | None = None) -> Tensor:
        """Boolean mask, ``True`` where attention is allowed.

        Shapes:
            returns ``[T, S]`` bool.
        """
        lo, hi = self.ranges(T, S, device)
        j = torch.arange(S, device=device)
        return (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])

    def pairs(self, T: int, S: int) -> int:
        """Number of allowed (query, key) pairs: the basis of FLOP accounting."""
        lo, hi = self.ranges(T, S)
        return int((hi - lo).sum().item())


def as_mask(mask: Mask | str | None, *, causal: bool | None = None) -> Mask:
    """Accept a :class:`Mask`, ``None`` (full, or causal when ``causal=True``), or a simple name.

    Names accepted: ``"full"`` and ``"causal"``; richer masks need a :class:`Mask` object.
    """
    if mask is None:
        return Mask(causal=bool(causal))
    if isinstance(mask, Mask):
        return mask
    if isinstance(mask, str):
        if mask == "full":
            return Mask()
        if mask == "causal":
            return Mask(causal=True)
        raise ValueError(
            f"mask: the string {mask!r} is not a mask; use 'full', 'causal' or an attnzoo.Mask "
            "(Mask.sliding_window, Mask.document, Mask.prefix_lm, Mask.block_causal)"
        )
    raise TypeError(
        f"mask must be an attnzoo.Mask, 'full', 'causal' or None, got {type(mask).__name__}"
    )
