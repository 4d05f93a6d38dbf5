"""Mask semantics: every kind checked against a per-pair definition written independently."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.masks import Mask, as_mask


def brute(mask: Mask, T: int, S: int) -> torch.Tensor:
    """Per-pair definition, written loop by loop from the module docstring."""
    q_docs = mask.documents or (T,)
    k_docs = mask.kv_documents or mask.documents or (S,)
    q_doc = [d for d, n in enumerate(q_docs) for _ in range(n)]  # document of each query
    k_doc = [d for d, n in enumerate(k_docs) for _ in range(n)]
    q_first = [sum(q_docs[:d]) for d in range(len(q_docs))]
    k_first = [sum(k_docs[:d]) for d in range(len(k_docs))]
    out = torch.zeros(T, S, dtype=torch.bool)
    for gi in range(T):
        d = q_doc[gi]
        p = gi - q_first[d] + k_docs[d] - q_docs[d]  # aligned position in its document
        for gj in range(S):
            if mask.drop_q is not None and gi in mask.drop_q:
                continue
            if mask.drop_k is not None and gj in mask.drop_k:
                continue
            if mask.buckets is not None:
                kv = mask.kv_buckets if mask.kv_buckets is not None else mask.buckets
                if mask.buckets[gi] != kv[gj]:
                    continue
            e = k_doc[gj]
            if e != d:  # another document: only the question and blockwise kinds reach it
                out[gi, gj] = (mask.shares_question and e == 0 and d >= 1) or (
                    mask.last_sees_all and d == len(q_docs) - 1 and e < d
                )
                continue
            j = gj - k_first[e]
            ok = True
            if mask.causal:
                if mask.block is not None:
                    ok = p >= 0 and j // mask.block <= p // mask.block
                elif mask.prefix is not None:
                    ok = j <= p or j < mask.prefix
                else:
                    ok = j <= p
            if mask.window is not None:
                near = j > p - mask.window and (mask.causal or j < p + mask.window)
                glob = mask.global_tokens is not None and (
                    j < mask.global_tokens or p < mask.global_tokens
                )
                ok = ok and (near or glob)
            out[gi, gj] = ok
    return out


MASKS = [
    Mask.full(),
    Mask.causal_(),
    Mask.sliding_window(3),
    Mask.sliding_window(3, causal=False),
    Mask.document([2, 5, 3]),
    Mask.document([2, 5, 3], causal=True),
    Mask.document([2, 5, 3], causal=True, window=2),
    Mask.prefix_lm(4),
    Mask.prefix_lm(2, documents=[4, 1, 5]),
    Mask.block_causal(3),
    Mask.global_window(2, 3),
    Mask.global_window(2, 2, causal=False),
    Mask.global_window(1, 2, documents=[6, 4]),
    Mask.shared_question(3, [2, 4, 1]),
    Mask.causal_blockwise([3, 2, 5]),
    Mask.qk_sparse(drop_q=[0, 4], drop_k=[2, 3, 9]),
    Mask.qk_sparse(drop_k=[1], causal=False),
    Mask.hash_sparse([0, 1, 1, 2, 0, 1, 2, 2, 0, 1]),
    Mask.hash_sparse([3, 1, 1, 3, 0, 1, 3, 2, 0, 1], causal=False),
    Mask(
        causal=True, window=4, global_tokens=1, drop_q=(5,), buckets=(0, 0, 1, 0, 1, 1, 0, 1, 0, 0)
    ),
]


CASES = [(m, 10, 10) for m in MASKS] + [
    (m, T, S)
    for m in MASKS
    if m.documents is None and not m.filtered
    for T, S in [(1, 1), (4, 9), (9, 4)]
]


@pytest.mark.parametrize("mask,T,S", CASES, ids=lambda c: c.name if isinstance(c, Mask) else str(c))
def test_dense_matches_definition(mask: Mask, T: int, S: int) -> None:
    dense = mask.dense(T, S)
    assert torch.equal(dense, brute(mask, T, S))
    assert mask.pairs(T, S) == int(dense.sum())


@pytest.mark.parametrize("T,S", [(4, 9), (9, 4)])
def test_causal_cross_is_bottom_right_aligned(T: int, S: int) -> None:
    dense = Mask.causal_().dense(T, S)
    assert dense[-1].all()  # the last query sees every key
    assert torch.equal(dense, brute(Mask.causal_(), T, S))
    if T > S:  # the first T-S queries have no key at all
        assert not dense[: T - S].any()


def test_pairs_counts() -> None:
    assert Mask.full().pairs(7, 5) == 35
    assert Mask.causal_().pairs(8, 8) == 36
    assert Mask.sliding_window(2).pairs(5, 5) == 9
    assert Mask.document([2, 3]).pairs(5, 5) == 4 + 9
    assert Mask.document([2, 3], kv_lengths=[4, 1]).pairs(5, 5) == 8 + 3


def test_kinds_and_names() -> None:
    assert Mask.full().kinds == ("full",)
    assert Mask.causal_().name == "causal"
    assert Mask.prefix_lm(3).kinds == ("prefix-lm",)
    assert Mask.block_causal(3).kinds == ("block-causal",)
    assert set(Mask.document([1], causal=True).kinds) == {"causal", "document"}
    assert Mask.global_window(2, 4).kinds == ("causal", "sliding-window", "global")
    assert Mask.shared_question(3, [2]).kinds == ("shared-question",)
    assert Mask.causal_blockwise([3, 2]).kinds == ("causal-blockwise",)
    assert Mask.qk_sparse([1]).name == "causal+qk-sparse"
    assert Mask.hash_sparse([0, 1], causal=False).kinds == ("hash-sparse",)
    assert Mask.prefix_lm(2, documents=[3, 3]).kinds == ("document", "prefix-lm")
    assert not Mask.global_window(2, 4).single_range and Mask.causal_blockwise([1]).single_range


def test_several_ranges_have_no_single_range() -> None:
    with pytest.raises(ValueError, match="several key ranges or a sparse subset.*resolve"):
        Mask.shared_question(2, [3]).ranges(5, 5)
    lo, hi = Mask.causal_blockwise([2, 3]).ranges(5, 5)
    assert lo.tolist() == [0, 0, 0, 0, 0] and hi.tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("buckets", [[0, 1, 0, 2, 1, 0], list(range(300))])
def test_hash_sparse_counts_with_many_buckets(buckets: list[int]) -> None:
    """Pair counts per bucket prefix sums, and by dense rows above MAX_COUNTED_BUCKETS."""
    m = Mask.hash_sparse(buckets, causal=True)
    n = len(buckets)
    assert m.pairs(n, n) == int(brute(m, n, n).sum()) if n < 50 else m.pairs(n, n) == n


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": 0}, "window must be >= 1"),
        ({"prefix": 2}, "prefix .* requires causal"),
        ({"block": 2}, "block .* requires causal"),
        ({"causal": True, "prefix": 2, "window": 2}, "cannot be combined"),
        ({"documents": (2, -1)}, "documents lengths must be >= 0"),
        ({"documents": (2,), "kv_documents": (1, 1)}, "pair up"),
        ({"global_tokens": 2}, "global_tokens needs a window"),
        ({"shares_question": True, "documents": (2, 3)}, "shares_question requires causal"),
        ({"causal": True, "shares_question": True, "documents": (2,)}, "at least one answer"),
        ({"causal": True, "last_sees_all": True}, "last_sees_all requires documents"),
        (
            {"causal": True, "last_sees_all": True, "documents": (2,), "window": 2},
            "cannot be combined",
        ),
        ({"drop_q": (1, 1)}, "lists an index twice"),
        ({"drop_k": (-1,)}, "entries must be >= 0"),
        ({"kv_buckets": (1,)}, "kv_buckets given without buckets"),
    ],
)
def test_bad_masks_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Mask(**kwargs)


def test_bad_mask_types() -> None:
    with pytest.raises(TypeError, match="causal must be a bool"):
        Mask(causal=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="window must be an int"):
        Mask(window=2.5)  # type: ignore[arg-type]


def test_document_lengths_must_sum() -> None:
    with pytest.raises(ValueError, match=r"sum to 5 but there are T=6"):
        Mask.document([2, 3]).validate(6, 6)
    with pytest.raises(ValueError, match=r"kv_documents .* sum to 4 but there are S=5"):
        Mask.document([2, 3], kv_lengths=[2, 2]).validate(5, 5)
    with pytest.raises(ValueError, match=r"drop_k holds index 7 but there are 5 keys"):
        Mask.qk_sparse(drop_k=[7]).validate(5, 5)
    with pytest.raises(ValueError, match=r"buckets has 3 entries but there are T=4"):
        Mask.hash_sparse([0, 1, 0]).validate(4, 4)
    with pytest.raises(ValueError, match=r"buckets \(pass kv_buckets when S != T\) has 3"):
        Mask.hash_sparse([0, 1, 0]).validate(3, 5)


def test_as_mask() -> None:
    assert as_mask(None) == Mask()
    assert as_mask(None, causal=True) == Mask(causal=True)
    assert as_mask("causal") == Mask(causal=True)
    with pytest.raises(ValueError, match="'sliding' is not a mask"):
        as_mask("sliding")
    with pytest.raises(TypeError, match="mask must be"):
        as_mask(3)  # type: ignore[arg-type]
