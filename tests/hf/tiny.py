"""Tiny random transformers models for the attnzoo.hf tests (built here: no download, no hub)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
)

import attnzoo.hf  # noqa: F401  (registers the attnzoo attention implementations)

VOCAB = 64
PAD = 0
# weights large enough that attention is far from uniform: a 1% error in the scale shows
INIT = 0.3


def llama_config(kv_heads: int = 2, **kw: Any) -> LlamaConfig:
    """2 layers, width 32, 4 query heads and ``kv_heads`` key/value heads (GQA when < 4)."""
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        initializer_range=INIT,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaConfig(**{**base, **kw})


def mistral_config(window: int) -> MistralConfig:
    return MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=INIT,
        sliding_window=window,
        pad_token_id=PAD,
    )


def bert_config(**kw: Any) -> BertConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=INIT,
        pad_token_id=PAD,
    )
    return BertConfig(**{**base, **kw})


def causal_lm(config: PretrainedConfig, impl: str = "eager", seed: int = 0) -> PreTrainedModel:
    """A seeded causal LM in eval mode, with its own copy of ``config`` (``from_config`` writes
    the attention implementation into the config it is given)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=impl).eval()


def bert(config: BertConfig, impl: str = "eager", seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel._from_config(copy.deepcopy(config), attn_implementation=impl).eval()


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def padding(batch: int, length: int, left: dict[int, int], right: dict[int, int]) -> torch.Tensor:
    """A 2-D attention mask: sample ``b`` has ``left[b]`` padding tokens first, ``right[b]``
    last."""
    m = torch.ones(batch, length, dtype=torch.long)
    for b, n in left.items():
        m[b, :n] = 0
    for b, n in right.items():
        m[b, length - n :] = 0
    return m
