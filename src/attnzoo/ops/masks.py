"""One mask description shared by every attention op (SYS-LCA's mask axis).

The kinds follow the Long-Context Attention Benchmark's mask list (LongCA-bench,
``longca_bench/dist_attn/benchmark/mask.py``; arXiv 2510.17896). Every kind but QK-sparse and
hash-sparse gives each query row one or two *contiguous* key ranges; those two hide pairs inside
the ranges by token. Ops use a mask three ways (:mod:`attnzoo.ops.mask_rows`): a dense boolean
``[T, S]`` mask for the reference path, per-tile "empty / full / partial" decisions for blocked
paths, and an exact count of attended pairs for FLOP accounting.

Alignment when ``S != T`` (per document): query ``i`` sits at key position
``p = i + (S - T)``, i.e. causal masks are aligned *bottom-right* like FlashAttention's: the last
query sees every key. A query with ``p < 0`` under a causal mask has no keys; attention outputs
for such fully-masked rows are defined to be zero (and their gradients zero).

Positions below are local to a document (``d`` numbers the documents from 0). With
``documents=(3, 5)`` the first 3 queries and the first 3 keys form document 0; keys of other
documents are never visible, except where a kind says so.

- causal:           j <= p
- window W:         p - W < j            (and j < p + W when not causal); W keys when causal
- prefix P:         j <= max(p, P - 1)   (prefix-LM: the first P keys are bidirectional; with
                    documents, the first P of each document: LongCA's prefix_lm_document)
- block-causal Bk:  j < (p // Bk + 1) * Bk  (whole blocks visible, block-level causality)
- global G:         the window's pairs, plus j < G or p < G (the first G tokens of a document
                    see and are seen by every token; with causal, still only j <= p). LongCA's
                    ``global_sliding_window`` hands its global keys to queries through a
                    bottom-right aligned causal range, so only the last queries see them; this is
                    the Longformer / BigBird reading instead, where every query sees them.
- shared-question:  causal inside each document, and every key of document 0 (the question)
                    for queries of documents d >= 1 (the answers)
- causal-blockwise: causal inside each document, and every key of every earlier document for
                    queries of the last document
- qk-sparse:        the pairs of the rest of the mask, without the listed queries (their rows
                    are empty) and keys (Pagliardini et al. 2023, "Faster Causal Attention Over
                    Large Sequences Through Sparse Flash Attention", arXiv 2306.01160)
- hash-sparse:      the pairs of the rest of the mask whose query and key share a bucket
                    (same paper; Reformer's LSH buckets)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from attnzoo.ops import mask_rows

MASK_KINDS = (
    "full",
    "causal",
    "sliding-window",
    "document",
    "prefix-lm",
    "block-causal",
    "global",
    "shared-question",
    "causal-blockwise",
    "qk-sparse",
    "hash-sparse",
)


@dataclasses.dataclass(frozen=True)
class Mask:
    """Description of which keys each query may attend to.

    Prefer the named constructors: :meth:`full`, :meth:`causal_`, :meth:`sliding_window`,
    :meth:`document`, :meth:`prefix_lm`, :meth:`block_causal`, :meth:`global_window`,
    :meth:`shared_question`, :meth:`causal_blockwise`, :meth:`qk_sparse`, :meth:`hash_sparse`.

    Attributes:
        causal: keys after the (bottom-right aligned) query position are hidden.
        window: sliding-window size ``W`` (see module docstring), or ``None``.
        prefix: prefix-LM prefix length (requires ``causal``), or ``None``.
        block: block-causal block size (requires ``causal``), or ``None``.
        documents: query document lengths (sum must equal T), or ``None`` for one document.
        kv_documents: key document lengths (sum must equal S); defaults to ``documents``.
        global_tokens: the first ``G`` tokens of each document are global (requires ``window``).
        shares_question: document 0 is a question every later document also sees
            (shared-question; requires ``causal`` and at least two documents).
        last_sees_all: the last document sees every earlier document (causal-blockwise;
            requires ``causal`` and documents).
        drop_q, drop_k: query / key indices removed from attention (QK-sparse), or ``None``.
        buckets, kv_buckets: a hash bucket per query / key (``kv_buckets`` defaults to
            ``buckets``); only pairs in the same bucket attend (hash-sparse), or ``None``.
    """

    causal: bool = False
    window: int | None = None
    prefix: int | None = None
    block: int | None = None
    documents: tuple[int, ...] | None = None
    kv_documents: tuple[int, ...] | None = None
    global_tokens: int | None = None
    shares_question: bool = False
    last_sees_all: bool = False
    drop_q: tuple[int, ...] | None = None
    drop_k: tuple[int, ...] | None = None
    buckets: tuple[int, ...] | None = None
    kv_buckets: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("causal", "shares_question", "last_sees_all"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Mask: {name} must be a bool, got {getattr(self, name)!r}")
        for name in ("window", "prefix", "block", "global_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"Mask: {name} must be an int or None, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"Mask: {name} must be >= 1, got {value}")
        for name, minimum in (("documents", 0), ("kv_documents", 0), ("drop_q", 0),
                              ("drop_k", 0), ("buckets", 0), ("kv_buckets", 0)):  # fmt: skip
            self._int_tuple(name, minimum)
        self._check_combinations()

    def _int_tuple(self, name: str, minimum: int) -> None:
        values = getattr(self, name)
        if values is None:
            return
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"Mask: {name} must be a sequence of ints, got {values!r}")
        values = tuple(values)
        if any(isinstance(d, bool) or not isinstance(d, int) for d in values):
            raise TypeError(f"Mask: {name} must be a sequence of ints, got {values!r}")
        if name in ("documents", "kv_documents") and not values:
            raise TypeError(f"Mask: {name} must be a non-empty sequence of ints, got {values!r}")
        if any(d < minimum for d in values):
            what = "lengths" if name.endswith("documents") else "entries"
            raise ValueError(f"Mask: {name} {what} must be >= {minimum}, got {values}")
        if name in ("drop_q", "drop_k") and len(set(values)) != len(values):
            raise ValueError(f"Mask: {name} lists an index twice: {values}")
        object.__setattr__(self, name, values)

    def _check_combinations(self) -> None:
        def refuse(cond: bool, message: str) -> None:
            if cond:
                raise ValueError(f"Mask: {message}")

        refuse(
            self.prefix is not None and not self.causal, "prefix (prefix-LM) requires causal=True"
        )
        refuse(
            self.block is not None and not self.causal, "block (block-causal) requires causal=True"
        )
        refuse(self.prefix is not None and (self.window is not None or self.block is not None),
               "prefix cannot be combined with window or block")  # fmt: skip
        refuse(
            self.block is not None and self.window is not None,
            "block cannot be combined with window",
        )
        refuse(
            self.kv_documents is not None and self.documents is None,
            "kv_documents given without documents",
        )
        refuse(self.kv_documents is not None and self.documents is not None
               and len(self.kv_documents) != len(self.documents),
               f"documents has {len(self.documents or ())} entries but kv_documents has "
               f"{len(self.kv_documents or ())}; they must pair up one to one")  # fmt: skip
        refuse(self.global_tokens is not None and self.window is None,
               "global_tokens needs a window (global tokens + sliding window); without one every "
               "token is already visible")  # fmt: skip
        others = self.window is not None or self.prefix is not None or self.block is not None
        for flag in ("shares_question", "last_sees_all"):
            if getattr(self, flag):
                refuse(not self.causal, f"{flag} requires causal=True")
                refuse(self.documents is None, f"{flag} requires documents")
                refuse(others, f"{flag} cannot be combined with window, prefix or block")
        refuse(self.shares_question and len(self.documents or ()) < 2,
               f"shares_question needs the question and at least one answer as documents, got "
               f"{self.documents}")  # fmt: skip
        refuse(self.shares_question and self.last_sees_all,
               "shares_question cannot be combined with last_sees_all")  # fmt: skip
        refuse(
            self.kv_buckets is not None and self.buckets is None, "kv_buckets given without buckets"
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
    def prefix_lm(cls, prefix: int, documents: Sequence[int] | None = None) -> Mask:
        """Prefix-LM; with ``documents``, the first ``prefix`` tokens of each document."""
        return cls(
            causal=True, prefix=prefix, documents=None if documents is None else tuple(documents)
        )

    @classmethod
    def block_causal(cls, block: int) -> Mask:
        return cls(causal=True, block=block)

    @classmethod
    def global_window(
        cls,
        global_tokens: int,
        window: int,
        causal: bool = True,
        documents: Sequence[int] | None = None,
    ) -> Mask:
        """Global tokens + sliding window (Longformer / BigBird's local + global pattern)."""
        docs = None if documents is None else tuple(documents)
        return cls(causal=causal, window=window, global_tokens=global_tokens, documents=docs)

    @classmethod
    def shared_question(cls, question: int, answers: Sequence[int]) -> Mask:
        """A question followed by answers; each answer sees the question and itself (causal)."""
        return cls(causal=True, shares_question=True, documents=(question, *answers))

    @classmethod
    def causal_blockwise(cls, lengths: Sequence[int]) -> Mask:
        """Causal documents; the last one sees every earlier document too."""
        return cls(causal=True, last_sees_all=True, documents=tuple(lengths))

    @classmethod
    def qk_sparse(
        cls, drop_q: Sequence[int] = (), drop_k: Sequence[int] = (), causal: bool = True
    ) -> Mask:
        """Causal (or full) attention with the listed queries and keys removed."""
        return cls(causal=causal, drop_q=tuple(drop_q), drop_k=tuple(drop_k))

    @classmethod
    def hash_sparse(
        cls, buckets: Sequence[int], kv_buckets: Sequence[int] | None = None, causal: bool = True
    ) -> Mask:
        """Causal (or full) attention inside hash buckets (Reformer-style)."""
        kv = None if kv_buckets is None else tuple(kv_buckets)
        return cls(causal=causal, buckets=tuple(buckets), kv_buckets=kv)

    # ---- description --------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        """Every mask kind this mask uses, e.g. ``("causal", "document")``."""
        special = self.shares_question or self.last_sees_all
        out = []
        if self.causal and self.prefix is None and self.block is None and not special:
            out.append("causal")
        if self.window is not None:
            out.append("sliding-window")
        if self.global_tokens is not None:
            out.append("global")
        if self.documents is not None and not special:
            out.append("document")
        if self.prefix is not None:
            out.append("prefix-lm")
        if self.block is not None:
            out.append("block-causal")
        if self.shares_question:
            out.append("shared-question")
        if self.last_sees_all:
            out.append("causal-blockwise")
        if self.drop_q is not None or self.drop_k is not None:
            out.append("qk-sparse")
        if self.buckets is not None:
            out.append("hash-sparse")
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

    @property
    def single_range(self) -> bool:
        """Every row's keys form one contiguous range (:meth:`ranges` works)."""
        return self.global_tokens is None and not self.shares_question and not self.filtered

    @property
    def filtered(self) -> bool:
        """Some pairs inside the rows' key ranges are hidden (QK-sparse or hash buckets)."""
        return self.drop_q is not None or self.drop_k is not None or self.buckets is not None

    # ---- evaluation (attnzoo.ops.mask_rows) -----------------------------------------------
    def validate(self, T: int, S: int) -> None:
        """Raise ``ValueError`` if this mask cannot describe ``T`` queries over ``S`` keys."""
        mask_rows.check_sizes(self, T, S)

    def resolve(self, T: int, S: int, device: torch.device | str | None = None) -> mask_rows.Rows:
        """Every row's key ranges and filters for ``T`` queries over ``S`` keys (see
        :class:`attnzoo.ops.mask_rows.Rows`): what the ops evaluate tiles and counts from."""
        return mask_rows.resolve(self, T, S, device)

    def ranges(
        self, T: int, S: int, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Allowed key range of every query row, for a mask with one range per row
        (:attr:`single_range`; others raise ``ValueError``: use :meth:`resolve`).

        Shapes:
            returns ``lo [T]``, ``hi [T]`` (int64): row ``i`` attends keys ``lo[i] <= j < hi[i]``;
            ``hi <= lo`` means the row has no keys.
        """
        if not self.single_range:
            raise ValueError(
                f"mask {self.name!r}: some rows attend several key ranges or a sparse subset, so "
                "there is no single range per row; use mask.resolve(T, S) or mask.dense(T, S)"
            )
        rows = mask_rows.resolve(self, T, S, device)
        return rows.lo[:, 0], rows.hi[:, 0]

    def dense(self, T: int, S: int, device: torch.device | str | None = None) -> Tensor:
        """Boolean mask, ``True`` where attention is allowed.

        Shapes:
            returns ``[T, S]`` bool.
        """
        return mask_rows.resolve(self, T, S, device).dense()

    def pairs(self, T: int, S: int) -> int:
        """Number of allowed (query, key) pairs: the basis of FLOP accounting."""
        return int(mask_rows.resolve(self, T, S).row_counts().sum().item())


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
