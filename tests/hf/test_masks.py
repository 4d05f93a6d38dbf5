"""transformers masks -> attnzoo.Mask plans: the structured masks they become, and what cannot be
expressed raising a clear error."""

from __future__ import annotations

import pytest
import torch

from attnzoo import Mask
from attnzoo.hf import attnzoo_mask, plan_for
from tests.hf import tiny


def _plan(allowed: torch.Tensor, causal: bool = True, **kw: object):
    B, T, S = allowed.shape
    return plan_for(allowed[:, None], batch=B, T=T, S=S, causal=causal, **kw)


def _causal(T: int, S: int) -> torch.Tensor:
    return torch.ones(T, S, dtype=torch.bool).tril(S - T)


def test_structured_masks_are_recovered() -> None:
    T = 8
    causal = _causal(T, T)
    assert _plan(causal[None]).masks == (Mask(causal=True),)
    assert _plan(torch.ones(1, T, T, dtype=torch.bool), causal=False).masks == (Mask(),)
    # a KV cache of 5 keys: bottom-right causal
    assert _plan(_causal(3, 8)[None]).masks == (Mask(causal=True),)
    # sliding window of 3 keys
    win = causal & ~_causal(T, T).tril(-3)
    assert _plan(win[None]).masks == (Mask(causal=True, window=3),)
    # packed documents 3 + 5
    docs = Mask.document([3, 5], causal=True)
    assert _plan(docs.dense(T, T)[None]).masks == (docs,)


def test_padding_becomes_documents_and_samples_are_grouped() -> None:
    am = tiny.padding(3, 6, left={0: 2}, right={})
    mask = attnzoo_mask(3, 6, 6, attention_mask=am.bool())
    plan = plan_for(mask, batch=3, T=6, S=6, causal=True)
    assert plan.padded and len(plan.groups) == 2
    left = next(m for idx, m in plan.groups if idx is not None and idx.tolist() == [0])
    assert left.kinds == ("causal", "document")
    # the plan is cached on the mask: computed once per forward, not per layer
    assert plan_for(mask, batch=3, T=6, S=6, causal=True) is plan
    # decoding with left padding: the pad keys are a document no query sees
    step = attnzoo_mask(
        1, 1, 7, q_offset=6, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1]]).bool()
    )
    (m,) = plan_for(step, batch=1, T=1, S=7, causal=True).masks
    assert m.dense(1, 7).tolist() == [[False, False, True, True, True, True, True]]


def test_float_masks_are_read() -> None:
    causal = _causal(4, 4)[None, None]
    additive = torch.zeros(1, 1, 4, 4).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert plan_for(additive, batch=2, T=4, S=4, causal=True).masks == (Mask(causal=True),)
    with pytest.raises(ValueError, match="additive float mask with biases other than 0 and -inf"):
        plan_for(additive - 0.5 * causal, batch=2, T=4, S=4, causal=True)


def test_masks_that_cannot_be_expressed_raise() -> None:
    hole = _causal(5, 5)
    hole[4, 2] = False  # a key hidden in the middle of a row
    with pytest.raises(ValueError, match=r"query 4 of sample 0 attends the non-contiguous keys"):
        _plan(hole[None])
    # contiguous rows in no pattern attnzoo.Mask describes: each query sees the keys after it
    anti = torch.ones(5, 5, dtype=torch.bool).triu()
    with pytest.raises(ValueError, match=r"fit no combination attnzoo.Mask describes.*Supported"):
        _plan(anti[None], causal=False)
    heads = torch.stack([_causal(4, 4), torch.ones(4, 4, dtype=torch.bool)])[None]
    with pytest.raises(ValueError, match="differs between its 2 heads"):
        plan_for(heads, batch=1, T=4, S=4, causal=True)
    with pytest.raises(ValueError, match=r"must be \[B, 1, T, S\] = \[1, 1, 4, 4\]"):
        plan_for(torch.ones(1, 4, dtype=torch.bool), batch=1, T=4, S=4, causal=True)
    with pytest.raises(ValueError, match="ambiguous"):
        plan_for(None, batch=1, T=3, S=5, causal=True)


def test_right_padding_inside_generation_raises_in_a_model() -> None:
    """Right-padded prompts put padding in the middle of the sequence once tokens are generated:
    the keys a query sees are no longer contiguous."""
    model = tiny.causal_lm(tiny.llama_config(), "attnzoo_softmax")
    x, am = tiny.ids(2, 6), tiny.padding(2, 6, left={}, right={1: 2})
    with pytest.raises(ValueError, match="non-contiguous keys"):
        model.generate(x, attention_mask=am, max_new_tokens=2, do_sample=False)
