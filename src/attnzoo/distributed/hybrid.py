"""Hybrid context parallelism: Ulysses inside groups, ring attention across them (2-D grid).

Fang & Zhao, "USP: A Unified Sequence Parallelism Approach for Long Context Generative AI",
2024. https://arxiv.org/abs/2405.07719  Code: https://github.com/feifeibear/long-context-attention

``world = ulysses_size x ring_size`` ranks; global rank ``g = ring_rank * ulysses_size +
ulysses_rank``, so a Ulysses group is ``ulysses_size`` consecutive ranks (on a GPU cluster: one
node, where the bandwidth-hungry all-to-all belongs) and a ring group takes one rank of every
Ulysses group.

Layout: ``sharding`` splits the sequence over the *ring* (``sharding.world_size == ring_size``,
any kind, e.g. zigzag for causal balance); each ring shard is then cut into ``ulysses_size``
consecutive pieces, piece ``u`` held by the rank with that Ulysses index
(:func:`hybrid_positions`). One call:

1. Ulysses all-to-all inside the group: the group's pieces of all heads -> the whole ring shard
   of ``H / ulysses_size`` heads (pieces concatenate back to the ring shard in order);
2. :func:`~attnzoo.distributed.ring.ring_attention` over the ring group for those heads;
3. the inverse all-to-all: the rank's piece of every head.

``H`` and the k/v heads must be divisible by ``ulysses_size``; every ring shard needs at least
``ulysses_size`` tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from attnzoo.distributed.comm import Comm
from attnzoo.distributed.ring import ExactAttention, ring_attention, ring_bytes, ring_work
from attnzoo.distributed.shard import Sharding
from attnzoo.distributed.strategies import CPShape, case_mask, register_strategy
from attnzoo.distributed.ulysses import (
    check_heads,
    heads_to_seq,
    seq_to_heads,
)
from attnzoo.ops.common import check_qkv
from attnzoo.ops.masks import Mask

OP = "hybrid_attention"


class Grid(NamedTuple):
    """The two communicators of one rank on the ``ulysses_size x ring_size`` grid."""

    ulysses: Comm
    ring: Comm


def make_grid(ulysses_size: int, ring_size: int, *, timeout: float = 600.0) -> Grid:
    """Create the Ulysses and ring subgroups (collective: every rank must call it, in step).

    Every rank creates every group, in the same order, as ``dist.new_group`` requires.

    Args:
        ulysses_size: ranks per Ulysses group (consecutive global ranks).
        ring_size: ranks per ring group; ``ulysses_size * ring_size`` must be the world size.
        timeout: collective timeout of the new groups, in seconds.

    Returns:
        ``Grid(ulysses, ring)`` of this rank.

    Shapes:
        not applicable.
    """
    if not dist.is_initialized():
        raise RuntimeError("make_grid: torch.distributed is not initialised; use run_workers")
    for name, value in (("ulysses_size", ulysses_size), ("ring_size", ring_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_grid: {name} must be an int >= 1, got {value!r}")
    world = dist.get_world_size()
    if ulysses_size * ring_size != world:
        raise ValueError(
            f"make_grid: ulysses_size={ulysses_size} x ring_size={ring_size} = "
            f"{ulysses_size * ring_size} must equal the world size {world}"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(
            f"make_grid: timeout must be a positive number of seconds, got {timeout!r}"
        )
    wait = timedelta(seconds=float(timeout))
    me = dist.get_rank()
    mine: dict[str, dist.ProcessGroup] = {}
    for r in range(ring_size):
        ranks = [r * ulysses_size + u for u in range(ulysses_size)]
        group = dist.new_group(ranks, timeout=wait)
        if me in ranks:
            mine["ulysses"] = group
    for u in range(ulysses_size):
        ranks = [r * ulysses_size + u for r in range(ring_size)]
        group = dist.new_group(ranks, timeout=wait)
        if me in ranks:
            mine["ring"] = group
    return Grid(Comm(mine["ulysses"]), Comm(mine["ring"]))


def hybrid_positions(
    sharding: Sharding, ulysses_size: int, ulysses_rank: int, ring_rank: int
) -> Tensor:
    """Global positions held by the rank at ``(ulysses_rank, ring_rank)``.

    Piece ``ulysses_rank`` of ``ulysses_size`` consecutive pieces of ring shard ``ring_rank``
    (uneven splits: the first pieces are one token longer).

    Shapes:
        returns ``[n]`` int64.
    """
    pieces = _pieces("hybrid_positions", sharding, ulysses_size, ring_rank)
    if isinstance(ulysses_rank, bool) or not isinstance(ulysses_rank, int):
        raise TypeError(f"hybrid_positions: ulysses_rank must be an int, got {ulysses_rank!r}")
    if not 0 <= ulysses_rank < ulysses_size:
        raise ValueError(
            f"hybrid_positions: ulysses_rank must be in [0, {ulysses_size}), got {ulysses_rank}"
        )
    return torch.split(sharding.positions(ring_rank), pieces)[ulysses_rank].clone()


def hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    grid: Grid,
    sharding: Sharding,
    mask: Mask | str | None = None,
    scale: float | None = None,
    variant: Literal["p2p", "allgather"] = "p2p",
) -> Tensor:
    """Exact softmax attention of this rank's tokens over the whole sequence on a 2-D grid.

    Args:
        q, k, v: this rank's tokens, at :func:`hybrid_positions` of its grid coordinates.
        grid: this rank's :class:`Grid` from :func:`make_grid`.
        sharding: the ring-level layout (``sharding.world_size == grid.ring.world_size``).
        mask: mask of the *global* ``T x T`` problem.
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        variant: the ring's ``"p2p"`` or ``"allgather"`` variant.

    Shapes:
        q ``[B, n, H, K]``, k ``[B, n, Hkv, K]``, v ``[B, n, Hkv, V]`` -> ``[B, n, H, V]``
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"{OP}: grid must be a Grid from make_grid, got {type(grid).__name__}")
    if not isinstance(sharding, Sharding):
        raise TypeError(f"{OP}: sharding must be a Sharding, got {type(sharding).__name__}")
    U = grid.ulysses.world_size
    if sharding.world_size != grid.ring.world_size:
        raise ValueError(
            f"{OP}: sharding.world_size={sharding.world_size} must equal the ring size "
            f"{grid.ring.world_size} (the sharding splits the sequence over the ring)"
        )
    _, n, S, H, Hkv, K = check_qkv(OP, q, k, v)
    check_heads(OP, H, Hkv, U)
    pieces = _pieces(OP, sharding, U, grid.ring.rank)
    if n != pieces[grid.ulysses.rank] or S != n:
        raise ValueError(
            f"{OP}: rank (ulysses {grid.ulysses.rank}, ring {grid.ring.rank}) holds "
            f"{pieces[grid.ulysses.rank]} tokens, but q has {n} and k/v have {S}"
        )
    qs = seq_to_heads(q, grid.ulysses, pieces)  # [B, T_ring, H/U, K]
    kv = seq_to_heads(torch.cat([k, v], dim=-1), grid.ulysses, pieces)  # [B, T_ring, Hkv/U, K+V]
    o = ring_attention(
        qs,
        kv[..., :K],
        kv[..., K:],
        comm=grid.ring,
        sharding=sharding,
        mask=mask,
        scale=scale,
        variant=variant,
    )  # [B, T_ring, H/U, V]
    return heads_to_seq(o, grid.ulysses, pieces)  # [B, n, H, V]


