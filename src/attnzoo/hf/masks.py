"""transformers' attention masks as :class:`attnzoo.Mask` plans.

transformers 5 builds one mask per forward (``masking_utils.create_causal_mask`` and friends)
through the mask function registered for the model's ``attn_implementation``; every layer then
passes it to the attention function. :func:`attnzoo_mask` is that mask function for attnzoo: the
boolean ``[B, 1, T, S]`` mask of transformers' own ``sdpa_mask`` (``None`` when the pattern is
plain causal or plain bidirectional without padding), plus which query rows are padding tokens.

:func:`plan_for` turns such a mask (or ``None``, or an eager-style 0 / -inf float mask) into a
:class:`MaskPlan`: the samples grouped by their structured :class:`~attnzoo.Mask`, fitted by
:mod:`attnzoo.hf.fit`. Plans are cached on the mask tensor, so the fit runs once per forward, not
once per layer.

**Padding rows.** A padding token's own query row is *free*: no real token may attend its key, so
its output only ever reaches its own (ignored) position. A free row takes whatever key range makes
the fit simplest (none, or the plain causal range under right padding), so logits at padding
positions may differ from eager (which gives a fully masked row the mean of all values); logits
at real tokens do not. A row is known to be padding from the 2-D ``attention_mask`` when the mask
came from :func:`attnzoo_mask`; for another mask with ``S == T`` a row is padding when its own key
is visible to no query (every pattern transformers builds lets a real token see itself).

**Memory.** Like transformers' sdpa path, a mask with padding or packing is materialised once per
forward as booleans ``[B, 1, T, S]``; plain causal and bidirectional masks never are (``None``).

**What cannot be expressed** raises ``ValueError``: a query row attending a non-contiguous set of
keys (padding in the middle of a sequence, custom patterns), rows whose ranges fit no
full / causal / sliding-window / document combination, per-head masks, additive float masks
with biases other than 0 and -inf, and flex-attention ``BlockMask`` objects. ``attnzoo.Mask`` has
no dense boolean form to fall back on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor
from transformers.masking_utils import sdpa_mask

from attnzoo.hf.fit import fit_mask, row_ranges
from attnzoo.ops.masks import Mask

SUPPORTED = (
    "full, causal (bottom-right aligned with a KV cache), sliding window, packed documents "
    "(position_ids restarting at 0) and left or right padding, and their combinations"
)


@dataclasses.dataclass(frozen=True)
class MaskPlan:
    """How to attend a batch: ``groups`` of ``(sample indices [n] or None for all, Mask)``.

    Attributes:
        groups: each group's samples share one :class:`Mask`; together they cover the batch once.
        padded: some query rows are padding tokens (free rows, see the module docstring).
    """

    groups: tuple[tuple[Tensor | None, Mask], ...]
    padded: bool = False

    @property
    def masks(self) -> tuple[Mask, ...]:
        return tuple(m for _, m in self.groups)

    def run(self, fn: Any, *tensors: Tensor) -> Tensor:
        """``fn(*tensors[idx], mask)`` per group, reassembled in batch order (autograd-safe).

        Shapes: every tensor batch first ``[B, ...]`` -> ``fn``'s output ``[B, ...]``."""
        if len(self.groups) == 1 and self.groups[0][0] is None:
            return fn(*tensors, self.groups[0][1])
        outs, order = [], []
        for idx, m in self.groups:
            assert idx is not None
            outs.append(fn(*(t[idx] for t in tensors), m))
            order.append(idx)
        return torch.cat(outs)[torch.argsort(torch.cat(order))]


def attnzoo_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | Tensor = 0,
    kv_offset: int = 0,
    attention_mask: Tensor | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: Any,
) -> Tensor | None:
    """The mask function of the attnzoo attention implementations (``AttentionMaskInterface``).

    transformers' ``sdpa_mask`` (boolean ``[B, 1, T, S]``, ``True`` = attend), except that the
    plain-causal shortcut (``None``) is only taken when ``T == S`` or ``T == 1``, where it means
    the same as attnzoo's bottom-right causal mask (sdpa also takes it for a static cache's
    prefill, aligned top-left). Rows of padding tokens are recorded on the mask.
    """
    skip = allow_is_causal_skip and q_length in (1, kv_length)
    mask = sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        allow_is_causal_skip=skip,
        **kwargs,
    )
    if mask is not None and attention_mask is not None and attention_mask.dim() == 2:
        q0 = int(q_offset)
        tokens = attention_mask[:, q0 : q0 + q_length].to(torch.bool)  # [B, <=T]
        free = torch.zeros(batch_size, q_length, dtype=torch.bool, device=mask.device)
        free[:, : tokens.shape[1]] = ~tokens.to(mask.device)
        mask._attnzoo_free = free  # type: ignore[attr-defined]
    return mask


