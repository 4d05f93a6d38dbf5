"""replace_attention: swapped models train, generate through the mixers' streaming state, and
refuse by name what a mixer cannot do."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from transformers import BertLMHeadModel

import attnzoo as az
from attnzoo.hf import MixerLayer, MixerStateLayer, replace_attention
from attnzoo.mixers.base import auxiliary_loss
from attnzoo.registry import unregister_mixer
from tests.hf import tiny

STREAMING = [
    s.name for s in az.list_mixers(layout="tokens", pattern="causal-self") if s.state != "none"
]


@pytest.mark.parametrize("name", ["gla", "linear", "softmax"])
def test_swapped_llama_trains_one_step(name: str) -> None:
    model = replace_attention(tiny.causal_lm(tiny.llama_config()), name).train()
    mixers = [m.mixer for m in model.modules() if isinstance(m, MixerLayer)]
    assert len(mixers) == 2 and all(m.spec.name == name for m in mixers)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = tiny.ids(2, 12)
    loss = model(x, labels=x).loss
    assert torch.isfinite(loss)
    loss.backward()
    for mixer in mixers:
        grads = [p.grad for p in mixer.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    opt.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)


@pytest.mark.parametrize("name", STREAMING)
def test_generation_with_the_cache_equals_without(name: str) -> None:
    model = replace_attention(tiny.causal_lm(tiny.llama_config()), name)
    x = tiny.ids(2, 6)
    g = dict(max_new_tokens=5, do_sample=False, pad_token_id=tiny.PAD)
    with torch.no_grad():
        cached = model.generate(x, use_cache=True, **g)
        assert torch.equal(cached, model.generate(x, use_cache=False, **g))
        # the next token's logits from the streamed state equal a full forward's
        out = model(x, use_cache=True)
        layer = out.past_key_values.layers[0]
        assert isinstance(layer, MixerStateLayer) and layer.get_seq_length() == 6
        nxt = tiny.ids(2, 1, seed=7)
        step = model(nxt, past_key_values=out.past_key_values).logits[:, -1]
        full = model(torch.cat([x, nxt], 1), use_cache=False).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name", [s.name for s in az.list_mixers(layout="tokens", pattern="noncausal-self")]
)
def test_every_bidirectional_token_mixer_replaces_bert(name: str) -> None:
    model = replace_attention(tiny.bert(tiny.bert_config()), name)
    out = model(tiny.ids(2, 6)).last_hidden_state
    assert out.shape == (2, 6, 32) and torch.isfinite(out).all()
    aux = auxiliary_loss(model)  # sparsifiner's predictor trains only through its own loss
    (out.sum() if aux is None else out.sum() + aux).backward()
    layer = model.encoder.layer[0].attention.self
    assert isinstance(layer, MixerLayer) and not layer.mixer.cfg.causal
    assert all(p.grad is not None for p in layer.mixer.parameters())


def test_swapped_bert_handles_padding_per_sample() -> None:
    model = replace_attention(tiny.bert(tiny.bert_config()), "softmax")
    x, am = tiny.ids(2, 7), tiny.padding(2, 7, left={}, right={1: 3})
    with torch.no_grad():
        padded = model(x, attention_mask=am).last_hidden_state
        alone = model(x[1:, :4]).last_hidden_state
    torch.testing.assert_close(padded[1:, :4], alone, rtol=1e-5, atol=1e-5)


def test_beam_search_reorders_the_mixer_state() -> None:
    model = replace_attention(tiny.causal_lm(tiny.llama_config()), "gla")
    g = dict(max_new_tokens=4, do_sample=False, num_beams=2, pad_token_id=tiny.PAD)
    x = tiny.ids(2, 5)
    with torch.no_grad():
        assert torch.equal(model.generate(x, **g), model.generate(x, use_cache=False, **g))


# ---- refusals ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _PrefixMeanConfig(az.MixerConfig):
    """Attributes: (only d_model and causal)."""


class _PrefixMean(az.Mixer):
    """A stateless causal mixer: the running mean of the tokens so far, projected."""

    def __init__(self, cfg: _PrefixMeanConfig) -> None:
        super().__init__(cfg)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
        return self.proj(x.cumsum(1) / n)


@pytest.fixture
def stateless() -> Iterator[str]:
    name = "test_prefix_mean"
    az.register_mixer(name, config=_PrefixMeanConfig, family="other", patterns=("causal-self",),
                      complexity="O(T·D)", paper=az.Paper("-", 2026, "-"), peer="-",
                      flops=lambda *a: 0)(_PrefixMean)  # fmt: skip
    yield name
    unregister_mixer(name)


def test_stateless_mixer_refuses_the_cache(stateless: str) -> None:
    model = replace_attention(tiny.causal_lm(tiny.llama_config()), stateless)
    x = tiny.ids(2, 5)
    g = dict(max_new_tokens=3, do_sample=False, pad_token_id=tiny.PAD)
    assert model.generate(x, use_cache=False, **g).shape == (2, 8)
    with pytest.raises(ValueError, match=r"'test_prefix_mean' .*no streaming state .*use_cache"):
        model.generate(x, use_cache=True, **g)


def test_cross_attention_is_refused() -> None:
    model = tiny.bert(tiny.bert_config(is_decoder=True, add_cross_attention=True))
    with pytest.raises(ValueError, match=r"replace_attention\('softmax'\): BertModel .*cross-att"):
        replace_attention(model, "softmax")


def test_missing_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'aaren'.*BertModel is an encoder .*'noncausal-self'"):
        replace_attention(tiny.bert(tiny.bert_config()), "aaren")


def test_undeclared_mask_kinds_are_refused() -> None:
    model = replace_attention(tiny.causal_lm(tiny.llama_config()), "gla")
    x, am = tiny.ids(2, 6), tiny.padding(2, 6, left={0: 2}, right={})
    with pytest.raises(ValueError, match=r"'gla' .*LlamaForCausalLM.*\['document'\].*only full"):
        model(x, attention_mask=am)
    # right padding leaves the real tokens' causal mask plain: a causal mixer needs no mask
    am = tiny.padding(2, 6, left={}, right={1: 2})
    with torch.no_grad():
        padded = model(x, attention_mask=am, use_cache=False).logits
        alone = model(x[1:, :4], use_cache=False).logits
    torch.testing.assert_close(padded[1:, :4], alone, rtol=1e-5, atol=1e-5)


def test_padded_generation_is_refused() -> None:
    model = replace_attention(tiny.causal_lm(tiny.llama_config()), "softmax")
    x, am = tiny.ids(2, 6), tiny.padding(2, 6, left={0: 2}, right={})
    with pytest.raises(ValueError, match=r"'softmax' .*cannot continue .*padding"):
        model.generate(x, attention_mask=am, max_new_tokens=2, pad_token_id=tiny.PAD)


def test_output_attentions_is_refused() -> None:
    model = replace_attention(tiny.causal_lm(tiny.llama_config()), "linear")
    with pytest.raises(
        ValueError, match=r"'linear' \(replacing LlamaAttention .*output_attentions"
    ):
        model(tiny.ids(1, 4), output_attentions=True)


def test_non_token_mixers_and_models_without_attention_are_refused() -> None:
    grid = az.list_mixers(layout="grid2d")[0].name
    with pytest.raises(ValueError, match="only token mixers"):
        replace_attention(tiny.causal_lm(tiny.llama_config()), grid)
    model = tiny.causal_lm(tiny.llama_config())
    model.model.layers = nn.ModuleList()
    with pytest.raises(ValueError, match="found no self-attention layer in LlamaForCausalLM"):
        replace_attention(model, "softmax")


def test_sliding_window_model_streams_with_the_mixer_window() -> None:
    model = replace_attention(tiny.causal_lm(tiny.mistral_config(window=3)), "softmax")
    assert {m.mixer.cfg.window for m in model.modules() if isinstance(m, MixerLayer)} == {3}
    x = tiny.ids(2, 5)
    g = dict(max_new_tokens=6, do_sample=False, pad_token_id=tiny.PAD)
    with torch.no_grad():
        assert torch.equal(model.generate(x, **g), model.generate(x, use_cache=False, **g))


def test_bert_decoder_streams_through_its_encoder_decoder_cache() -> None:
    torch.manual_seed(0)
    model = BertLMHeadModel(tiny.bert_config(is_decoder=True)).eval()
    replace_attention(model, "gla")
    x = tiny.ids(2, 5)
    g = dict(max_new_tokens=5, do_sample=False, pad_token_id=tiny.PAD)
    with torch.no_grad():
        assert torch.equal(model.generate(x, **g), model.generate(x, use_cache=False, **g))
