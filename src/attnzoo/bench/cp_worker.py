"""What one rank of ``attnzoo bench cp`` does (see :mod:`attnzoo.bench.cp` for the measurements).

:func:`cp_worker` is the function :func:`~attnzoo.distributed.run_workers` starts on every rank
(or a ``torchrun`` program calls after :func:`~attnzoo.distributed.init_from_env`). All ranks walk
the same cases in the same order, so collectives and group creation line up. Everything that
depends on the strategy comes from its registered :class:`~attnzoo.distributed.strategies.Strategy`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnzoo.bench.cp_plan import RTOL, CPPlan, median, timed
from attnzoo.bench.measure import peak_memory_bytes
from attnzoo.distributed.comm import Comm
from attnzoo.distributed.strategies import Strategy, get_strategies


def cp_worker(rank: int, world_size: int, plan: CPPlan, cases: list[dict[str, Any]]) -> list[dict]:
    """Run ``cases`` (those without a ``skip``) on this rank; one row per case."""
    comm = Comm()
    setups: dict[str, Any] = {}
    rows = []
    for case in cases:
        if "skip" in case:
            continue
        st = get_strategies([case["strategy"]])[0]
        if st.name not in setups:  # every rank creates the groups once, in the same order
            setups[st.name] = st.setup(world_size)
        rows.append(_case(rank, world_size, plan, case, st, comm, setups[st.name]))
    return rows


def _case(
    rank: int,
    world_size: int,
    plan: CPPlan,
    case: dict[str, Any],
    st: Strategy,
    comm: Comm,
    setup: Any,
) -> dict[str, Any]:
    T, shape = case["seq_len"], plan.shape
    sharding = st.layout(case, world_size)
    device = _device()
    pos = st.positions(case, sharding, rank).to(device)  # [T_r]
    x = {n: t.to(device) for n, t in st.inputs(shape, T).items()}
    local = {n: t.index_select(1, pos) for n, t in x.items()}
    grad_out = torch.randn(plan.batch, T, plan.heads, plan.head_dim,
                           generator=torch.Generator().manual_seed(plan.seed + 1)) * 0.5  # fmt: skip
    grad_out = grad_out.to(device)
    g_local = grad_out.index_select(1, pos)
    call = st.call(case, shape, comm, setup, sharding)
    comms = st.comms(comm, setup)
    backward = case["mode"] == "fwd+bwd"
    grads = st.grad_inputs

    def once() -> tuple[Tensor, dict[str, Tensor]]:
        ins = {n: t.detach().requires_grad_(backward and n in grads) for n, t in local.items()}
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
    err, scale = _error(st, plan, case, x, grad_out, pos, out, ins, backward) or (None, None)
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
    return {
        **{k: v for k, v in case.items() if k != "skip"},
        "world_size": world_size,
        "rank": rank,
        "latency_s": median(slowest.tolist()),
        "rank_wall_s": median(walls),
        "rank_cpu_s": median(cpus),
        "peak_bytes": int(peak),
        "bytes_sent": int(counted),
        "bytes_analytic": int(st.analytic_bytes(case, shape, sharding, rank)),
        "pairs": st.work_pairs(case, sharding, rank, world_size),
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
    st: Strategy,
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
    magnitude of the latter) on rank 0; ``None`` elsewhere. Gathered as objects over the default
    group: not counted as the strategy's traffic."""
    grads = st.grad_inputs
    mine = [out.detach()] + ([ins[n].grad for n in grads] if backward else [])
    gathered: list[Any] = [None] * dist.get_world_size()
    packet = (pos.cpu(), [t.cpu() for t in mine])  # compared on the CPU, whatever the device
    dist.gather_object(packet, gathered if dist.get_rank() == 0 else None, dst=0)
    if dist.get_rank() != 0:
        return None
    fn = st.reference(case, plan.shape)
    ref_in = {n: t.detach().requires_grad_(backward and n in grads) for n, t in x.items()}
    want_out = fn(**ref_in)
    want = [want_out.detach().cpu()]
    if backward:
        want_out.backward(grad_out)
        want += [ref_in[n].grad.cpu() for n in grads]
    got = [torch.zeros_like(w) for w in want]
    for p, tensors in gathered:
        for g, t in zip(got, tensors, strict=True):
            g.index_copy_(1, p, t)
    err = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))
    return err, max(float(w.abs().max()) for w in want)
