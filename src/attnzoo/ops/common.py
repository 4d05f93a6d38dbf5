"""Helpers shared by the attention ops: input checks, GQA head expansion, tile iteration."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from attnzoo.ops.masks import Mask, as_mask


def check_impl(op: str, impl: str, choices: Sequence[str]) -> None:
    if impl not in choices:
        raise ValueError(f"{op}: impl must be one of {', '.join(map(repr, choices))}, got {impl!r}")


def check_qkv(op: str, q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int, int, int, int, int]:
    """Validate the ``[B, T, H, K]`` layout of q, k, v and return ``(B, T, S, H, Hkv, K)``.

    Shapes:
        q ``[B, T, H, K]``, k ``[B, S, Hkv, K]``, v ``[B, S, Hkv, V]`` with ``H % Hkv == 0``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{op}: {name} must have 4 dims [B, T, H, K], got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"{op}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    B, T, H, K = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(
            f"{op}: batch sizes differ: q has B={B}, k has {k.shape[0]}, v has {v.shape[0]}"
        )
    if k.shape[1] != v.shape[1]:
        raise ValueError(
            f"{op}: k and v must have the same length S, got {k.shape[1]} and {v.shape[1]}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(
            f"{op}: k and v must have the same heads, got {k.shape[2]} and {v.shape[2]}"
        )
    if k.shape[3] != K:
        raise ValueError(f"{op}: q and k head dims differ: q has K={K}, k has {k.shape[3]}")
    Hkv = k.shape[2]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(
            f"{op}: q heads H={H} must be a multiple of k/v heads Hkv={Hkv} (grouped-query attention)"
        )
    return B, T, k.shape[1], H, Hkv, K


def resolve_scale(op: str, scale: float | None, K: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(K) if K > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be a finite float or None, got {scale!r}")
    return float(scale)


def expand_kv(x: Tensor, H: int) -> Tensor:
    """Repeat kv heads for grouped-query attention: query head h reads kv head ``h // (H/Hkv)``.

    Shapes:
        x ``[B, S, Hkv, K]`` -> ``[B, S, H, K]``
    """
    Hkv = x.shape[2]
    return x if Hkv == H else x.repeat_interleave(H // Hkv, dim=2)


def heads_first(x: Tensor) -> Tensor:
    """``[B, T, H, K] -> [B, H, T, K]`` (contiguous, for tiled matmuls)."""
    return rearrange(x, "b t h k -> b h t k").contiguous()


def heads_last(x: Tensor) -> Tensor:
    """``[B, H, T, K] -> [B, T, H, K]``."""
    return rearrange(x, "b h t k -> b t h k")


def attention_flops(B: int, H: int, K: int, V: int, pairs: int) -> int:
    """FLOPs (2 per multiply-add) of scores and weighted sum over ``pairs`` attended pairs."""
    return 2 * B * H * pairs * (K + V)


@dataclass(frozen=True)
class Tile:
    """One (query block, key block) tile; ``mask`` is ``None`` when every pair is allowed."""

    q0: int
    q1: int
    k0: int
    k1: int
    mask: Tensor | None  # [q1-q0, k1-k0] bool, or None for a full tile


def tiles(
    mask: Mask, T: int, S: int, block_q: int, block_k: int, device: torch.device
) -> Iterator[Tile]:
    """Iterate the non-empty tiles of ``mask`` for a ``T x S`` problem.

    Empty tiles are skipped (causal and windowed masks do roughly half or less of the work);
    tiles where every pair is allowed carry ``mask=None`` so no masking work is done.
    """
    if not mask.single_range:
        yield from _general_tiles(mask, T, S, block_q, block_k, device)
        return
    lo, hi = mask.ranges(T, S, device="cpu")
    lo_l, hi_l = lo.tolist(), hi.tolist()
    lo_d, hi_d = lo.to(device), hi.to(device)
    for q0 in range(0, T, block_q):
        q1 = min(q0 + block_q, T)
        rows_lo, rows_hi = lo_l[q0:q1], hi_l[q0:q1]
        nonempty = [(a, b) for a, b in zip(rows_lo, rows_hi, strict=True) if b > a]
        if not nonempty:
            continue
        k_first = min(a for a, _ in nonempty)
        k_last = max(b for _, b in nonempty)
        for k0 in range((k_first // block_k) * block_k, k_last, block_k):
            k1 = min(k0 + block_k, S)
            if all(a <= k0 and b >= k1 for a, b in zip(rows_lo, rows_hi, strict=True)):
                yield Tile(q0, q1, k0, k1, None)
                continue
            if not any(a < k1 and b > k0 for a, b in zip(rows_lo, rows_hi, strict=True)):
                continue
            j = torch.arange(k0, k1, device=device)
            m = (j[None, :] >= lo_d[q0:q1, None]) & (j[None, :] < hi_d[q0:q1, None])
            yield Tile(q0, q1, k0, k1, m)


def _general_tiles(
    mask: Mask, T: int, S: int, block_q: int, block_k: int, device: torch.device
) -> Iterator[Tile]:
    """:func:`tiles` for masks with two key ranges per row or token filters: each candidate
    tile's pairs are evaluated (``block_q x block_k`` booleans), only between the rows' first and
    last reachable keys."""
    rows = mask.resolve(T, S, device="cpu")
    for q0 in range(0, T, block_q):
        q1 = min(q0 + block_q, T)
        lo, hi = rows.lo[q0:q1], rows.hi[q0:q1]  # [n, R]
        used = hi > lo
        if not bool(used.any()):
            continue
        k_first, k_last = int(lo[used].min()), int(hi[used].max())
        q_idx = torch.arange(q0, q1)
        for k0 in range((k_first // block_k) * block_k, k_last, block_k):
            k1 = min(k0 + block_k, S)
            m = rows.allowed(q_idx, torch.arange(k0, k1))  # [n, k1 - k0]
            if not bool(m.any()):
                continue
            yield Tile(q0, q1, k0, k1, None if bool(m.all()) else m.to(device))


def check_block(op: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class Problem:
    """A validated attention call: sizes, the mask and the scale."""

    B: int
    T: int
    S: int
    H: int
    Hkv: int
    K: int
    mask: Mask
    scale: float


def prepare(
    op: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | str | None,
    scale: float | None,
    impl: str,
    impls: Sequence[str],
    block_q: int,
    block_k: int,
) -> Problem:
    """Every check an attention op makes before computing, with errors naming the argument."""
    check_impl(op, impl, impls)
    B, T, S, H, Hkv, K = check_qkv(op, q, k, v)
    m = as_mask(mask)
    m.validate(T, S)
    check_block(op, "block_q", block_q)
    check_block(op, "block_k", block_k)
    return Problem(B, T, S, H, Hkv, K, m, resolve_scale(op, scale, K))