def plan_for(
    mask: Any, *, batch: int, T: int, S: int, causal: bool, window: int | None = None
) -> MaskPlan:
    """The :class:`MaskPlan` of an attention mask as transformers passes it.

    Args:
        mask: ``None``, a boolean ``[B or 1, H or 1, T, S]`` tensor (``True`` = attend) or a float
            one (0 = attend, -inf or the dtype's minimum = not).
        batch, T, S: batch size, queries and keys of the call.
        causal: the module's causality: what ``None`` means, and the kind of mask tried first.
        window: the sliding window a ``None`` mask carries (a model's ``sliding_window``).

    Shapes:
        mask ``[B, 1, T, S]`` or ``None`` -> groups over the batch.
    """
    if mask is None:
        if causal and 1 < T < S:
            raise ValueError(
                f"attention_mask=None with T={T} queries and S={S} keys is ambiguous (top-left or "
                "bottom-right causal); pass the model's mask (attn_implementation='attnzoo_*' "
                "builds one)"
            )
        use = window if window is not None and S > window else None
        return MaskPlan(((None, Mask(causal=causal, window=use)),))
    if not isinstance(mask, Tensor):
        raise ValueError(
            f"attention_mask must be a tensor or None, got {type(mask).__name__} (a flex-attention "
            f"BlockMask cannot be read); attnzoo expresses {SUPPORTED}"
        )
    key = (causal, batch, T, S, mask._version)
    cache: dict[tuple[Any, ...], MaskPlan] = mask.__dict__.setdefault("_attnzoo_plans", {})
    if key not in cache:
        cache[key] = _plan(mask, batch, T, S, causal)
    return cache[key]


def _plan(mask: Tensor, batch: int, T: int, S: int, causal: bool) -> MaskPlan:
    allowed = to_allowed(mask, batch, T, S)  # [B, T, S]
    free = getattr(mask, "_attnzoo_free", None)
    if free is None or tuple(free.shape) != (batch, T):
        free = torch.zeros(batch, T, dtype=torch.bool, device=allowed.device)
        if S == T:
            free = ~allowed.any(1)  # [B, S]: keys nobody sees are padding tokens
    lo, hi, contiguous = row_ranges(allowed)
    bad = ~contiguous & ~free
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        keys = allowed[b, i].nonzero().flatten().tolist()
        raise ValueError(
            f"attention mask cannot be expressed as an attnzoo.Mask: query {i} of sample {b} "
            f"attends the non-contiguous keys {_spans(keys)} (padding inside a sequence, or a "
            f"custom pattern); attnzoo.Mask gives each query one contiguous key range and has no "
            f"dense form. Supported: {SUPPORTED}"
        )
    lo, hi = lo.masked_fill(free, 0), hi.masked_fill(free, 0)
    rows = torch.cat([lo, hi, free.long()], dim=1)  # [B, 3T]
    unique, inverse = torch.unique(rows.cpu(), dim=0, return_inverse=True)
    groups: list[tuple[Tensor | None, Mask]] = []
    for u, row in enumerate(unique):
        m = fit_mask(row[:T], row[T : 2 * T], row[2 * T :].bool(), S, causal=causal)
        if m is None:
            b = int((inverse == u).nonzero()[0])
            raise ValueError(_unfit_message(b, row[:T], row[T : 2 * T], row[2 * T :].bool()))
        idx = None if len(unique) == 1 else (inverse == u).nonzero().flatten().to(mask.device)
        groups.append((idx, m))
    return MaskPlan(tuple(groups), padded=bool(free.any()))


def to_allowed(mask: Tensor, batch: int, T: int, S: int) -> Tensor:
    """A transformers mask as booleans ``[B, T, S]`` (``True`` = attend)."""
    if mask.dim() != 4 or mask.shape[0] not in (1, batch) or tuple(mask.shape[2:]) != (T, S):
        raise ValueError(
            f"attention_mask must be [B, 1, T, S] = [{batch}, 1, {T}, {S}] (4-D, as transformers "
            f"builds for sdpa/eager/attnzoo), got shape {tuple(mask.shape)}; a 2-D padding mask "
            "(flash-attention format) is not read here"
        )
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.is_floating_point():
        allowed = mask == 0
        blocked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool((allowed | blocked).all()):
            raise ValueError(
                "attention_mask is an additive float mask with biases other than 0 and -inf "
                "(e.g. ALiBi or a soft mask); attnzoo.Mask only allows or hides a key"
            )
    else:
        raise ValueError(f"attention_mask must be bool or float, got dtype {mask.dtype}")
    if allowed.shape[1] > 1:
        if not bool((allowed == allowed[:, :1]).all()):
            raise ValueError(
                f"attention_mask differs between its {allowed.shape[1]} heads; attnzoo.Mask is "
                "shared by all heads"
            )
    return allowed[:, 0].expand(batch, T, S)


def _spans(keys: list[int]) -> str:
    spans, start = [], keys[0]
    for a, b in zip(keys, keys[1:] + [None], strict=True):
        if b != a + 1:
            spans.append(f"{start}..{a}" if a != start else f"{a}")
            start = b
    return "{" + ", ".join(spans[:6]) + (", ..." if len(spans) > 6 else "") + "}"


def _unfit_message(b: int, lo: Tensor, hi: Tensor, free: Tensor) -> str:
    rows = [
        f"{i}: [{int(lo[i])}, {int(hi[i])})"
        for i in range(lo.shape[0])
        if not bool(free[i]) and hi[i] > lo[i]
    ]
    return (
        f"attention mask cannot be expressed as an attnzoo.Mask: the key ranges of sample {b} "
        f"(query: [first key, end) = {', '.join(rows[:8])}{', ...' if len(rows) > 8 else ''}) "
        f"fit no combination attnzoo.Mask describes, and it has no dense form. Supported: "
        f"{SUPPORTED}"
    )
