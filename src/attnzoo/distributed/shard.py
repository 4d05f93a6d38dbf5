"""How a global sequence of ``seq_len`` tokens is split over ``world_size`` ranks, and back.

- ``contiguous``: rank ``r`` owns one block of consecutive tokens.
- ``zigzag``: the sequence is cut into ``2P`` chunks; rank ``r`` owns chunks ``r`` and
  ``2P - 1 - r`` (an early and a late chunk), which balances causal attention work.
- ``striped``: rank ``r`` owns tokens ``r, r + P, r + 2P, ...``.

Uneven lengths are allowed: when ``n`` items (tokens, or zigzag chunks) are split into ``m``
parts, the first ``n % m`` parts get one item more. Every rank (and every zigzag chunk) must get
at least one token, so ``seq_len >= world_size`` (``>= 2 * world_size`` for zigzag).
A rank's tokens are kept in increasing global order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from attnzoo.distributed.comm import Comm

KINDS = ("contiguous", "zigzag", "striped")


def _split(n: int, m: int) -> list[int]:
    """Sizes of ``n`` items in ``m`` parts, the first ``n % m`` parts one larger."""
    return [n // m + (1 if i < n % m else 0) for i in range(m)]


@dataclass(frozen=True)
class Sharding:
    """A layout of ``seq_len`` global positions over ``world_size`` ranks.

    Attributes:
        kind: ``"contiguous"``, ``"zigzag"`` or ``"striped"``.
        seq_len: global sequence length ``T``.
        world_size: number of ranks ``P``.
    """

    kind: Literal["contiguous", "zigzag", "striped"]
    seq_len: int
    world_size: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Sharding: kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("seq_len", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Sharding: {name} must be an int >= 1, got {value!r}")
        need = 2 * self.world_size if self.kind == "zigzag" else self.world_size
        if self.seq_len < need:
            what = "2 * world_size chunks" if self.kind == "zigzag" else "world_size ranks"
            raise ValueError(
                f"Sharding: kind={self.kind!r} with world_size={self.world_size} needs "
                f"seq_len >= {need} (one token at least for each of the {what}), "
                f"got seq_len={self.seq_len}"
            )

    @cached_property
    def _positions(self) -> tuple[Tensor, ...]:
        T, P = self.seq_len, self.world_size
        if self.kind == "striped":
            return tuple(torch.arange(r, T, P) for r in range(P))
        parts = _split(T, 2 * P if self.kind == "zigzag" else P)
        blocks = torch.split(torch.arange(T), parts)
        if self.kind == "contiguous":
            return tuple(blocks)
        return tuple(torch.cat([blocks[r], blocks[2 * P - 1 - r]]) for r in range(P))

    def positions(self, rank: int) -> Tensor:
        """Global token indices owned by ``rank``, in local order.

        Shapes:
            returns ``[T_rank]`` int64.
        """
        return self._positions[self._rank(rank)].clone()

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of tokens of every rank, ``(T_0, ..., T_{P-1})``."""
        return tuple(len(p) for p in self._positions)

    def local_len(self, rank: int) -> int:
        """Number of tokens owned by ``rank``."""
        return len(self._positions[self._rank(rank)])

    @cached_property
    def _order(self) -> Tensor:
        """Concatenation of every rank's positions: local slot -> global position."""
        return torch.cat(self._positions)

    @cached_property
    def _inverse(self) -> Tensor:
        """Global position -> slot in the concatenation of every rank's shard."""
        inv = torch.empty_like(self._order)
        inv[self._order] = torch.arange(self.seq_len)
        return inv

    def _rank(self, rank: int) -> int:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(
                f"Sharding: rank must be an int in [0, {self.world_size}), got {rank!r}"
            )
        return rank


def _check(op: str, x: Tensor, dim: int) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{op}: dim {dim!r} is out of range for a tensor with {x.dim()} dims")
    return dim % x.dim()


def shard(x: Tensor, sharding: Sharding, rank: int, dim: int = 1) -> Tensor:
    """The tokens of ``rank`` taken from a global tensor.

    Shapes:
        x ``[..., T @dim, ...]`` -> ``[..., T_rank @dim, ...]``
    """
    dim = _check("shard", x, dim)
    if x.shape[dim] != sharding.seq_len:
        raise ValueError(
            f"shard: x.shape[{dim}]={x.shape[dim]} but sharding.seq_len={sharding.seq_len}"
        )
    return x.index_select(dim, sharding.positions(rank).to(x.device))


def unshard(shards: Sequence[Tensor], sharding: Sharding, dim: int = 1) -> Tensor:
    """Reassemble the global tensor from every rank's shard (inverse of :func:`shard`).

    Shapes:
        shards ``P x [..., T_r @dim, ...]`` -> ``[..., T @dim, ...]``
    """
    shards = list(shards)
    if len(shards) != sharding.world_size:
        raise ValueError(
            f"unshard: got {len(shards)} shards but sharding.world_size={sharding.world_size}"
        )
    dims = [_check("unshard", s, dim) for s in shards]
    for r, (s, d) in enumerate(zip(shards, dims, strict=True)):
        if s.shape[d] != sharding.local_len(r):
            raise ValueError(
                f"unshard: shard {r} has {s.shape[d]} tokens along dim {d}, expected "
                f"{sharding.local_len(r)} for {sharding}"
            )
    full = torch.cat(shards, dim=dims[0])
    return full.index_select(dims[0], sharding._inverse.to(full.device))


def gather_unshard(x_local: Tensor, sharding: Sharding, comm: Comm, dim: int = 1) -> Tensor:
    """All-gather every rank's shard and restore global order (differentiable).

    Shapes:
        x_local ``[..., T_rank @dim, ...]`` -> ``[..., T @dim, ...]`` on every rank
    """
    dim = _check("gather_unshard", x_local, dim)
    if comm.world_size != sharding.world_size:
        raise ValueError(
            f"gather_unshard: comm.world_size={comm.world_size} but "
            f"sharding.world_size={sharding.world_size}"
        )
    if x_local.shape[dim] != sharding.local_len(comm.rank):
        raise ValueError(
            f"gather_unshard: x_local.shape[{dim}]={x_local.shape[dim]} but rank {comm.rank} "
            f"owns {sharding.local_len(comm.rank)} tokens"
        )
    full = comm.all_gather(x_local, dim, sizes=sharding.sizes)
    return full.index_select(dim, sharding._inverse.to(full.device))
