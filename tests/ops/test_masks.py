"""Mask semantics: every kind checked against a per-pair definition written independently."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.masks import Mask, as_mask


def brute(mask: Mask, T: int, S: int) -> torch.Tensor:
    """Per-pair definition, written loop by loop from the module docstring."""
    q_docs = mask.documents or (T,)
    k_docs = mask.kv_documents or mask.documents or (S,)
    out = torch.zeros(T, S, dtype=torch.bool)
    qs = ks = 0
    for tq, sk in zip(q_docs, k_docs, strict=True):
        for i in range(tq):
            p = i + sk - tq
            for j in range(sk):
                ok = True
                if mask.causal:
                    if mask.block is not None:
                        ok = p >= 0 and j // mask.block <= p // mask.block
                    elif mask.prefix is not None:
                        ok = j <= p or j < mask.prefix
                    else:
                        ok = j <= p
                if mask.window is not None:
                    ok = ok and j > p - mask.window
                    if not mask.causal:
                        ok = ok and j < p + mask.window
                out[qs + i, ks + j] = ok
        qs += tq
        ks += sk
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
    Mask.block_causal(3),
]


CASES = [(m, 10, 10) for m in MASKS] + [
    (m, T, S) for m in MASKS if m.documents is None for T, S in [(1, 1), (4, 9), (9, 4)]
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


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": 0}, "window must be >= 1"),
        ({"prefix": 2}, "prefix .* requires causal"),
        ({"block": 2}, "block .* requires causal"),
        ({"causal": True, "prefix": 2, "window": 2}, "cannot be combined"),
        ({"documents": (2, -1)}, "documents lengths must be >= 0"),
        ({"documents": (2,), "kv_documents": (1, 1)}, "pair up"),
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


def test_as_mask() -> None:
    assert as_mask(None) == Mask()
    assert as_mask(None, causal=True) == Mask(causal=True)
    assert as_mask("causal") == Mask(causal=True)
    with pytest.raises(ValueError, match="'sliding' is not a mask"):
        as_mask("sliding")
    with pytest.raises(TypeError, match="mask must be"):
        as_mask(3)  # type: ignore[arg-type]
