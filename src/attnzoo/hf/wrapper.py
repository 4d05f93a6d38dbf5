"""The modules :func:`attnzoo.hf.replace_attention` puts in place of self-attention layers.

Each wraps one attnzoo token mixer (``[B, T, D] -> [B, T, D]``) and keeps the call signature and
return tuple of the module it replaces, as transformers 5's layers call them:

- :class:`MixerAttention` for Llama-like attention (``LlamaAttention``, Mistral, Qwen2, ...):
  ``forward(hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
  **kwargs) -> (out, None)``;
- :class:`MixerSelfAttention` for BERT-like self-attention (``BertSelfAttention``, RoBERTa, ...):
  ``forward(hidden_states, attention_mask=None, past_key_values=None, **kwargs) -> (out, None)``.
  ``BertSelfOutput`` (dense, dropout, residual LayerNorm) stays after it.

The mixer brings its own projections and positional handling: rotary ``position_embeddings`` and
``position_ids`` are not used. The model's mask becomes a :class:`~attnzoo.hf.masks.MaskPlan`; its
masks must be of kinds the mixer declares (``spec.masks``).

With a ``past_key_values`` cache the layer keeps the mixer's state in a
:class:`~attnzoo.hf.cache.MixerStateLayer`: the first call runs ``forward`` (the prompt), later
calls continue with ``step`` one token at a time. Refused with ``ValueError``: continuing from a
cache with a stateless mixer (``spec.state == "none"``), continuing after a padded or packed prompt
or with padding (``step`` has no mask), ``output_attentions`` and cross-attention calls.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from attnzoo.hf.cache import state_layer
from attnzoo.hf.masks import MaskPlan, plan_for
from attnzoo.mixers.base import Mixer
from attnzoo.ops.masks import Mask

# MixerStateLayer.blocked of a stateless mixer: it kept nothing to continue from
STATELESS = "stateless mixer"


class MixerLayer(nn.Module):
    """Base of the wrappers: the mixer, where it sits, and the call logic (:meth:`mix`)."""

    style = ""  # the call signature replaced: "llama" or "bert"

    def __init__(self, mixer: Mixer, *, layer_idx: int, model_name: str, replaced: str,
                 config: Any) -> None:  # fmt: skip
        super().__init__()
        self.mixer = mixer
        self.layer_idx = layer_idx
        self.is_causal = bool(mixer.cfg.causal)
        self.model_name = model_name
        self.replaced = replaced
        self.config = config

    def where(self) -> str:
        return (
            f"mixer {self.mixer.spec.name!r} (replacing {self.replaced} of layer "
            f"{self.layer_idx} in {self.model_name})"
        )

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, replaced={self.replaced}"

    def mix(self, x: Tensor, attention_mask: Any, cache: Any, kwargs: dict[str, Any]) -> Tensor:
        """The mixer on ``x`` under the model's mask, streaming through ``cache`` if given.

        Shapes: x ``[B, T, D]``, attention_mask ``[B, 1, T, S]`` or ``None`` -> ``[B, T, D]``."""
        self._refuse(kwargs)
        B, T, _ = x.shape
        layer = None if cache is None else state_layer(cache, self.layer_idx)
        seen = 0 if layer is None else layer.seen
        plan = plan_for(attention_mask, batch=B, T=T, S=seen + T, causal=self.is_causal)
        self._check(plan)
        if layer is None:
            return self._forward(plan, x)
        if seen == 0:
            y = self._forward(plan, x)
            if self.mixer.spec.state == "none":
                layer.seen, layer.blocked = T, STATELESS
            else:
                layer.prefill(x, self._blocked(plan))
            return y
        if layer.blocked == STATELESS:
            raise ValueError(
                f"{self.where()} has no streaming state (spec.state='none'), so it cannot continue "
                "a sequence from a KV cache: generation with use_cache=True is not supported; use "
                "generate(..., use_cache=False) or a mixer whose state is 'constant' or 'growing'"
            )
        if not self.is_causal:
            raise ValueError(f"{self.where()} is bidirectional and cannot continue a sequence")
        blocked = layer.blocked or self._blocked(plan)
        if blocked:
            raise ValueError(
                f"{self.where()} cannot continue this sequence from the cache: {blocked}; "
                "step() streams one unpadded causal sequence per sample. Generate from unpadded "
                "prompts (e.g. one at a time), with use_cache=False, or use "
                "attn_implementation='attnzoo_softmax' for padded batches"
            )
        return layer.advance(self.mixer, x)

    def _refuse(self, kwargs: dict[str, Any]) -> None:
        if kwargs.get("output_attentions") or getattr(self.config, "output_attentions", False):
            raise ValueError(
                f"{self.where()}: output_attentions=True is not supported (a mixer returns no "
                "per-layer attention weights here; see Mixer.attention_maps)"
            )
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError(f"{self.where()}: cross-attention (encoder_hidden_states) is refused")

    def _check(self, plan: MaskPlan) -> None:
        spec = self.mixer.spec
        for m in plan.masks:
            if m.causal != self.is_causal:
                raise ValueError(
                    f"{self.where()}: the model's attention mask is "
                    f"{'causal' if m.causal else 'bidirectional'}, but the mixer was built "
                    f"causal={self.is_causal}"
                )
            bad = [k for k in m.kinds if k not in spec.masks]
            if bad:
                raise ValueError(
                    f"{self.where()}: the attention mask needs mask kind(s) {bad} "
                    f"({_why(bad)}), but {spec.name!r} supports only {', '.join(spec.masks)}"
                )

    def _default(self) -> Mask:
        own = getattr(self.mixer.cfg, "mask", None)
        return own() if callable(own) else Mask(causal=self.is_causal)

    def _forward(self, plan: MaskPlan, x: Tensor) -> Tensor:
        default = self._default()

        def call(x_: Tensor, m: Mask) -> Tensor:
            # the mixer's own mask (config window included) unless the model asks for another
            return self.mixer(x_, mask=None if m == default else m)

        return plan.run(call, x)

    def _blocked(self, plan: MaskPlan) -> str | None:
        if plan.padded:
            return "the batch has padding tokens"
        # what step() streams: the plain causal mask, or the mixer's own (a sliding window)
        odd = [m.name for m in plan.masks if m not in (Mask(causal=True), self._default())]
        return f"the attention mask is {odd[0]!r}, not plain causal" if odd else None


class MixerAttention(MixerLayer):
    """Stands in for a Llama-like attention module (same forward signature and return tuple)."""

    style = "llama"

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        """Shapes: hidden_states ``[B, T, D]`` -> ``([B, T, D], None)``."""
        return self.mix(hidden_states, attention_mask, past_key_values, kwargs), None


class MixerSelfAttention(MixerLayer):
    """Stands in for a BERT-like self-attention module (``BertSelfAttention``)."""

    style = "bert"

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        """Shapes: hidden_states ``[B, T, D]`` -> ``([B, T, D], None)``."""
        return self.mix(hidden_states, attention_mask, past_key_values, kwargs), None


WRAPPERS: dict[str, type[MixerLayer]] = {"llama": MixerAttention, "bert": MixerSelfAttention}


def _why(kinds: list[str]) -> str:
    what = {
        "document": "padding or packed sequences",
        "sliding-window": "the model's sliding window",
        "causal": "a causal model",
    }
    return "; ".join(f"{k}: {what.get(k, k)}" for k in kinds)
