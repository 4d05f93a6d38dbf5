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
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attnzoo.config import suggest

MODES = ("fwd", "fwd+bwd")
SOFTMAX_MASKS = ("full", "causal", "sliding-window", "document")
HYBRID_ULYSSES = 2  # the hybrid grid: Ulysses groups of 2, ring across world / 2 of them
# exact: max |distributed - one process| <= RTOL * max(1, max |one process|) over the output
# (and input gradients); unnormalised linear attention sums thousands of terms (|o| ~ 100)
RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One context-parallel strategy: how to shard, what it computes, what it sends.

    ``family``: ``"softmax"`` (compared with exact softmax attention) or a linear kind
    (``"linear"``, ``"lightning"``, ``"gla"``; compared with the single-process op).
    ``sharding``: the sharding kind for each mask (causal masks use zigzag for load balance where
    the strategy allows). ``min_world``: smallest world size it runs at (hybrid needs a 2-D grid).
    """

    name: str
    family: str
    masks: tuple[str, ...]
    description: str
    min_world: int = 1

    def heads_divisor(self, world_size: int) -> int:
        """Heads must be a multiple of this (Ulysses splits them over the world, hybrid over
        its Ulysses groups of ``HYBRID_ULYSSES``)."""
        return {"ulysses": world_size, "hybrid": HYBRID_ULYSSES}.get(self.name, 1)

    def sharding_kind(self, mask: str) -> str:
        if self.family != "softmax" or self.name in ("ulysses", "ring-contiguous"):
            return "contiguous"
        return "zigzag" if mask != "full" else "contiguous"


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "ring",
            "softmax",
            SOFTMAX_MASKS,
            "ring attention, P2P K/V shifts overlapped "
            "with compute; zigzag sharding for masked (causal) cases",
        ),
        Strategy(
            "ring-contiguous",
            "softmax",
            SOFTMAX_MASKS,
            "ring attention (P2P) on contiguous shards: no causal load balance (the baseline "
            "that zigzag sharding fixes)",
        ),
        Strategy(
            "ring-allgather",
            "softmax",
            SOFTMAX_MASKS,
            "ring attention's all-gather variant: gather all K/V, attend once",
        ),
        Strategy(
            "ulysses",
            "softmax",
            SOFTMAX_MASKS,
            "DeepSpeed-Ulysses: all-to-all sequence shards <-> head shards, local exact attention",
        ),
        Strategy(
            "hybrid",
            "softmax",
            SOFTMAX_MASKS,
            "Ulysses inside groups of 2 x ring across them (USP)",
            min_world=4,
        ),
        Strategy(
            "state-linear",
            "linear",
            ("causal",),
            "linear attention, chunk states combined across ranks (all-gather prefix)",
        ),
        Strategy(
            "state-lightning",
            "lightning",
            ("causal",),
            "Lightning attention (per-head decay), states combined across ranks",
        ),
        Strategy(
            "state-gla",
            "gla",
            ("causal",),
            "gated linear attention (data-dependent gates), states combined across ranks",
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class CPPlan:
    """The grid of one ``bench cp`` run (validated on construction)."""

    world_sizes: tuple[int, ...] = (1, 2, 4)
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    masks: tuple[str, ...] = ("full", "causal")
    seq_lens: tuple[int, ...] = (1024, 4096)
    modes: tuple[str, ...] = ("fwd",)
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    repeats: int = 3
    seed: int = 0
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ValueError(f"--strategy: unknown strategy {s!r}{suggest(s, list(STRATEGIES))}"
                                 f"; known: {', '.join(STRATEGIES)}")  # fmt: skip
        for m in self.masks:
            if m not in SOFTMAX_MASKS:
                raise ValueError(f"--masks: unknown mask {m!r}; expected some of {SOFTMAX_MASKS}")
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"--mode: expected some of {MODES}, got {m!r}")
        for arg, values in (("--world-size", self.world_sizes), ("--seq-lens", self.seq_lens),
                            ("--strategy", self.strategies), ("--masks", self.masks),
                            ("--mode", self.modes)):  # fmt: skip
            if not values:
                raise ValueError(f"{arg}: expected at least one value")
        if any(w < 1 for w in self.world_sizes):
            raise ValueError(f"--world-size: expected sizes >= 1, got {self.world_sizes}")
        for arg, value in (("--batch", self.batch), ("--heads", self.heads),
                           ("--head-dim", self.head_dim), ("--repeats", self.repeats)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}: expected an int >= 1, got {value!r}")
        for T in self.seq_lens:
            for w in self.world_sizes:
                if T % (2 * w):
                    raise ValueError(
                        f"--seq-lens: T={T} must be divisible by 2 x world size {w} (zigzag "
                        "sharding splits the sequence into 2 x world chunks)"
                    )

    def cases(self, world_size: int) -> list[dict[str, Any]]:
        """The (strategy, mask, T, mode) cases that run at ``world_size``, and those skipped
        (with the reason) in the same list (``skip`` key)."""
        out = []
        for name in self.strategies:
            st = STRATEGIES[name]
            for mask in self.masks:
                for T in self.seq_lens:
                    for mode in self.modes:
                        case = {"strategy": name, "mask": mask, "seq_len": T, "mode": mode,
                                "sharding": st.sharding_kind(mask)}  # fmt: skip
                        if mask not in st.masks:
                            case["skip"] = f"{name} computes {st.masks} only"
                        elif world_size < st.min_world:
                            case["skip"] = f"{name} needs world size >= {st.min_world}"
                        elif name == "hybrid" and world_size % 2:
                            case["skip"] = "hybrid needs an even world size (Ulysses groups of 2)"
                        elif self.heads % st.heads_divisor(world_size):
                            case["skip"] = (f"heads={self.heads} not divisible by "
                                            f"{st.heads_divisor(world_size)} ({name} splits "
                                            "heads)")  # fmt: skip
                        out.append(case)
        return out


def global_inputs(plan: CPPlan, T: int, family: str) -> dict[str, Tensor]:
    """The whole sequence's inputs, identical on every rank (one generator from the seed)."""
    g = torch.Generator().manual_seed(plan.seed * 1_000_003 + T)
    shape = (plan.batch, T, plan.heads, plan.head_dim)
    x = {n: torch.randn(*shape, generator=g) * 0.5 for n in ("q", "k", "v")}
    if family == "gla":  # GLA's forget gates: logsigmoid(.)/16 as in the GLA paper
        x["gk"] = torch.nn.functional.logsigmoid(torch.randn(*shape, generator=g)) / 16
    return x


