"""What one rank of ``attnzoo bench cp`` does (see :mod:`attnzoo.bench.cp` for the measurements).

:func:`cp_worker` is the function :func:`~attnzoo.distributed.run_workers` starts on every rank
(or a ``torchrun`` program calls after :func:`~attnzoo.distributed.init_from_env`). All ranks walk
the same cases in the same order, so collectives and group creation line up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnzoo.bench.cp import (
    HYBRID_ULYSSES,
    RTOL,
    STRATEGIES,
    CPPlan,
    decay_of,
    global_inputs,
    mask_of,
    median,
    reference,
    timed,
)
from attnzoo.bench.measure import peak_memory_bytes
from attnzoo.distributed.comm import Comm
from attnzoo.distributed.shard import Sharding


def cp_worker(rank: int, world_size: int, plan: CPPlan, cases: list[dict[str, Any]]) -> list[dict]:
    """Run ``cases`` (those without a ``skip``) on this rank; one row per case."""
    comm = Comm()
    grids: dict[int, Any] = {}
    rows = []
    for case in cases:
        if "skip" in case:
            continue
        rows.append(_case(rank, world_size, plan, case, comm, grids))
    return rows


def _grid(grids: dict[int, Any], world_size: int) -> Any:
    from attnzoo.distributed.hybrid import make_grid

    if world_size not in grids:  # every rank creates the groups once, in the same order
        grids[world_size] = make_grid(HYBRID_ULYSSES, world_size // HYBRID_ULYSSES)
    return grids[world_size]


def _comms(name: str, comm: Comm, grids: dict[int, Any], world_size: int) -> list[Comm]:
    if name == "hybrid":
        return list(_grid(grids, world_size))
    return [comm]


def _call(
    plan: CPPlan,
    case: dict[str, Any],
    comm: Comm,
    grids: dict[int, Any],
    sharding: Sharding,
    world_size: int,
) -> Callable[..., Tensor]:
    name, family = case["strategy"], STRATEGIES[case["strategy"]].family
    mask = mask_of(case["mask"], case["seq_len"])
    if name in ("ring", "ring-contiguous", "ring-allgather"):
        from attnzoo.distributed.ring import ring_attention

        variant = "allgather" if name == "ring-allgather" else "p2p"
        return lambda q, k, v, gk=None: ring_attention(
            q, k, v, comm=comm, sharding=sharding, mask=mask, variant=variant
        )
    if name == "ulysses":
        from attnzoo.distributed.ulysses import ulysses_attention

        return lambda q, k, v, gk=None: ulysses_attention(
            q, k, v, comm=comm, sharding=sharding, mask=mask
        )
    if name == "hybrid":
        from attnzoo.distributed.hybrid import hybrid_attention

        grid = _grid(grids, world_size)
        return lambda q, k, v, gk=None: hybrid_attention(
            q, k, v, grid=grid, sharding=sharding, mask=mask
        )
    from attnzoo.distributed.state_passing import linear_state_passing

    decay = decay_of(plan) if family == "lightning" else None
    return lambda q, k, v, gk=None: linear_state_passing(
        q, k, v, comm=comm, kind=family, decay=decay, gk=gk, sharding=sharding
    )


def layout(case: dict[str, Any], world_size: int) -> Sharding:
    """The case's sharding: over the whole world, or for hybrid over its ring (of
    ``world_size / HYBRID_ULYSSES`` ranks), each ring shard then cut among a Ulysses group."""
    ranks = world_size // HYBRID_ULYSSES if case["strategy"] == "hybrid" else world_size
    return Sharding(case["sharding"], case["seq_len"], ranks)


def positions(case: dict[str, Any], sharding: Sharding, rank: int) -> Tensor:
    """Global token indices this rank holds."""
    if case["strategy"] == "hybrid":
        from attnzoo.distributed.hybrid import hybrid_positions

        u, r = rank % HYBRID_ULYSSES, rank // HYBRID_ULYSSES  # hybrid's rank layout
        return hybrid_positions(sharding, HYBRID_ULYSSES, u, r)
    return sharding.positions(rank)


def work_pairs(case: dict[str, Any], sharding: Sharding, rank: int, world_size: int) -> float:
    """Attended (query, key) pairs this rank computes, per head of the model: ring computes its
    queries' rows for all heads, Ulysses every row for ``H / P`` heads, hybrid its ring shard's
    rows for ``H / U`` heads."""
    from attnzoo.distributed.ring import ring_work

    rows = ring_work(sharding, mask_of(case["mask"], case["seq_len"]))  # per shard of `sharding`
    if case["strategy"] == "ulysses":
        return sum(rows) / world_size
    if case["strategy"] == "hybrid":
        return rows[rank // HYBRID_ULYSSES] / HYBRID_ULYSSES
    return float(rows[rank])


def analytic_bytes(plan: CPPlan, case: dict[str, Any], sharding: Sharding, rank: int) -> int:
    """Bytes this rank should send for one call, from the strategy's own formula."""
    name, family = case["strategy"], STRATEGIES[case["strategy"]].family
    sizes = {"batch": plan.batch, "head_dim": plan.head_dim, "backward": case["mode"] == "fwd+bwd"}
    H = plan.heads
    if name in ("ring", "ring-contiguous", "ring-allgather"):
        from attnzoo.distributed.ring import ring_bytes

        variant = "allgather" if name == "ring-allgather" else "p2p"
        return ring_bytes(sharding, kv_heads=H, variant=variant, **sizes)[rank]
    if name == "ulysses":
        from attnzoo.distributed.ulysses import ulysses_bytes

        return ulysses_bytes(sharding, num_heads=H, kv_heads=H, **sizes)[rank]
    if name == "hybrid":
        from attnzoo.distributed.hybrid import hybrid_bytes

        return hybrid_bytes(sharding, HYBRID_ULYSSES, num_heads=H, kv_heads=H, **sizes)[rank]
    from attnzoo.distributed.state_passing import state_passing_bytes

    world = sharding.world_size
    return state_passing_bytes(world, num_heads=H, kind=family, **sizes)[rank]  # type: ignore[arg-type]


