"""attnzoo_softmax / attnzoo_sigmoid as transformers attention functions: equal to eager (softmax)
and to a hand-written reference (sigmoid) in tiny random models."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tests.hf import tiny

TOL = dict(rtol=1e-5, atol=1e-5)


def _close_on(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor | None = None) -> None:
    """``a`` and ``b`` ``[B, T, ...]`` agree (fp32, tight) on the real tokens ``real [B, T]``."""
    if real is not None:
        a, b = a[real.bool()], b[real.bool()]
    torch.testing.assert_close(a, b, **TOL)


def test_import_attnzoo_leaves_transformers_alone_and_hf_names_the_extra() -> None:
    code = (
        "import sys, attnzoo\n"
        "assert 'transformers' not in sys.modules, 'import attnzoo imported transformers'\n"
        "sys.modules['transformers'] = None  # as if it were not installed\n"
        "try:\n    import attnzoo.hf\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "pip install 'attnzoo[hf]'" in out.stdout


def test_registered_with_transformers() -> None:
    for name in ("attnzoo_softmax", "attnzoo_sigmoid"):
        assert name in AttentionInterface._global_mapping
        assert name in AttentionMaskInterface._global_mapping
    model = tiny.causal_lm(tiny.llama_config(), "attnzoo_sigmoid")
    assert model.config._attn_implementation == "attnzoo_sigmoid"
    assert model(tiny.ids(2, 5)).logits.shape == (2, 5, tiny.VOCAB)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_llama_softmax_equals_eager(kv_heads: int) -> None:
    config = tiny.llama_config(kv_heads)
    eager, ours = tiny.causal_lm(config), tiny.causal_lm(config, "attnzoo_softmax")
    x = tiny.ids(3, 9)
    with torch.no_grad():
        _close_on(ours(x).logits, eager(x).logits)
        # left padding (sample 0), right padding (sample 1), none (sample 2)
        am = tiny.padding(3, 9, left={0: 3}, right={1: 2})
        _close_on(ours(x, attention_mask=am).logits, eager(x, attention_mask=am).logits, am)
        # packed documents: position_ids restart at 0 (transformers detects it without a cache)
        pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1]]).expand(3, -1)
        a = ours(x, position_ids=pos, use_cache=False).logits
        _close_on(a, eager(x, position_ids=pos, use_cache=False).logits)
        # each document alone gives the same logits: the documents do not see each other
        _close_on(a[:, 4:7], ours(x[:, 4:7], use_cache=False).logits)


def test_sliding_window_equals_eager() -> None:
    config = tiny.mistral_config(window=3)
    eager, ours = tiny.causal_lm(config), tiny.causal_lm(config, "attnzoo_softmax")
    x, am = tiny.ids(2, 10), tiny.padding(2, 10, left={0: 2}, right={})
    with torch.no_grad():
        _close_on(ours(x).logits, eager(x).logits)
        _close_on(ours(x, attention_mask=am).logits, eager(x, attention_mask=am).logits, am)
        # decoding past the window through the KV cache
        g = dict(max_new_tokens=5, do_sample=False, pad_token_id=tiny.PAD)
        assert torch.equal(ours.generate(x, **g), eager.generate(x, **g))


def test_bert_softmax_equals_eager() -> None:
    eager = tiny.bert(tiny.bert_config())
    ours = tiny.bert(tiny.bert_config(), "attnzoo_softmax")
    x = tiny.ids(3, 8)
    am = tiny.padding(3, 8, left={}, right={0: 3, 2: 1})
    with torch.no_grad():
        _close_on(ours(x).last_hidden_state, eager(x).last_hidden_state)
        a = ours(x, attention_mask=am).last_hidden_state
        _close_on(a, eager(x, attention_mask=am).last_hidden_state, am)
        # the padded sample equals itself unpadded
        _close_on(a[:1, :5], ours(x[:1, :5]).last_hidden_state)


def test_left_padded_generation_equals_eager() -> None:
    config = tiny.llama_config()
    eager, ours = tiny.causal_lm(config), tiny.causal_lm(config, "attnzoo_softmax")
    x, am = tiny.ids(3, 7), tiny.padding(3, 7, left={0: 3, 1: 1}, right={})
    g = dict(attention_mask=am, max_new_tokens=5, do_sample=False, pad_token_id=tiny.PAD)
    with torch.no_grad():
        assert torch.equal(ours.generate(x, **g), eager.generate(x, **g))


def test_output_attentions_returns_the_weights() -> None:
    config = tiny.llama_config()
    eager, ours = tiny.causal_lm(config), tiny.causal_lm(config, "attnzoo_softmax")
    x = tiny.ids(2, 6)
    with torch.no_grad():
        a, b = ours(x, output_attentions=True), eager(x, output_attentions=True)
    assert len(a.attentions) == 2
    for wa, wb in zip(a.attentions, b.attentions, strict=True):
        torch.testing.assert_close(wa, wb, **TOL)


def _reference_sigmoid(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """Hand-written: ``sigmoid(q k^T * scale + b) v`` over keys ``j <= i``, with the constant
    ``b = -log(max_position_embeddings)`` (attnzoo's sigmoid bias convention)."""
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)  # [B, H, S, K]
    v = value.repeat_interleave(groups, dim=1)
    b = -math.log(module.config.max_position_embeddings)
    bias = getattr(module.config, "attnzoo_sigmoid_bias", None)
    b = b if bias is None else bias
    s = query @ k.transpose(-1, -2) * scaling + b  # [B, H, T, S]
    T, S = s.shape[-2:]
    causal = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    w = torch.where(causal, torch.sigmoid(s), torch.zeros(()))
    return (w @ v).transpose(1, 2), None


