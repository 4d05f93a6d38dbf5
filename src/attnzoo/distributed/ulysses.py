"""Ulysses: sequence parallelism by swapping sequence shards for head shards (all-to-all).

Jacobs et al., "DeepSpeed Ulysses: System Optimizations for Enabling Training of Extreme Long
Sequence Transformer Models", 2023. https://arxiv.org/abs/2309.14509
Code: https://github.com/microsoft/DeepSpeed (``deepspeed/sequence/layer.py``).

Each of ``P`` ranks holds ``T_r`` tokens of every head. One all-to-all turns that into *every*
token of ``H / P`` heads; each rank runs exact single-process attention over the whole sequence
for its heads (any mask: it sees every key), and one all-to-all turns the output back into the
rank's own tokens of every head::

    q, k, v [B, T_r, H, K] --a2a--> [B, T, H/P, K] --attention--> [B, T, H/P, V] --a2a--> [B, T_r, H, V]

Tokens arrive in rank order, i.e. in the order of the sharding's positions (zigzag and striped
shards are not contiguous), so they are permuted to global order before attention and back after
it. Uneven shards (``T`` not divisible by ``P``) exchange pieces of different lengths. ``H`` and
the k/v heads ``Hkv`` must both be divisible by ``P``: rank ``p`` gets query heads
``[p·H/P, (p+1)·H/P)`` and k/v heads ``[p·Hkv/P, (p+1)·Hkv/P)``, exactly the GQA groups of those
query heads. k and v travel together in one all-to-all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from attnzoo.distributed.comm import Comm
from attnzoo.distributed.ring import ExactAttention, ring_work
from attnzoo.distributed.shard import Sharding
from attnzoo.distributed.strategies import CPShape, case_mask, register_strategy
from attnzoo.ops.common import check_qkv
from attnzoo.ops.masks import Mask
from attnzoo.ops.softmax import softmax_attention

OP = "ulysses_attention"


def ulysses_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    comm: Comm,
    sharding: Sharding,
    mask: Mask | str | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Exact softmax attention of this rank's tokens over the whole sharded sequence.

    Args:
        q, k, v: this rank's shard, the tokens at ``sharding.positions(comm.rank)``.
        comm: the communicator of the sequence-parallel group (``P = comm.world_size``).
        sharding: which global positions each rank holds (any kind, ``P`` shards).
        mask: mask of the *global* ``T x T`` problem (any :class:`attnzoo.Mask`, ``"full"``,
            ``"causal"`` or ``None`` for full).
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        impl: :func:`~attnzoo.ops.softmax.softmax_attention` path of the local attention.

    Shapes:
        q ``[B, T_r, H, K]``, k ``[B, T_r, Hkv, K]``, v ``[B, T_r, Hkv, V]``
        -> ``[B, T_r, H, V]`` with ``T_r = sharding.local_len(comm.rank)``
    """
    check_ulysses(OP, q, k, v, comm, sharding)
    sizes, K = list(sharding.sizes), k.shape[-1]
    qg = seq_to_heads(q, comm, sizes)  # [B, T, H/P, K] in rank order
    kv = seq_to_heads(torch.cat([k, v], dim=-1), comm, sizes)  # [B, T, Hkv/P, K + V]
    # contiguous shards in rank order are already in global order
    permute = sharding.kind != "contiguous"
    if permute:
        order, back = exchange_order([sharding.positions(r) for r in range(comm.world_size)])
        qg, kv = qg.index_select(1, order.to(q.device)), kv.index_select(1, order.to(q.device))
    o = softmax_attention(qg, kv[..., :K], kv[..., K:], mask=mask, scale=scale, impl=impl)
    if permute:
        o = o.index_select(1, back.to(q.device))  # [B, T, H/P, V] back in rank order
    return heads_to_seq(o, comm, sizes)  # [B, T_r, H, V]


def ulysses_bytes(
    sharding: Sharding,
    *,
    batch: int,
    num_heads: int,
    kv_heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    element_size: int = 4,
    backward: bool = False,
) -> list[int]:
    """Analytic bytes each rank sends for one call (the ``Comm.bytes_sent`` convention).

    A rank sends the ``P - 1`` head blocks of its own tokens that other ranks own (q, then k and
    v together), and after attention the output of its ``H / P`` heads at the other ranks'
    ``T - T_r`` tokens. The backward runs each exchange in reverse: the gradient of the output's
    ``P - 1`` head blocks of its tokens, then q/k/v gradients at the ``T - T_r`` other tokens.

    Args:
        sharding: the layout.
        batch, num_heads, kv_heads, head_dim: ``B``, ``H``, ``Hkv``, ``K``.
        v_head_dim: ``V``; ``None`` means ``head_dim``.
        element_size: bytes per element (4 for fp32).
        backward: include the backward pass.

    Shapes:
        returns ``P`` ints, bytes sent by each rank.
    """
    P = sharding.world_size
    check_heads("ulysses_bytes", num_heads, kv_heads, P)
    V = head_dim if v_head_dim is None else v_head_dim
    qkv = (num_heads * head_dim + kv_heads * (head_dim + V)) // P  # one rank's block, per token
    o = num_heads * V // P
    out = []
    for T_r in sharding.sizes:
        others = sharding.seq_len - T_r
        fwd = (P - 1) * T_r * qkv + others * o
        bwd = (P - 1) * T_r * o + others * qkv
        out.append(batch * element_size * (fwd + (bwd if backward else 0)))
    return out


