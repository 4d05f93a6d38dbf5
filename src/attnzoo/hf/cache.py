"""A mixer's streaming state inside a transformers ``Cache``.

transformers' generation keeps one ``Cache`` (``DynamicCache`` by default) and asks it how many
tokens were seen (``get_seq_length``: positions, which input ids are new), how big the next mask
is (``get_mask_sizes``) and to reorder, repeat or select batch rows (beam search,
``num_return_sequences``). A swapped layer (:mod:`attnzoo.hf.swap`) therefore puts a
:class:`MixerStateLayer` in place of the cache's own layer at its ``layer_idx``, so all of that
keeps working on the mixer's state instead of keys and values. Any ``Cache`` with a ``layers``
list works (``EncoderDecoderCache``: its self-attention cache).

**Prefill is lazy.** The prompt's output comes from the mixer's parallel ``forward`` (exact and
differentiable); the prompt's inputs are kept (detached) and only folded into the state with
``step`` when a later call continues the sequence. attnzoo's mixers expose no "forward that also
returns the final state", so this stepping is the one way to build it; keeping it lazy means a
training forward with ``use_cache=True`` (the Llama default) never pays for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin, EncoderDecoderCache

from attnzoo.mixers.base import Mixer


class MixerStateLayer(CacheLayerMixin):
    """One layer's mixer state: ``seen`` tokens so far, the mixer's ``state`` and the ``pending``
    inputs ``[B, t, D]`` not folded into it yet. ``blocked`` says why the sequence cannot be
    continued (a padded prompt), or is ``None``."""

    is_sliding = False
    is_croppable = False
    is_compileable = False
    supports_early_init = False

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.state: Any = None
        self.pending: Tensor | None = None
        self.blocked: str | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.is_initialized = True

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        raise TypeError(
            "MixerStateLayer holds an attnzoo mixer's streaming state, not keys and values; "
            "this cache layer belongs to a layer swapped by attnzoo.hf.replace_attention"
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.seen, self.state, self.pending, self.blocked = 0, None, None, None
        self.is_initialized = False

    def offload(self) -> None:  # the state is small (or a KV cache the mixer owns): kept
        pass

    def prefetch(self) -> None:
        pass

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError(
                f"MixerStateLayer cannot crop {tokens_to_remove} tokens: a mixer's streaming "
                "state cannot be rolled back (assisted / speculative decoding is unsupported)"
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices])

    def _map(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Apply ``fn`` to the batch axis of the pending inputs and every tensor of the state
        (attnzoo states are dataclasses whose tensors are batch first)."""
        if self.pending is not None:
            self.pending = fn(self.pending)
        if self.state is not None:
            fields = dataclasses.fields(self.state)
            new = {
                f.name: fn(v)
                for f in fields
                if isinstance(v := getattr(self.state, f.name), Tensor)
            }
            self.state = dataclasses.replace(self.state, **new)

    # ---- used by the swapped layer ---------------------------------------------------------------
    def prefill(self, x: Tensor, blocked: str | None) -> None:
        """Record a first call's inputs ``x [B, T, D]`` (folded into the state on demand)."""
        self.pending = x.detach()
        self.seen = x.shape[1]
        self.blocked = blocked
        self.is_initialized = True

    def advance(self, mixer: Mixer, x: Tensor) -> Tensor:
        """Stream ``x [B, T, D]`` through ``mixer.step`` after the tokens seen so far.

        Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        if self.state is None:
            self.state = mixer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        if self.pending is not None:
            with torch.no_grad():
                for t in range(self.pending.shape[1]):
                    _, self.state = mixer.step(self.pending[:, t], self.state)
            self.pending = None
        outs = []
        for t in range(x.shape[1]):
            y, self.state = mixer.step(x[:, t], self.state)
            outs.append(y)
        self.seen += x.shape[1]
        return torch.stack(outs, dim=1)


def state_layer(cache: Cache, layer_idx: int) -> MixerStateLayer:
    """The :class:`MixerStateLayer` of ``layer_idx`` in ``cache``, put in place of the cache's
    own (empty) layer on first use."""
    if isinstance(cache, EncoderDecoderCache):
        cache = cache.self_attention_cache
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, Cache) or not isinstance(layers, list):
        raise TypeError(
            f"past_key_values must be a transformers Cache with per-layer entries (DynamicCache), "
            f"got {type(cache).__name__}"
        )
    if cache.layer_class_to_replicate is not None:
        while len(layers) <= layer_idx:
            layers.append(cache.layer_class_to_replicate())
    if layer_idx >= len(layers):
        raise ValueError(
            f"past_key_values has {len(layers)} layers, but layer_idx={layer_idx} needs one"
        )
    layer = layers[layer_idx]
    if isinstance(layer, MixerStateLayer):
        return layer
    if isinstance(layer, CacheLayerMixin) and layer.get_seq_length() > 0:
        raise ValueError(
            f"past_key_values layer {layer_idx} already holds {layer.get_seq_length()} tokens of "
            "keys and values (a cache from the model before replace_attention?); pass a new cache"
        )
    layers[layer_idx] = MixerStateLayer()
    return layers[layer_idx]
