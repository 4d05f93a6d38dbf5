"""attnzoo's attention ops as transformers attention functions.

Registered (see :mod:`attnzoo.hf`) as ``attnzoo_softmax`` and ``attnzoo_sigmoid`` in
``transformers.AttentionInterface``, each with :func:`attnzoo.hf.masks.attnzoo_mask` in
``AttentionMaskInterface``; a model built with ``attn_implementation="attnzoo_softmax"`` calls
them from every attention layer with the signature of transformers' own functions::

    fn(module, query [B, H, T, K], key [B, Hkv, S, K], value [B, Hkv, S, V], attention_mask,
       scaling=None, dropout=0.0, **kwargs) -> (out [B, T, H, V], weights [B, H, T, S] or None)

Grouped-query attention needs no ``repeat_kv``: the ops take ``Hkv`` key heads dividing ``H``.
The mask becomes a :class:`~attnzoo.hf.masks.MaskPlan` (structured masks, one op call per group
of samples sharing a mask). Weights are returned only for ``output_attentions=True``.

Refused with ``ValueError`` (never ignored): attention dropout (``dropout > 0``: the ops have
none; use ``model.eval()`` or a zero dropout config), ``softcap``, attention sinks (``s_aux``),
a ``position_bias`` and a paged cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo.hf.masks import plan_for
from attnzoo.ops.masks import Mask
from attnzoo.ops.sigmoid import sigmoid_attention, sigmoid_weights
from attnzoo.ops.softmax import softmax_attention, softmax_weights

SOFTMAX = "attnzoo_softmax"
SIGMOID = "attnzoo_sigmoid"

# ``softmax_attention(impl="auto")`` always takes SDPA. For a structured mask that is neither full
# nor plain causal, SDPA gets a dense [T, S] mask and computes every score, where ``blocked``
# skips the empty tiles. Measured on this project's 2-core CPU (1 thread, B=1, H=4, K=64):
# T=S=1024 a 128-window 46 -> 36 ms, 8 causal documents 18 -> 11 ms; T=S=4096 a 128-window
# 459 -> 74 ms, 2 causal documents 506 -> 189 ms, a quarter of right padding 496 -> 158 ms;
# at T=S=512 and below SDPA wins every mask (5.6 vs 8.5 ms). Plain causal: SDPA 2x faster.
BLOCKED_MIN_PAIRS_CPU = 1 << 20  # T * S from which blocked wins on CPU
BLOCKED_MAX_DENSITY = 0.35  # attended fraction of the T x S pairs up to which it wins
# On other devices (not measured here: no GPU) SDPA's fused kernels are kept unless the dense
# boolean mask SDPA needs would itself pass 256 MiB; blocked needs O(T * block) memory.
BLOCKED_MIN_PAIRS_ANY = 1 << 28


def softmax_impl(mask: Mask, T: int, S: int, device: torch.device) -> str:
    """The :func:`~attnzoo.ops.softmax.softmax_attention` path for one call (see the constants
    above): ``"sdpa"`` for full and plain causal masks and small problems, else ``"blocked"``
    where it wins."""
    if mask.is_full or mask.is_plain_causal or T == 0 or S == 0:
        return "sdpa"
    if T * S >= BLOCKED_MIN_PAIRS_ANY:
        return "blocked"
    if device.type == "cpu" and T * S >= BLOCKED_MIN_PAIRS_CPU:
        return "blocked" if mask.pairs(T, S) <= BLOCKED_MAX_DENSITY * T * S else "sdpa"
    return "sdpa"


def sigmoid_bias(module: nn.Module) -> float:
    """The constant sigmoid bias of a model: ``config.attnzoo_sigmoid_bias`` if set, else
    ``-log(config.max_position_embeddings)`` (``-log(1024)`` without one).

    Constant per model, as in attnzoo's ``SigmoidConfig`` (``b = -log(context_len)``) and the
    paper's configs, rather than the op's per-call ``-log(S)``: with ``-log(S)`` a prompt token's
    output would change as the sequence grows, so the KV cache would hold stale keys and
    generation with and without the cache would differ."""
    config = getattr(module, "config", None)
    bias = getattr(config, "attnzoo_sigmoid_bias", None)
    if bias is not None:
        return float(bias)
    n = getattr(config, "max_position_embeddings", None) or 1024
    return -math.log(n) if n > 1 else 0.0


def attnzoo_softmax_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """Exact softmax attention through :func:`attnzoo.ops.softmax.softmax_attention`.

    Shapes:
        query ``[B, H, T, K]``, key ``[B, Hkv, S, K]``, value ``[B, Hkv, S, V]``, mask
        ``[B, 1, T, S]`` or ``None`` -> ``([B, T, H, V], [B, H, T, S] or None)``
    """

    def attend(q: Tensor, k: Tensor, v: Tensor, m: Mask) -> Tensor:
        impl = softmax_impl(m, q.shape[1], k.shape[1], q.device)
        return softmax_attention(q, k, v, mask=m, scale=scaling, impl=impl)

    def weights(q: Tensor, k: Tensor, m: Mask) -> Tensor:
        return softmax_weights(q, k, mask=m, scale=scaling)

    return _attention(SOFTMAX, attend, weights, module, query, key, value, attention_mask,
                      dropout, kwargs)  # fmt: skip


def attnzoo_sigmoid_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """Sigmoid attention ``sigmoid(scaling * q k^T + b) v`` over the allowed keys, through
    :func:`attnzoo.ops.sigmoid.sigmoid_attention` (its ``auto`` path), ``b`` from
    :func:`sigmoid_bias`.

    Shapes:
        query ``[B, H, T, K]``, key ``[B, Hkv, S, K]``, value ``[B, Hkv, S, V]``, mask
        ``[B, 1, T, S]`` or ``None`` -> ``([B, T, H, V], [B, H, T, S] or None)``
    """
    b = sigmoid_bias(module)

    def attend(q: Tensor, k: Tensor, v: Tensor, m: Mask) -> Tensor:
        return sigmoid_attention(q, k, v, mask=m, scale=scaling, bias=b)

    def weights(q: Tensor, k: Tensor, m: Mask) -> Tensor:
        return sigmoid_weights(q, k, mask=m, scale=scaling, bias=b)

    return _attention(SIGMOID, attend, weights, module, query, key, value, attention_mask,
                      dropout, kwargs)  # fmt: skip


def _attention(
    name: str,
    attend: Callable[[Tensor, Tensor, Tensor, Mask], Tensor],
    weights: Callable[[Tensor, Tensor, Mask], Tensor],
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float,
    kwargs: dict[str, Any],
) -> tuple[Tensor, Tensor | None]:
    _refuse(name, module, dropout, kwargs)
    B, H, T, _ = query.shape
    S, Hkv = key.shape[2], key.shape[1]
    groups = getattr(module, "num_key_value_groups", None)
    if groups is not None and H != Hkv * groups:
        raise ValueError(
            f"{name}: query has {H} heads and key {Hkv}, but {type(module).__name__}."
            f"num_key_value_groups is {groups}; expected H = Hkv * num_key_value_groups"
        )
    causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if causal is None else causal)
    plan = plan_for(attention_mask, batch=B, T=T, S=S, causal=causal,
                    window=kwargs.get("sliding_window"))  # fmt: skip
    q, k, v = (rearrange(t, "b h t k -> b t h k") for t in (query, key, value))
    out = plan.run(attend, q, k, v)  # [B, T, H, V]
    w = plan.run(weights, q, k) if kwargs.get("output_attentions") else None  # [B, H, T, S]
    return out.contiguous(), w


def _refuse(name: str, module: nn.Module, dropout: float, kwargs: dict[str, Any]) -> None:
    where = f"{name} (in {type(module).__name__})"
    if dropout:
        raise ValueError(
            f"{where}: attention dropout={dropout} is not implemented by attnzoo's ops; call "
            "model.eval() or set the config's attention dropout to 0 for training"
        )
    for arg, what in (
        ("softcap", "logit soft-capping"),
        ("s_aux", "attention sinks"),
        ("position_bias", "an additive position bias"),
        ("cache", "a paged cache (continuous batching)"),
    ):
        if kwargs.get(arg) is not None:
            raise ValueError(f"{where}: {arg}= ({what}) is not supported; got a value")
