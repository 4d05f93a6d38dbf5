"""attnzoo inside Hugging Face transformers models (needs ``pip install 'attnzoo[hf]'``).

Two ways in:

1. **Attention functions.** Importing this package registers ``attnzoo_softmax`` (exact softmax,
   :mod:`attnzoo.ops.softmax`) and ``attnzoo_sigmoid`` (:mod:`attnzoo.ops.sigmoid`) with
   ``transformers.AttentionInterface``, and their mask function with ``AttentionMaskInterface``::

       import attnzoo.hf
       model = AutoModelForCausalLM.from_config(cfg, attn_implementation="attnzoo_softmax")

   The model keeps its projections, positions and KV cache; only the attention op changes
   (:mod:`attnzoo.hf.attention`). Masks map onto :class:`attnzoo.Mask` (:mod:`attnzoo.hf.masks`).

2. **Module swap.** :func:`replace_attention` replaces every self-attention layer with a wrapper
   around any registered token mixer, streaming generation through the mixer's state
   (:mod:`attnzoo.hf.swap`, :mod:`attnzoo.hf.cache`)::

       attnzoo.hf.replace_attention(model, "gla")

``import attnzoo`` never imports transformers; only this package does.
"""

from __future__ import annotations

from attnzoo.extras import require

require("hf", "attnzoo.hf (Hugging Face transformers integration)")

# ruff: noqa: E402  (the extra is checked before its packages are imported)
try:
    from transformers import AttentionInterface
    from transformers.cache_utils import CacheLayerMixin  # noqa: F401
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: F401
except ImportError as e:  # installed, but older than the API used here
    import transformers

    raise ImportError(
        f"attnzoo.hf needs transformers 5 (AttentionInterface, AttentionMaskInterface, cache "
        f"layers), found {transformers.__version__} ({e}): pip install -U 'attnzoo[hf]'"
    ) from e

from attnzoo.hf.attention import (
    SIGMOID,
    SOFTMAX,
    attnzoo_sigmoid_attention,
    attnzoo_softmax_attention,
    sigmoid_bias,
    softmax_impl,
)
from attnzoo.hf.cache import MixerStateLayer
from attnzoo.hf.masks import MaskPlan, attnzoo_mask, plan_for
from attnzoo.hf.swap import replace_attention
from attnzoo.hf.wrapper import MixerAttention, MixerLayer, MixerSelfAttention

ATTENTION_FUNCTIONS = {SOFTMAX: attnzoo_softmax_attention, SIGMOID: attnzoo_sigmoid_attention}

for _name, _fn in ATTENTION_FUNCTIONS.items():
    AttentionInterface.register(_name, _fn)
    AttentionMaskInterface.register(_name, attnzoo_mask)

__all__ = [
    "ATTENTION_FUNCTIONS",
    "MaskPlan",
    "MixerAttention",
    "MixerLayer",
    "MixerSelfAttention",
    "MixerStateLayer",
    "attnzoo_mask",
    "attnzoo_sigmoid_attention",
    "attnzoo_softmax_attention",
    "plan_for",
    "replace_attention",
    "sigmoid_bias",
    "softmax_impl",
]
