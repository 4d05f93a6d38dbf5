"""Ours against a peer implementation of the same math, measured in one run (``attnzoo bench peers``).

A :class:`PeerCase` names a mechanism, the peer (a package nobody here wrote: fla-core's
pure-PyTorch references, timm's blocks) and how to build, at one size, the two callables with
the *same inputs and weights*. The runner checks they agree (max abs difference against a
tolerance relative to the output's scale), then times them interleaved (so machine noise hits
both alike), records each one's peak memory, and stores ``ratio = peer time / our time``
(> 1: ours is faster), each side's spread (interquartile range / median of its timings), with
our FLOP rate as a fraction of this machine's GEMM rate (a 1024^3
fp32 matmul) timed round-robin with the two, so that a shared machine's changing speed hits the
rate and its limit alike (the run also records one GEMM rate at its start). A case whose peer
package is not installed is recorded as skipped, never faked. A ratio is marked unreliable
(first in the row's ``detail``; the spreads in ``ours_spread``/``peer_spread`` say so to the
report) when either side's spread exceeds ``stats.NOISY_SPREAD`` or there are fewer than
``stats.MIN_REPEATS`` repeats (then the spreads are unknown, ``NULL``).

Peers are optional packages: ``pip install -e '.[peers]'`` (``make run`` does).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console

from attnzoo.bench.env import environment, gemm_call, gemm_gflops, keep_freed_memory
from attnzoo.bench.measure import interleaved_timings, peak_memory_bytes
from attnzoo.bench.runs import finishing, progress_bar, start_run
from attnzoo.peers import (
    CASES,
    TRAIN_TAG,
    PeerCase,
    PeerPair,
    get_cases,
    register_case,
    times_training,
)
from attnzoo.stats import MIN_REPEATS, NOISY_SPREAD, TimeStats, trust
from attnzoo.store import Store

__all__ = [
    "CASES", "PROFILE_MAX_S", "TRAIN_TAG", "PeerCase", "PeerPair", "PeerPlan", "compare",
    "fmt_ratio", "get_cases", "ratio_doubt", "register_case", "run_peers", "times_training",
]  # fmt: skip

# Peak memory comes from torch's profiler, whose records grow with the number of ops a call
# runs: a token loop's backward at T = 8k (78 s) took the process past 24 GB. Longer calls are
# not profiled; their row says so.
PROFILE_MAX_S = 10.0


@dataclass(frozen=True)
class PeerPlan:
    """What ``attnzoo bench peers`` runs: cases, sizes per case (``None``: the case's own), repeats."""

    name: str = "quick"
    cases: tuple[str, ...] | None = None
    sizes: tuple[int, ...] | None = None
    repeats: int = 5
    warmup: int = 1
    memory: bool = True

    def __post_init__(self) -> None:
        if self.name not in ("quick", "full", "custom"):
            raise ValueError(f"--suite must be quick or full, got {self.name!r}")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.sizes is not None and any(s < 1 for s in self.sizes):
            raise ValueError(f"--sizes must be positive, got {self.sizes}")

    def sizes_of(self, case: PeerCase) -> tuple[int, ...]:
        if self.sizes is not None:
            return self.sizes
        return case.quick_sizes if self.name == "quick" else case.sizes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cases": self.cases, "sizes": self.sizes,
                "repeats": self.repeats, "warmup": self.warmup, "memory": self.memory}  # fmt: skip