# ---- pieces shared with hybrid.py ------------------------------------------------------------
def check_heads(op: str, num_heads: int, kv_heads: int, world_size: int) -> None:
    """``H`` and ``Hkv`` must be divisible by the Ulysses group size."""
    if num_heads % world_size:
        raise ValueError(
            f"{op}: num_heads={num_heads} must be divisible by world_size={world_size} (Ulysses "
            "gives every rank num_heads / world_size whole heads)"
        )
    if kv_heads % world_size:
        raise ValueError(
            f"{op}: k/v num_heads={kv_heads} (grouped-query) must be divisible by "
            f"world_size={world_size} (Ulysses gives every rank whole k/v heads); repeat the k/v "
            "heads first"
        )


def check_ulysses(op: str, q: Tensor, k: Tensor, v: Tensor, comm: Comm, sharding: Sharding) -> None:
    """Types, head divisibility and local lengths (errors name the argument and requirement)."""
    if not isinstance(comm, Comm):
        raise TypeError(
            f"{op}: comm must be an attnzoo.distributed.Comm, got {type(comm).__name__}"
        )
    if not isinstance(sharding, Sharding):
        raise TypeError(f"{op}: sharding must be a Sharding, got {type(sharding).__name__}")
    _, T_r, S_r, H, Hkv, _ = check_qkv(op, q, k, v)
    check_heads(op, H, Hkv, comm.world_size)
    if sharding.world_size != comm.world_size:
        raise ValueError(
            f"{op}: sharding.world_size={sharding.world_size} but comm.world_size={comm.world_size}"
        )
    n = sharding.local_len(comm.rank)
    if T_r != n or S_r != n:
        raise ValueError(
            f"{op}: rank {comm.rank} owns {n} tokens of {sharding}, but q has {T_r} and k/v have "
            f"{S_r} (self attention over one sharded sequence)"
        )


def exchange_order(positions: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Index maps between rank order (every rank's positions, concatenated) and global order.

    Shapes:
        positions ``P x [T_p]`` covering ``0..T-1`` once -> order ``[T]`` (global token ->
        slot), back ``[T]`` (slot -> global token)
    """
    back = torch.cat([torch.as_tensor(p, dtype=torch.long) for p in positions])  # [T]
    order = torch.empty_like(back)
    order[back] = torch.arange(len(back))
    return order, back


def seq_to_heads(x: Tensor, comm: Comm, sizes: Sequence[int]) -> Tensor:
    """All-to-all: this rank's tokens of all heads -> every rank's tokens of this rank's heads.

    Shapes:
        x ``[B, sizes[rank], H, D]`` -> ``[B, sum(sizes), H/P, D]`` (rank order)
    """
    return comm.all_to_all(x.contiguous(), scatter_dim=2, gather_dim=1, gather_sizes=sizes)


def heads_to_seq(x: Tensor, comm: Comm, sizes: Sequence[int]) -> Tensor:
    """The inverse all-to-all of :func:`seq_to_heads`.

    Shapes:
        x ``[B, sum(sizes), H/P, D]`` (rank order) -> ``[B, sizes[rank], H, D]``
    """
    return comm.all_to_all(x.contiguous(), scatter_dim=1, gather_dim=2, scatter_sizes=sizes)


# ---- the bench's strategy --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UlyssesStrategy(ExactAttention):
    """Ulysses on contiguous shards (its all-to-all needs no load balance)."""

    def heads_divisor(self, world_size: int) -> int:
        return world_size

    def sharding_kind(self, mask: str) -> str:
        return "contiguous"

    def call(
        self, case: dict[str, Any], shape: CPShape, comm: Comm, setup: Any, sharding: Sharding
    ) -> Callable[..., Tensor]:
        mask = case_mask(case["mask"], case["seq_len"])
        return lambda q, k, v: ulysses_attention(q, k, v, comm=comm, sharding=sharding, mask=mask)

    def analytic_bytes(
        self, case: dict[str, Any], shape: CPShape, sharding: Sharding, rank: int
    ) -> int:
        return ulysses_bytes(sharding, batch=shape.batch, num_heads=shape.heads,
                             kv_heads=shape.heads, head_dim=shape.head_dim,
                             backward=case["mode"] == "fwd+bwd")[rank]  # fmt: skip

    def work_pairs(
        self, case: dict[str, Any], sharding: Sharding, rank: int, world_size: int
    ) -> float | None:
        """Every query row, for ``H / P`` of the heads."""
        return sum(ring_work(sharding, case_mask(case["mask"], case["seq_len"]))) / world_size


register_strategy(UlyssesStrategy("ulysses", "DeepSpeed-Ulysses: all-to-all sequence shards <-> "
                                  "head shards, local exact attention"))  # fmt: skip