def mask_of(name: str, T: int) -> Any:
    """The global mask object of a case (documents: four equal documents crossing shards)."""
    from attnzoo.ops.masks import Mask

    if name == "sliding-window":
        return Mask.sliding_window(max(T // 8, 1))
    if name == "document":
        return Mask.document([T // 4] * 3 + [T - 3 * (T // 4)])
    return name


def decay_of(plan: CPPlan) -> Tensor:
    """Lightning's per-head log decay (ALiBi-style slopes, as in the Lightning paper)."""
    H = plan.heads
    return -torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])


def reference(plan: CPPlan, case: dict[str, Any], x: dict[str, Tensor]) -> Callable[..., Tensor]:
    """The single-process op of the case, as a function of the inputs."""
    family = STRATEGIES[case["strategy"]].family
    if family == "softmax":
        from attnzoo.ops.softmax import softmax_attention

        mask = mask_of(case["mask"], case["seq_len"])
        return lambda q, k, v, gk=None: softmax_attention(q, k, v, mask=mask)
    if family == "gla":
        from attnzoo.ops.gla import gated_linear_attention

        return lambda q, k, v, gk: gated_linear_attention(q, k, v, gk)
    from attnzoo.ops.linear import linear_attention

    decay = decay_of(plan) if family == "lightning" else None
    return lambda q, k, v, gk=None: linear_attention(q, k, v, causal=True, decay=decay)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def under_torchrun() -> bool:
    """This process was started by ``torchrun`` (its environment describes the group)."""
    import os

    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    )


def run_cp(
    plan: CPPlan,
    store: Any,
    *,
    command: str = "attnzoo bench cp",
    console: Any = None,
    progress: bool = True,
) -> int | None:
    """Run the plan into ``store``; returns the run id (``None`` on the ranks > 0 of a
    ``torchrun`` launch, which only compute).

    On one machine every (world size, strategy) group runs in freshly spawned gloo workers (a
    failure or hang is confined to its group, recorded as a skip with the error). Under
    ``torchrun`` the launched processes are the workers: the plan's world sizes must be the
    launched one, and rank 0 writes the store.
    """
    from rich.console import Console

    from attnzoo.bench.cp_worker import cp_worker
    from attnzoo.bench.env import environment, git_sha
    from attnzoo.bench.runs import finishing, progress_bar
    from attnzoo.distributed.launch import init_from_env, run_workers

    console = console or Console(stderr=True)
    torchrun = under_torchrun()
    if torchrun:
        import torch.distributed as dist

        comm = init_from_env()
        if plan.world_sizes != (comm.world_size,):
            plan = dataclasses.replace(plan, world_sizes=(comm.world_size,))
        rows = cp_worker(comm.rank, comm.world_size, plan, plan.cases(comm.world_size))
        gathered: list[Any] = [None] * comm.world_size
        dist.gather_object(rows, gathered if comm.rank == 0 else None, dst=0)
        if comm.rank != 0:
            return None
    env = environment()
    env["cp_launch"] = "torchrun" if torchrun else "spawned gloo workers on this machine"
    run_id = store.begin_run(kind="cp", suite="cp", command=command,
                             config=dataclasses.asdict(plan), env=env, git_sha=git_sha())  # fmt: skip
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
                                                   "reason": f"failed: {str(e)[-500:]}"})  # fmt: skip
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
