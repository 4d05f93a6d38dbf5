"""Worker functions for spawned gloo processes (module level so ``spawn`` can import them).

Workers compute; the parent process (the test) holds the expected values and compares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnzoo.distributed import Comm, Sharding, gather_unshard, ring_attention, shard
from attnzoo.ops.masks import Mask


def rand(seed: int, *shape: int) -> Tensor:
    """Seeded normal tensor, identical in the parent and in every worker."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- launch -------------------------------------------------------------------------------
def shard_masks(docs: list[int], window: int) -> list[Mask]:
    """The masks every context-parallel test runs: full, causal, a causal and a two-sided sliding
    window (``window``, ``window - 1``), and documents ``docs`` without and with causality."""
    return [
        Mask.full(),
        Mask.causal_(),
        Mask.sliding_window(window),
        Mask.sliding_window(window - 1, causal=False),
        Mask.document(docs),
        Mask.document(docs, causal=True),
    ]


def whoami(rank: int, world_size: int, tag: str) -> dict[str, Any]:
    t = torch.full((2,), float(rank))
    dist.all_reduce(t)  # the group works
    return {
        "rank": rank,
        "world": world_size,
        "tag": tag,
        "sum": t,
        "threads": torch.get_num_threads(),
    }


def fail_on(rank: int, world_size: int, bad: int) -> None:
    if rank == bad:
        raise ValueError(f"deliberate failure on rank {rank}")
    dist.barrier()  # would wait forever for the failed rank
    time.sleep(600)


def sleep_long(rank: int, world_size: int) -> None:
    time.sleep(600)


# ---- comm -------------------------------------------------------------------------------
def comm_sizes(world_size: int) -> list[int]:
    return [2 + r for r in range(world_size)]


def comm_checks(rank: int, world_size: int) -> dict[str, Any]:
    """Every collective forward + backward with seeded inputs; bytes counted per collective."""
    comm = Comm()
    sizes = comm_sizes(world_size)
    res: dict[str, Any] = {}

    def run(name: str, x: Tensor, fn: Any, g_seed: int) -> None:
        comm.reset()
        x = x.clone().requires_grad_(True)
        y = fn(x)
        fwd = comm.bytes_sent
        (y * rand(g_seed, *y.shape)).sum().backward()
        res[name] = (y.detach(), x.grad, fwd, comm.bytes_sent - fwd)

    P = world_size
    run("all_gather", rand(rank, 2, sizes[rank], 3), lambda x: comm.all_gather(x, 1, sizes), 100)
    run(
        "all_to_all",
        rand(10 + rank, 2, sizes[rank], 2 * P),
        lambda x: comm.all_to_all(x, 2, 1, gather_sizes=sizes),
        200 + rank,
    )
    run(
        "send_recv",
        rand(20 + rank, sizes[rank], 3),
        lambda x: comm.send_recv(
            x, (rank + 1) % P, (rank - 1) % P, shape=(sizes[(rank - 1) % P], 3)
        ),
        300 + rank,
    )
    run("all_reduce", rand(30 + rank, 5, 7), comm.all_reduce, 400 + rank)
    # a subgroup of ranks {0, P-1}: ranks inside it are renumbered 0, 1
    members = [0, P - 1]
    group = dist.new_group(members)
    if rank in members:
        sub = Comm(group)
        x = rand(40 + rank, 3, 2)
        peer = 1 - sub.rank
        res["sub"] = (sub.rank, sub.world_size, sub.all_gather(x, 0), sub.send_recv(x, peer, peer))
    res["errors"] = errors_of(
        lambda: comm.all_to_all(torch.zeros(2, P + 1, 1), 1, 2),
        lambda: comm.all_to_all(torch.zeros(2, P, 1), 1, 1),
        lambda: comm.all_gather(torch.zeros(2, 3), 1, sizes=[3] * (P + 1)),
        lambda: comm.all_gather(torch.zeros(2, 3), 5),
        lambda: comm.send_recv(torch.zeros(2), P, 0),
        lambda: comm.shift_async(torch.zeros(2), rank, (rank + 1) % P),
    )
    return res