def _case(
    rank: int,
    world_size: int,
    plan: CPPlan,
    case: dict[str, Any],
    comm: Comm,
    grids: dict[int, Any],
) -> dict[str, Any]:
    T, family = case["seq_len"], STRATEGIES[case["strategy"]].family
    sharding = layout(case, world_size)
    pos = positions(case, sharding, rank)  # [T_r]
    device = _device()
    x = {n: t.to(device) for n, t in global_inputs(plan, T, family).items()}
    pos = pos.to(device)
    local = {n: t.index_select(1, pos) for n, t in x.items()}
    grad_out = torch.randn(plan.batch, T, plan.heads, plan.head_dim,
                           generator=torch.Generator().manual_seed(plan.seed + 1)) * 0.5  # fmt: skip
    grad_out = grad_out.to(device)
    g_local = grad_out.index_select(1, pos)
    call = _call(plan, case, comm, grids, sharding, world_size)
    comms = _comms(case["strategy"], comm, grids, world_size)
    backward = case["mode"] == "fwd+bwd"

    def once() -> tuple[Tensor, dict[str, Tensor]]:
        ins = {n: t.detach().requires_grad_(backward and n != "gk") for n, t in local.items()}
        if not backward:
            with torch.no_grad():
                return call(**ins), ins
        out = call(**ins)
        out.backward(g_local)
        return out, ins

    # one untimed call: warm-up, the byte count and the exactness check
    for c in comms:
        c.reset()
    out, ins = once()
    counted = sum(c.bytes_sent for c in comms)
    err, scale = _error(plan, case, x, grad_out, pos, out, ins, backward) or (None, None)
    walls, cpus = [], []
    for _ in range(plan.repeats):
        dist.barrier()
        wall, cpu, _ = timed(once)
        walls.append(wall)
        cpus.append(cpu)
    dist.barrier()
    peak = peak_memory_bytes(once, device)
    slowest = torch.tensor(walls, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # per repeat, the slowest rank (not counted)
    pairs = work_pairs(case, sharding, rank, world_size) if family == "softmax" else None
    return {
        **{k: v for k, v in case.items() if k != "skip"},
        "world_size": world_size,
        "rank": rank,
        "latency_s": median(slowest.tolist()),
        "rank_wall_s": median(walls),
        "rank_cpu_s": median(cpus),
        "peak_bytes": int(peak),
        "bytes_sent": int(counted),
        "bytes_analytic": int(analytic_bytes(plan, case, sharding, rank)),
        "pairs": pairs,
        "max_abs_err": err,
        "ref_max": scale,
        "exact": None if err is None else bool(err <= RTOL * max(1.0, scale)),
    }


def _device() -> torch.device:
    """NCCL needs the tensors on this rank's GPU (``init_from_env`` set it); gloo uses the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _error(
    plan: CPPlan,
    case: dict[str, Any],
    x: dict[str, Tensor],
    grad_out: Tensor,
    pos: Tensor,
    out: Tensor,
    ins: dict[str, Tensor],
    backward: bool,
) -> tuple[float, float] | None:
    """(max abs error of the gathered output and input gradients vs one process, the largest
    magnitude of the latter) on rank 0; ``None`` elsewhere. Gathered as objects over the default group: not counted as the
    strategy's traffic."""
    mine = [out.detach()] + ([ins[n].grad for n in ("q", "k", "v")] if backward else [])
    gathered: list[Any] = [None] * dist.get_world_size()
    packet = (pos.cpu(), [t.cpu() for t in mine])  # compared on the CPU, whatever the device
    dist.gather_object(packet, gathered if dist.get_rank() == 0 else None, dst=0)
    if dist.get_rank() != 0:
        return None
    fn = reference(plan, case, x)
    ref_in = {n: t.detach().requires_grad_(backward and n != "gk") for n, t in x.items()}
    want_out = fn(**ref_in)
    want = [want_out.detach().cpu()]
    if backward:
        want_out.backward(grad_out)
        want += [ref_in[n].grad.cpu() for n in ("q", "k", "v")]
    got = [torch.zeros_like(w) for w in want]
    for p, tensors in gathered:
        for g, t in zip(got, tensors, strict=True):
            g.index_copy_(1, p, t)
    err = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))
    return err, max(float(w.abs().max()) for w in want)