def compare(ours: torch.Tensor, peer: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, that difference relative to max |peer|)."""
    if ours.shape != peer.shape:
        raise ValueError(f"ours has shape {tuple(ours.shape)}, the peer {tuple(peer.shape)}")
    ours, peer = ours.detach(), peer.detach()
    diff = float((ours.double() - peer.double()).abs().max()) if ours.numel() else 0.0
    scale = float(peer.double().abs().max()) if peer.numel() else 0.0
    return diff, diff / scale if scale > 0 else diff


def run_peers(
    plan: PeerPlan,
    store: Store,
    *,
    command: str = "attnzoo bench peers",
    console: Console | None = None,
    progress: bool = True,
    allow_concurrent: bool = False,
) -> int:
    """Run ``plan`` into ``store``; returns the run id (Ctrl-C keeps what was measured).
    ``allow_concurrent``: see :func:`attnzoo.bench.runs.start_run`."""
    console = console or Console(stderr=True)
    cases = get_cases(plan.cases)
    keep_freed_memory()
    env = environment()
    gemm = gemm_gflops()
    run_id = start_run(
        store, kind="peers", suite=plan.name, command=command, config=plan.to_dict(), env=env,
        console=console, gemm_gflops=gemm, allow_concurrent=allow_concurrent,
    )  # fmt: skip
    work = [(c, n) for c in cases for n in plan.sizes_of(c)]
    bar = progress_bar(console, progress)
    with finishing(store, run_id), torch.no_grad(), bar:
        task = bar.add_task("peers", total=len(work))
        for case, n in work:
            bar.update(task, description=f"{case.name} n={n}")
            _one(store, run_id, case, n, plan)
            bar.advance(task)
    return run_id


def _skip(store: Store, run_id: int, case: PeerCase, n: int, kind: str, reason: str) -> None:
    store.add_skip(run_id, {"mixer": case.mechanism, "impl": f"peer:{case.name}", "pattern": "-",
                            "mask": "-", "mode": "fwd", "seq_len": n, "kind": kind,
                            "reason": reason})  # fmt: skip


def _one(store: Store, run_id: int, case: PeerCase, n: int, plan: PeerPlan) -> None:
    missing = case.missing()
    if missing:
        _skip(store, run_id, case, n, "skipped",
              f"peer package(s) {', '.join(missing)} not installed (pip install -e '.[peers]')")  # fmt: skip
        return
    try:
        pair = case.build(n, torch.Generator().manual_seed(n))
        diff, rel = compare(*pair.outputs())
    except Exception as e:  # a broken case is recorded, the run goes on
        _skip(store, run_id, case, n, "failed", f"{type(e).__name__}: {e}")
        return
    ok = rel <= case.rtol
    t0 = time.perf_counter()
    fns = {"ours": pair.ours, "peer": pair.peer}
    if pair.flops:  # the GEMM rate in the same window, round-robin with the two
        fns["gemm"], gemm_flops = gemm_call()
    stats = interleaved_timings(fns, repeats=plan.repeats, warmup=plan.warmup)
    t = {name: s.median for name, s in stats.items()}
    window = gemm_flops / t["gemm"] / 1e9 if "gemm" in t else None
    sides = ("ours", "peer")  # peak memory of each, unless its call is too long to profile
    profiled = [side for side in sides if plan.memory and t[side] <= PROFILE_MAX_S]
    mem = [peak_memory_bytes(fns[side]) if side in profiled else None for side in sides]
    unprofiled = [
        f"{side}'s peak memory not profiled (a {t[side]:.0f} s call)"
        for side in sides
        if plan.memory and side not in profiled
    ]
    rate = pair.flops / t["ours"] / 1e9 if pair.flops and t["ours"] > 0 else None
    store.add_peer(run_id, {
        "case_name": case.name, "mechanism": case.mechanism, "peer": case.peer, "size": pair.size,
        "n": n, "ours_s": t["ours"], "peer_s": t["peer"], "ratio": t["peer"] / t["ours"],
        "ours_flops": pair.flops, "ours_gflops": rate,
        "gemm_fraction": rate / window if rate and window else None,
        "ours_peak_bytes": mem[0], "peer_peak_bytes": mem[1], "max_abs_diff": diff,
        "rel_diff": rel, "ok": ok, "repeats": plan.repeats,
        "ours_spread": stats["ours"].spread, "peer_spread": stats["peer"].spread,
        "detail": "; ".join(filter(None, [ratio_doubt(stats["ours"], stats["peer"]), case.notes,
                                          *unprofiled]))
        + f" (timed {time.perf_counter() - t0:.1f}s"
        + (f"; GEMM {window:.0f} GFLOP/s in the same window)" if window else ")"),
    })  # fmt: skip


def ratio_doubt(ours: TimeStats, peer: TimeStats) -> str | None:
    """Why the ratio of these two sides' medians is unreliable (:func:`attnzoo.stats.trust`
    of each side), or ``None``."""
    if min(ours.n, peer.n) < MIN_REPEATS:
        return (f"ratio unreliable: {min(ours.n, peer.n)} repeats < {MIN_REPEATS}, "
                "no measured spread")  # fmt: skip
    noisy = [
        f"{side} spread {s.spread:.0%}"
        for side, s in (("ours", ours), ("peer", peer))
        if trust(s.n, s.spread) == "noisy"
    ]
    if noisy:
        return f"ratio unreliable: {', '.join(noisy)} > {NOISY_SPREAD:.0%}"
    return None


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"