def hybrid_bytes(
    sharding: Sharding,
    ulysses_size: int,
    *,
    batch: int,
    num_heads: int,
    kv_heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    variant: Literal["p2p", "allgather"] = "p2p",
    element_size: int = 4,
    backward: bool = False,
) -> list[int]:
    """Analytic bytes each rank sends for one call, by global rank (``Comm.bytes_sent``
    convention, Ulysses and ring communicators summed).

    Ulysses part (inside a group, over the ring shard of ``T_ring`` tokens): the rank sends the
    ``U - 1`` foreign head blocks of its ``n`` tokens (q, k, v), then its heads' output at the
    ``T_ring - n`` other tokens; the backward reverses both. Ring part:
    :func:`~attnzoo.distributed.ring.ring_bytes` with ``kv_heads / U`` heads.

    Shapes:
        returns ``ulysses_size * ring_size`` ints.
    """
    U, R = ulysses_size, sharding.world_size
    check_heads("hybrid_bytes", num_heads, kv_heads, U)
    V = head_dim if v_head_dim is None else v_head_dim
    ring = ring_bytes(
        sharding,
        batch=batch,
        kv_heads=kv_heads // U,
        head_dim=head_dim,
        v_head_dim=V,
        variant=variant,
        element_size=element_size,
        backward=backward,
    )
    qkv = (num_heads * head_dim + kv_heads * (head_dim + V)) // U  # one head block per token
    o = num_heads * V // U
    out = []
    for r in range(R):
        pieces = _pieces("hybrid_bytes", sharding, U, r)
        for n in pieces:
            others = sum(pieces) - n
            fwd = (U - 1) * n * qkv + others * o
            bwd = (U - 1) * n * o + others * qkv
            out.append(batch * element_size * (fwd + (bwd if backward else 0)) + ring[r])
    return out


