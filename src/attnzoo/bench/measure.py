"""Measuring a call: median latency after warm-up, and allocator-level peak memory.

Peak memory on CPU comes from the torch profiler's allocator events (every tensor allocation
and free with its size and time): the running sum of live bytes allocated *during* the call, at
its maximum. Tensors alive before the call are not counted. On CUDA the same function reads
``torch.cuda.max_memory_allocated`` instead. ``tests/bench/test_measure.py`` checks it against
known allocations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by torch while ``fn()`` runs, above what was live before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"peak_memory_bytes: device must be cpu or cuda, got {device}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if e.device_type().name != "CPU":
            continue
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


def median_seconds(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"median_seconds: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}"
        )
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall time of each function, measured round-robin so machine noise hits all alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"interleaved_medians: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}"
        )
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
