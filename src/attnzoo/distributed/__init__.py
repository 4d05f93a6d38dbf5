"""Context parallelism on torch.distributed: launching, collectives, sharding, ring attention,
Ulysses, the hybrid (Ulysses x ring) grid and state passing for the linear family."""

from attnzoo.distributed.comm import Comm, Pending
from attnzoo.distributed.hybrid import (
    Grid,
    hybrid_attention,
    hybrid_bytes,
    hybrid_positions,
    make_grid,
)
from attnzoo.distributed.launch import init_from_env, run_workers
from attnzoo.distributed.ring import ring_attention, ring_bytes, ring_work
from attnzoo.distributed.shard import Sharding, gather_unshard, shard, unshard
from attnzoo.distributed.state_passing import linear_state_passing, state_passing_bytes
from attnzoo.distributed.ulysses import ulysses_attention, ulysses_bytes

__all__ = [
    "Comm",
    "Grid",
    "Pending",
    "Sharding",
    "gather_unshard",
    "hybrid_attention",
    "hybrid_bytes",
    "hybrid_positions",
    "init_from_env",
    "linear_state_passing",
    "make_grid",
    "ring_attention",
    "ring_bytes",
    "ring_work",
    "run_workers",
    "shard",
    "state_passing_bytes",
    "ulysses_attention",
    "ulysses_bytes",
    "unshard",
]