def _check_layout(op: str, sharding: Sharding, ulysses_size: int) -> None:
    if not isinstance(sharding, Sharding):
        raise TypeError(f"{op}: sharding must be a Sharding, got {type(sharding).__name__}")
    if isinstance(ulysses_size, bool) or not isinstance(ulysses_size, int) or ulysses_size < 1:
        raise ValueError(f"{op}: ulysses_size must be an int >= 1, got {ulysses_size!r}")


def _pieces(op: str, sharding: Sharding, ulysses_size: int, ring_rank: int) -> list[int]:
    """Token counts of the ``ulysses_size`` pieces of ring shard ``ring_rank``."""
    _check_layout(op, sharding, ulysses_size)
    T_ring = sharding.local_len(ring_rank)
    if T_ring < ulysses_size:
        raise ValueError(
            f"{op}: ring shard {ring_rank} of {sharding} has {T_ring} tokens, fewer than "
            f"ulysses_size={ulysses_size} (every rank needs at least one token)"
        )
    return [
        T_ring // ulysses_size + (1 if u < T_ring % ulysses_size else 0)
        for u in range(ulysses_size)
    ]


# ---- the bench's strategy --------------------------------------------------------------------
#: the bench's grid: Ulysses groups of 2, ring across world / 2 of them
HYBRID_ULYSSES = 2


@dataclasses.dataclass(frozen=True)
class HybridStrategy(ExactAttention):
    """Ulysses inside groups of :data:`HYBRID_ULYSSES` x ring across them; the sharding is over
    the ring (``world / U`` ranks), each ring shard cut among a Ulysses group."""

    def heads_divisor(self, world_size: int) -> int:
        return HYBRID_ULYSSES

    def skip_reason(self, world_size: int, heads: int, mask: str) -> str | None:
        if world_size >= self.min_world and world_size % HYBRID_ULYSSES:
            return f"hybrid needs an even world size (Ulysses groups of {HYBRID_ULYSSES})"
        return super().skip_reason(world_size, heads, mask)

    def setup(self, world_size: int) -> Grid:
        return make_grid(HYBRID_ULYSSES, world_size // HYBRID_ULYSSES)

    def layout(self, case: dict[str, Any], world_size: int) -> Sharding:
        return Sharding(case["sharding"], case["seq_len"], world_size // HYBRID_ULYSSES)

    def positions(self, case: dict[str, Any], sharding: Sharding, rank: int) -> Tensor:
        u, r = rank % HYBRID_ULYSSES, rank // HYBRID_ULYSSES  # the grid's rank layout
        return hybrid_positions(sharding, HYBRID_ULYSSES, u, r)

    def comms(self, comm: Comm, setup: Any) -> list[Comm]:
        return list(setup)

    def call(
        self, case: dict[str, Any], shape: CPShape, comm: Comm, setup: Any, sharding: Sharding
    ) -> Callable[..., Tensor]:
        mask = case_mask(case["mask"], case["seq_len"])
        return lambda q, k, v: hybrid_attention(q, k, v, grid=setup, sharding=sharding, mask=mask)

    def analytic_bytes(
        self, case: dict[str, Any], shape: CPShape, sharding: Sharding, rank: int
    ) -> int:
        return hybrid_bytes(sharding, HYBRID_ULYSSES, batch=shape.batch, num_heads=shape.heads,
                            kv_heads=shape.heads, head_dim=shape.head_dim,
                            backward=case["mode"] == "fwd+bwd")[rank]  # fmt: skip

    def work_pairs(
        self, case: dict[str, Any], sharding: Sharding, rank: int, world_size: int
    ) -> float | None:
        """Its ring shard's rows, for ``H / U`` of the heads."""
        rows = ring_work(sharding, case_mask(case["mask"], case["seq_len"]))
        return rows[rank // HYBRID_ULYSSES] / HYBRID_ULYSSES


register_strategy(HybridStrategy("hybrid", "Ulysses inside groups of 2 x ring across them (USP)",
                                 min_world=4))  # fmt: skip
