"""``replace_attention``: swap a transformers model's self-attention for an attnzoo token mixer.

Every self-attention module is found by its structure, not its class name:

- Llama-like: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` and
  ``forward(hidden_states, position_embeddings, attention_mask, past_key_values, ...)``;
- BERT-like: ``query``, ``key``, ``value`` and
  ``forward(hidden_states, attention_mask, past_key_values, ...)``.

Each is replaced in place by a :class:`~attnzoo.hf.wrapper.MixerLayer` around
``attnzoo.build_mixer(name, d_model=config.hidden_size, causal=<decoder?>, ...)``, sized from the
model (``num_heads``, ``num_kv_heads``, ``head_dim``, the sliding ``window`` of sliding layers,
``layer_idx``/``num_layers``, ``context_len``; each only if the mixer's config has that field
and the caller did not pass it). The mixer takes the replaced module's device and dtype.

Refused before anything is replaced (``ValueError`` naming the mixer, the model and why): a mixer
that is not a ``tokens`` token mixer, a model with cross-attention layers, a model whose pattern
(causal for decoders, noncausal for encoders) the mixer lacks, a model without a recognised
self-attention layer. Calls refuse what the mixer cannot do (see :mod:`attnzoo.hf.wrapper`).

Training a swapped model: add :func:`attnzoo.mixers.base.auxiliary_loss` of the model (``None``
when no mixer has one) to the task loss. Some mixers train part of themselves only through it
(sparsifiner's connectivity predictor; routing's centroids move when it is backpropagated).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from attnzoo.hf.wrapper import WRAPPERS, MixerLayer
from attnzoo.registry import build_mixer, get_spec

LLAMA = (("q_proj", "k_proj", "v_proj", "o_proj"),
         ("hidden_states", "position_embeddings", "attention_mask", "past_key_values"))  # fmt: skip
BERT = (("query", "key", "value"), ("hidden_states", "attention_mask", "past_key_values"))

# mixer config field -> its value from (model config, replaced module, layer index), or None
SIZING: dict[str, Callable[[Any, nn.Module, int], Any]] = {
    "num_heads": lambda c, m, i: getattr(c, "num_attention_heads", None),
    "num_kv_heads": lambda c, m, i: getattr(c, "num_key_value_heads", None),
    "head_dim": lambda c, m, i: (
        getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
    ),
    "window": lambda c, m, i: getattr(c, "sliding_window", None) if _sliding(c, i) else None,
    "layer_idx": lambda c, m, i: i,
    "num_layers": lambda c, m, i: getattr(c, "num_hidden_layers", None),
    "context_len": lambda c, m, i: getattr(c, "max_position_embeddings", None),
}


def replace_attention(model: nn.Module, name: str, **cfg: Any) -> nn.Module:
    """Replace every self-attention layer of ``model`` with the attnzoo mixer ``name``.

    Args:
        model: a transformers model (Llama-like decoder or BERT-like encoder/decoder).
        name: a registered mixer with layout ``tokens`` (``attnzoo.list_mixers(layout="tokens")``).
        **cfg: the mixer's config keys; they override the sizes taken from the model.

    Returns:
        ``model``, modified in place.
    """
    spec = get_spec(name)
    config = getattr(model, "config", None)
    model_name = type(model).__name__
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(hidden, int):
        raise ValueError(
            f"replace_attention({name!r}): {model_name} has no config.hidden_size (got "
            f"{hidden!r}); expected a transformers model"
        )
    if spec.layout != "tokens" or spec.role != "mixer":
        raise ValueError(
            f"replace_attention({name!r}): {name!r} is a {spec.layout} {spec.role} block; only "
            f"token mixers ([B, T, D] -> [B, T, D], layout 'tokens', role 'mixer') can replace "
            f"the attention of {model_name}"
        )
    targets = _targets(model, name, model_name)
    fields = {f.name for f in dataclasses.fields(spec.config)}
    built: list[tuple[str, MixerLayer]] = []
    for order, (path, module, style) in enumerate(targets):
        causal = _causal(module, config)
        pattern = "causal-self" if causal else "noncausal-self"
        if pattern not in spec.patterns:
            role = "a decoder (causal)" if causal else "an encoder (bidirectional)"
            raise ValueError(
                f"replace_attention({name!r}): {model_name} is {role} and needs pattern "
                f"{pattern!r}, which {name!r} lacks; it supports {', '.join(spec.patterns)}"
            )
        layer_idx = getattr(module, "layer_idx", None)
        layer_idx = order if layer_idx is None else int(layer_idx)
        sizes = {k: v for k, f in SIZING.items() if k in fields and k not in cfg
                 and (v := f(config, module, layer_idx)) is not None}  # fmt: skip
        try:
            mixer = build_mixer(name, d_model=hidden, causal=causal, **sizes, **cfg)
        except ValueError as e:
            raise ValueError(
                f"replace_attention({name!r}) on {model_name} layer {layer_idx} ({path}) with "
                f"sizes {sizes}: {e}"
            ) from e
        ref = next(module.parameters(), None)
        if ref is not None:
            mixer = mixer.to(device=ref.device, dtype=ref.dtype)
        replaced = getattr(module, "replaced", type(module).__name__)
        wrapper = WRAPPERS[style](mixer, layer_idx=layer_idx, model_name=model_name,
                                  replaced=replaced, config=config)  # fmt: skip
        built.append((path, wrapper))
    for path, wrapper in built:
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, wrapper)
    return model


def _targets(model: nn.Module, name: str, model_name: str) -> list[tuple[str, nn.Module, str]]:
    """``(path, module, style)`` of every self-attention layer; raises on cross-attention."""
    out = []
    for path, module in model.named_modules():
        style = _style(module)
        if style == "cross":
            raise ValueError(
                f"replace_attention({name!r}): {model_name} has the cross-attention layer "
                f"{path!r} ({type(module).__name__}); replace_attention swaps self-attention only "
                "and will not leave a model half attnzoo, half cross-attention"
            )
        if style in WRAPPERS:
            out.append((path, module, style))
    if not out:
        raise ValueError(
            f"replace_attention({name!r}): found no self-attention layer in {model_name}; "
            "expected Llama-like modules (q_proj, k_proj, v_proj, o_proj) or BERT-like ones "
            "(query, key, value)"
        )
    return out


def _style(module: nn.Module) -> str | None:
    """``"llama"``, ``"bert"``, ``"cross"`` or ``None`` (not an attention layer)."""
    if isinstance(module, MixerLayer):
        return module.style
    cls = type(module).__name__
    if "cross" in cls.lower() or getattr(module, "is_cross_attention", False) is True:
        return "cross" if cls.lower().endswith("attention") else None
    for style, (attrs, params) in (("llama", LLAMA), ("bert", BERT)):
        if all(isinstance(getattr(module, a, None), nn.Linear) for a in attrs):
            names = list(inspect.signature(type(module).forward).parameters)[1 : len(params) + 1]
            if tuple(names) == params:
                return style
    return None


def _causal(module: nn.Module, config: Any) -> bool:
    """A layer is causal when the module says so (``is_causal``; BERT sets it from
    ``config.is_decoder``) and the config has not turned causality off (``config.is_causal``)."""
    own = getattr(module, "is_causal", None)
    if own is None:
        own = bool(getattr(config, "is_decoder", False))
    return bool(own) and bool(getattr(config, "is_causal", True))


def _sliding(config: Any, layer_idx: int) -> bool:
    types = getattr(config, "layer_types", None)
    if types is not None and layer_idx < len(types):
        return types[layer_idx] == "sliding_attention"
    return getattr(config, "sliding_window", None) is not None