def errors_of(*calls: Any) -> list[str]:
    """``"TypeName: message"`` of what each call raises (``"no error"`` if it returns)."""
    msgs = []
    for call in calls:
        try:
            call()
        except (ValueError, TypeError) as e:
            msgs.append(f"{type(e).__name__}: {e}")
        else:
            msgs.append("no error")
    return msgs


# ---- shard --------------------------------------------------------------------------------
def gather_checks(rank: int, world_size: int, x: Tensor, shardings: list[Sharding]) -> list[Any]:
    comm = Comm()
    out = []
    for sh in shardings:
        local = shard(x, sh, rank).requires_grad_(True)
        full = gather_unshard(local, sh, comm)
        (full * rand(7, *full.shape)).sum().backward()
        out.append((full.detach(), local.grad))
    other = Sharding("contiguous", x.shape[1], world_size + 1)
    errors = errors_of(
        lambda: gather_unshard(shard(x, other, 0), other, comm),
        lambda: gather_unshard(x[:, :1], shardings[0], comm),
    )
    return [out, errors]


# ---- ring attention -------------------------------------------------------------------------
@dataclass(frozen=True)
class RingCase:
    """One ring-attention problem over the global sequence (inputs regenerated from ``seed``)."""

    kind: str
    T: int
    mask: Mask
    variant: str
    B: int = 1
    H: int = 2
    Hkv: int = 2
    K: int = 8
    seed: int = 0
    dtype: str = "float32"
    tiles: tuple[int, int] | None = None  # (block_q, block_k) of the p2p path; None: defaults

    def inputs(self) -> list[Tensor]:
        """Global q, k, v and output gradient."""
        s = self.seed
        return [
            rand(s, self.B, self.T, self.H, self.K),
            rand(s + 1, self.B, self.T, self.Hkv, self.K),
            rand(s + 2, self.B, self.T, self.Hkv, self.K),
            rand(s + 3, self.B, self.T, self.H, self.K),
        ]


def ring_cases(rank: int, world_size: int, cases: list[RingCase]) -> list[Any]:
    """Local output, local q/k/v grads and bytes (fwd, fwd+bwd) of every case."""
    comm = Comm()
    out = []
    for case in cases:
        sh = Sharding(case.kind, case.T, world_size)  # type: ignore[arg-type]
        dtype = getattr(torch, case.dtype)
        q, k, v, g = (shard(t, sh, rank).to(dtype) for t in case.inputs())
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        comm.reset()
        tiles = (
            {} if case.tiles is None else dict(zip(("block_q", "block_k"), case.tiles, strict=True))
        )
        o = ring_attention(q, k, v, comm=comm, sharding=sh, mask=case.mask, variant=case.variant,  # type: ignore[arg-type]
                           **tiles)  # fmt: skip
        fwd = comm.bytes_sent
        (o * g).sum().backward()
        out.append((o.detach(), q.grad, k.grad, v.grad, fwd, comm.bytes_sent))
    return out


def ringerrors_of(rank: int, world_size: int) -> list[str]:
    """Messages of the errors ring_attention raises for bad arguments."""
    comm = Comm()
    sh = Sharding("contiguous", 8 * world_size, world_size)
    q = torch.randn(1, 8, 2, 4)

    def call(q: Tensor = q, sharding: Any = sh, variant: str = "p2p", mask: Any = None) -> Any:
        return ring_attention(q, q, q, comm=comm, sharding=sharding, mask=mask, variant=variant)

    return errors_of(
        lambda: call(variant="ring"),
        lambda: call(q=q[:, :5]),
        lambda: call(sharding=Sharding("contiguous", 16, world_size + 1)),
        lambda: call(mask=Mask.document([3])),
        lambda: call(sharding=(8, 2)),
        lambda: call(mask="sliding"),
    )


def ring_suite(rank: int, world_size: int, cases: list[RingCase]) -> tuple[list[Any], list[str]]:
    """Every case of one world size, plus the argument errors, in one spawn."""
    return ring_cases(rank, world_size, cases), ringerrors_of(rank, world_size)