AttentionInterface.register("test_sigmoid_reference", _reference_sigmoid)
AttentionMaskInterface.register("test_sigmoid_reference", sdpa_mask)


@pytest.mark.parametrize("bias", [None, -1.5])
def test_llama_sigmoid_equals_hand_written_reference(bias: float | None) -> None:
    config = tiny.llama_config(2, attnzoo_sigmoid_bias=bias)
    ref = tiny.causal_lm(config, "test_sigmoid_reference")
    ours = tiny.causal_lm(config, "attnzoo_sigmoid")
    x = tiny.ids(2, 9)
    with torch.no_grad():
        _close_on(ours(x).logits, ref(x).logits)
        # the cache: one more token, decoded from the prompt's cache
        out = ours(x[:, :8], use_cache=True)
        step = ours(x[:, 8:], past_key_values=out.past_key_values).logits
        _close_on(step, ref(x).logits[:, 8:])


def test_attention_dropout_is_refused() -> None:
    model = tiny.bert(tiny.bert_config(), "attnzoo_softmax").train()
    with pytest.raises(ValueError, match=r"attnzoo_softmax .*dropout=0.1 is not implemented"):
        model(tiny.ids(2, 5))


def test_softmax_takes_the_blocked_path_where_it_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnzoo import Mask
    from attnzoo.hf import attention, softmax_impl

    cpu = torch.device("cpu")
    assert softmax_impl(Mask(causal=True), 4096, 4096, cpu) == "sdpa"  # fused is_causal kernel
    assert softmax_impl(Mask.sliding_window(64), 512, 512, cpu) == "sdpa"  # too small to win
    assert softmax_impl(Mask.sliding_window(64), 1024, 1024, cpu) == "blocked"
    assert softmax_impl(Mask.document([1000, 24], causal=True), 1024, 1024, cpu) == "sdpa"
    # in a model: two packed documents of 400 and 640 tokens (a quarter of the pairs)
    impls: list[str] = []
    op = attention.softmax_attention

    def spy(*args: object, **kw: object) -> torch.Tensor:
        impls.append(str(kw["impl"]))
        return op(*args, **kw)

    monkeypatch.setattr(attention, "softmax_attention", spy)
    config = tiny.llama_config(max_position_embeddings=1024)
    eager, ours = tiny.causal_lm(config), tiny.causal_lm(config, "attnzoo_softmax")
    x = tiny.ids(1, 1040)
    pos = torch.cat([torch.arange(400), torch.arange(640)])[None]
    with torch.no_grad():
        a = ours(x, position_ids=pos, use_cache=False).logits
        b = eager(x, position_ids=pos, use_cache=False).logits
    # sums over up to 640 keys in another order: 1e-5 is met by all but a few of 66k logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert impls == ["blocked", "blocked"]
