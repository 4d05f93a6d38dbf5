"""The context-parallel bench (``attnzoo bench cp``): every strategy of :mod:`attnzoo.distributed`
run on a sharded sequence by ``world_size`` gloo workers on this machine (or under ``torchrun``),
checked against one process and measured per rank.

For each (world size, strategy, mask, T, mode) case every rank records:

- ``latency``: median over repeats of the slowest rank's wall time of one call (ranks start
  together after a barrier);
- ``cpu``: this rank's CPU seconds for one call (``time.process_time``; workers run one thread, and
  a rank blocked in a receive uses none), i.e. the compute each rank does: the causal ring's load
  balance is the spread of this figure;
- ``peak``: bytes torch allocated during one call on this rank (:func:`peak_memory_bytes`), the
  inputs already sharded;
- ``bytes_sent``: counted by :class:`~attnzoo.distributed.Comm` over one call, next to the
  analytic count of the strategy's ``*_bytes`` function;
- ``pairs``: attended (query, key) pairs of this rank's queries (per batch element and head);
- exactness: the gathered output (and with ``fwd+bwd`` the input gradients) vs the single-process
  op on the whole sequence, max abs error; a case over tolerance is recorded ``exact = False``.

Every rank builds the whole input from the seed (identical on all ranks) and keeps its shard;
the memory figure counts only what the call allocates. On 2 CPU cores wall-time scaling beyond 2
workers says little (4 workers share 2 cores): the report labels it so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.distributed as dist
from rich.console import Console

from attnzoo.bench.cp_plan import MODES, RTOL, CPPlan, under_torchrun
from attnzoo.bench.cp_worker import cp_worker
from attnzoo.bench.env import environment
from attnzoo.bench.runs import finishing, progress_bar, start_run
from attnzoo.distributed.launch import init_from_env, run_workers
from attnzoo.distributed.strategies import STRATEGIES, get_strategies

__all__ = ["MODES", "RTOL", "STRATEGIES", "CPPlan", "get_strategies", "run_cp"]


def run_cp(
    plan: CPPlan,
    store: Any,
    *,
    command: str = "attnzoo bench cp",
    console: Any = None,
    progress: bool = True,
    allow_concurrent: bool = False,
) -> int | None:
    """Run the plan into ``store``; returns the run id (``None`` on the ranks > 0 of a
    ``torchrun`` launch, which only compute). ``allow_concurrent``: see
    :func:`attnzoo.bench.runs.start_run`.

    On one machine every (world size, strategy) group runs in freshly spawned gloo workers (a
    failure or hang is confined to its group, recorded as a skip with the error). Under
    ``torchrun`` the launched processes are the workers: the plan's world sizes must be the
    launched one, and rank 0 writes the store.
    """
    console = console or Console(stderr=True)
    torchrun = under_torchrun()
    if torchrun:
        created = not dist.is_initialized()
        comm = init_from_env()
        if plan.world_sizes != (comm.world_size,):
            plan = dataclasses.replace(plan, world_sizes=(comm.world_size,))
        rows = cp_worker(comm.rank, comm.world_size, plan, plan.cases(comm.world_size))
        gathered: list[Any] = [None] * comm.world_size
        dist.gather_object(rows, gathered if comm.rank == 0 else None, dst=0)
        rank = comm.rank
        if created:
            # every rank tears the group down after the last collective: a rank that exited
            # with the group alive could abort in gloo's threads ("terminate called without an
            # active exception") while rank 0 still writes the store
            dist.barrier()
            dist.destroy_process_group()
        if rank != 0:
            return None
    env = environment()
    env["cp_launch"] = "torchrun" if torchrun else "spawned gloo workers on this machine"
    run_id = start_run(store, kind="cp", suite="cp", command=command,
                       config=dataclasses.asdict(plan), env=env, console=console,
                       allow_concurrent=allow_concurrent)  # fmt: skip
    groups = [(w, s) for w in plan.world_sizes for s in plan.strategies]
    bar = progress_bar(console, progress, "groups")
    with finishing(store, run_id), bar:
        ptask = bar.add_task("cp", total=len(groups))
        for w, name in groups:
            cases = [c for c in plan.cases(w) if c["strategy"] == name]
            todo = [c for c in cases if "skip" not in c]
            for c in cases:
                if "skip" in c:
                    row = {k: v for k, v in c.items() if k != "skip"}
                    store.add_cp_skip(run_id, {**row, "world_size": w, "reason": c["skip"]})
            bar.update(ptask, description=f"world {w}: {name} ({len(todo)} cases)")
            if todo and torchrun:
                results = [r for rows in gathered for r in rows if r["strategy"] == name]
            elif todo:
                try:
                    per_rank = run_workers(cp_worker, w, plan, todo, timeout=plan.timeout)
                except (RuntimeError, TimeoutError) as e:
                    for c in todo:
                        store.add_cp_skip(run_id, {**c, "world_size": w,
                                                   "reason": f"failed: {_brief(e)}"})  # fmt: skip
                    console.print(f"[red]cp {name} at world {w} failed[/red]: {str(e)[:300]}")
                    bar.advance(ptask)
                    continue
                results = [r for rows in per_rank for r in rows]
            else:
                results = []
            for r in results:
                store.add_cp(run_id, r)
            bar.advance(ptask)
    return run_id


def _brief(e: BaseException, keep: int = 400) -> str:
    """The start (what failed, and which rank) and the end (the innermost error) of ``e``."""
    text = str(e)
    return text if len(text) <= 2 * keep else f"{text[:keep]} [...] {text[-keep:]}"
