"""Worker functions for the Ulysses, hybrid and state-passing tests (spawned gloo processes).

Workers compute; the parent process (the test) holds the expected values and compares. Every
case's inputs are regenerated from its seed, identically in the parent and in each worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from attnzoo.distributed.comm import Comm
from attnzoo.distributed.hybrid import Grid, hybrid_attention, hybrid_positions, make_grid
from attnzoo.distributed.shard import Sharding, shard
from attnzoo.distributed.state_passing import linear_state_passing
from attnzoo.distributed.ulysses import ulysses_attention
from attnzoo.ops.linear import feature_map
from attnzoo.ops.masks import Mask
from tests.distributed.ring_workers import errors_of, rand


# ---- softmax attention cases (Ulysses and hybrid) --------------------------------------------
@dataclass(frozen=True)
class AttnCase:
    """One softmax-attention problem over the global sequence.

    ``ulysses``/``ring`` are the grid sizes of a hybrid case (ignored by Ulysses cases).
    """

    kind: str
    T: int
    mask: Mask
    H: int = 4
    Hkv: int = 2
    B: int = 1
    K: int = 4
    V: int = 3
    impl: str = "auto"
    variant: str = "p2p"
    ulysses: int = 1
    ring: int = 1
    seed: int = 0

    def inputs(self) -> list[Tensor]:
        """Global q, k, v and output gradient."""
        s, B, T = self.seed, self.B, self.T
        return [
            rand(s, B, T, self.H, self.K),
            rand(s + 1, B, T, self.Hkv, self.K),
            rand(s + 2, B, T, self.Hkv, self.V),
            rand(s + 3, B, T, self.H, self.V),
        ]


def _fwd_bwd(
    fn: Callable[..., Tensor], local: list[Tensor], comms: list[Comm]
) -> tuple[Tensor, ...]:
    """Output, input grads, forward bytes and fwd+bwd bytes (summed over ``comms``)."""
    *xs, g = local
    xs = [t.clone().requires_grad_(True) for t in xs]
    for c in comms:
        c.reset()
    o = fn(*xs)
    fwd = sum(c.bytes_sent for c in comms)
    (o * g).sum().backward()
    total = sum(c.bytes_sent for c in comms)
    return (o.detach(), *(t.grad for t in xs), fwd, total)


def ulysses_suite(rank: int, world_size: int, cases: list[AttnCase]) -> dict[str, Any]:
    """Every Ulysses case of one world size (local results) and the argument errors."""
    comm = Comm()
    results = []
    for c in cases:
        sh = Sharding(c.kind, c.T, world_size)  # type: ignore[arg-type]
        local = [shard(t, sh, rank) for t in c.inputs()]

        def fn(q: Tensor, k: Tensor, v: Tensor, c: AttnCase = c, sh: Sharding = sh) -> Tensor:
            return ulysses_attention(q, k, v, comm=comm, sharding=sh, mask=c.mask, impl=c.impl)

        results.append(_fwd_bwd(fn, local, [comm]))
    P = world_size
    sh = Sharding("contiguous", 4 * P, P)
    x = torch.zeros(1, 4, P, 2)

    def call(q: Tensor = x, k: Tensor = x, sharding: Any = sh) -> Any:
        return ulysses_attention(q, k, k, comm=comm, sharding=sharding)

    errors = errors_of(
        lambda: call(q=torch.zeros(1, 4, P + 1, 2), k=torch.zeros(1, 4, 1, 2)),  # H % P
        lambda: call(q=torch.zeros(1, 4, 2 * P, 2), k=torch.zeros(1, 4, 1, 2)),  # Hkv % P
        lambda: call(q=x[:, :3], k=x[:, :3]),  # wrong local length
        lambda: call(sharding=Sharding("contiguous", 8 * P, P + 1)),
        lambda: call(sharding=(4 * P, P)),
    )
    return {"results": results, "errors": errors}


def hybrid_suite(
    rank: int, world_size: int, grids: list[tuple[int, int]], cases: list[AttnCase]
) -> dict[str, Any]:
    """Every hybrid case; ``grids`` lists the ``(ulysses, ring)`` shapes made, in this order."""
    made: dict[tuple[int, int], Grid] = {shape: make_grid(*shape, timeout=60.0) for shape in grids}
    results = []
    for c in cases:
        grid = made[(c.ulysses, c.ring)]
        u, r = grid.ulysses.rank, grid.ring.rank
        assert r * c.ulysses + u == rank, "grid coordinates must give the global rank"
        sh = Sharding(c.kind, c.T, c.ring)  # type: ignore[arg-type]
        pos = hybrid_positions(sh, c.ulysses, u, r)
        local = [t.index_select(1, pos) for t in c.inputs()]

        def fn(q: Tensor, k: Tensor, v: Tensor, c: AttnCase = c, g: Grid = grid) -> Tensor:
            sh_ = Sharding(c.kind, c.T, c.ring)  # type: ignore[arg-type]
            return hybrid_attention(
                q,
                k,
                v,
                grid=g,
                sharding=sh_,
                mask=c.mask,
                variant=c.variant,  # type: ignore[arg-type]
            )

        results.append((pos, *_fwd_bwd(fn, local, [grid.ulysses, grid.ring])))
    g22 = made.get((2, 2))
    errors: list[str] = []
    if g22 is not None:
        sh = Sharding("contiguous", 8, 2)
        n = len(hybrid_positions(sh, 2, g22.ulysses.rank, g22.ring.rank))

        def call(H: int = 2, Hkv: int = 2, sharding: Any = sh, grid: Any = g22) -> Any:
            q, kv = torch.zeros(1, n, H, 2), torch.zeros(1, n, Hkv, 2)
            return hybrid_attention(q, kv, kv, grid=grid, sharding=sharding)

        errors = errors_of(
            lambda: call(H=3, Hkv=3),  # heads % ulysses
            lambda: call(H=2, Hkv=1),  # kv heads % ulysses
            lambda: call(sharding=Sharding("contiguous", 8, 4)),  # sharding over the world
            lambda: call(grid=(g22.ulysses, g22.ring, None)),
            lambda: make_grid(3, 1),
            lambda: make_grid(0, 4),
            lambda: hybrid_positions(Sharding("contiguous", 3, 2), 2, 0, 1),  # 1 token, 2 pieces
        )
    return {"results": results, "errors": errors}


# ---- state passing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StateCase:
    """One linear-family problem (global inputs regenerated from ``seed``): the op ``kind``
    (``"linear"``, with a per-head ``decay`` or none, or ``"gated"``)."""

    kind: str
    T: int
    combine: str = "allgather"
    causal: bool = True
    normalize: bool = False
    H: int = 2
    Hkv: int = 2
    B: int = 2
    K: int = 3
    V: int = 4
    gate: float = 1.0  # gated kind: gates are gate * logsigmoid(noise)
    impl: str = "auto"
    chunk_size: int = 4
    seed: int = 0
    decay: bool = False

    def inputs(self) -> dict[str, Tensor]:
        """Global q, k, v, the output gradient, and ``decay`` / ``gk`` for their kinds."""
        s, B, T, H, Hkv = self.seed, self.B, self.T, self.H, self.Hkv
        q, k = rand(s, B, T, H, self.K), rand(s + 1, B, T, Hkv, self.K)
        if self.kind != "gated":  # non-negative features, as the normaliser assumes
            q, k = feature_map(q, "elu+1"), feature_map(k, "elu+1")
        xs = {
            "q": q,
            "k": k,
            "v": rand(s + 2, B, T, Hkv, self.V),
            "g": rand(s + 3, B, T, H, self.V),
        }
        if self.decay:
            xs["decay"] = -torch.linspace(0.05, 0.9, H)
        if self.kind == "gated":
            xs["gk"] = F.logsigmoid(rand(s + 4, B, T, H, self.K)) * self.gate
        return xs


SHARDED = ("q", "k", "v", "g", "gk")  # split over ranks; decay is replicated


def state_suite(rank: int, world_size: int, cases: list[StateCase]) -> dict[str, Any]:
    """Local output, gradients (``decay``'s is this rank's partial sum) and bytes of every case."""
    comm = Comm()
    results = []
    for c in cases:
        sh = Sharding("contiguous", c.T, world_size)
        xs = {n: shard(t, sh, rank) if n in SHARDED else t for n, t in c.inputs().items()}
        g = xs.pop("g")
        leaves = {n: t.clone().requires_grad_(True) for n, t in xs.items()}
        comm.reset()
        o = linear_state_passing(
            leaves["q"],
            leaves["k"],
            leaves["v"],
            comm=comm,
            kind=c.kind,  # type: ignore[arg-type]
            decay=leaves.get("decay"),
            gk=leaves.get("gk"),
            causal=c.causal,
            normalize=c.normalize,
            sharding=sh,
            combine=c.combine,  # type: ignore[arg-type]
            impl=c.impl,
            chunk_size=c.chunk_size,
        )
        fwd = comm.bytes_sent
        (o * g).sum().backward()
        grads = {n: t.grad for n, t in leaves.items()}
        results.append((o.detach(), grads, fwd, comm.bytes_sent))
    P = world_size
    x = torch.rand(1, 4, 2, 3)

    def call(sharding: Any = None, **kw: Any) -> Any:
        args = {"kind": "linear", **kw}
        return linear_state_passing(x, x, x, comm=comm, sharding=sharding, **args)

    errors = errors_of(
        lambda: call(sharding=Sharding("zigzag", 4 * P, P)),
        lambda: call(sharding=Sharding("striped", 4 * P, P)),
        lambda: call(sharding=Sharding("contiguous", 4 * P + P, P)),  # 5 tokens per rank
        lambda: call(combine="tree"),
        lambda: call(kind="mamba"),
        lambda: call(decay=-torch.ones(3)),  # a decay of the wrong shape
        lambda: call(kind="gated", gk=x[:, :2]),  # gk of the wrong shape
        lambda: call(decay=-torch.ones(2), causal=False),
        lambda: call(kind="lightning"),  # the first version's kind names
        lambda: call(kind="gla"),
    )
    dist.barrier()
    return {"results": results, "errors": errors}
