"""Measuring a call: the quantiles of its latency after warm-up (:func:`timings`, and
round-robin over several calls, :func:`interleaved_timings`), and allocator-level peak memory.

Peak memory on CPU comes from the torch profiler's allocator events (every tensor allocation
and free with its size and time): the running sum of live bytes allocated *during* the call, at
its maximum. Tensors alive before the call are not counted. On CUDA the same function reads
``torch.cuda.max_memory_allocated`` instead. ``tests/bench/test_measure.py`` checks it against
known allocations.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from attnzoo.stats import TimeStats


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
    _prime_profiler()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # the profiler's C++ side logs a line at every start and stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if e.device_type().name != "CPU":
            continue
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


_PRIMED = []


def _prime_profiler() -> None:
    """Free a tensor allocated before profiling once, silently: torch warns about that once per
    process ("Memory block of unknown size ..."), which says nothing about the measured call."""
    if _PRIMED:
        return
    before = torch.empty(16)
    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            del before
    _PRIMED.append(True)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logging included) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _check_counts(owner: str, repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"{owner}: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")


def timings(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> TimeStats:
    """Quantiles of the wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    _check_counts("timings", repeats, warmup)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return TimeStats.of(times)


def median_seconds(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    _check_counts("median_seconds", repeats, warmup)
    return timings(fn, repeats=repeats, warmup=warmup).median


def interleaved_timings(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, TimeStats]:
    """Quantiles of each function's wall time, measured round-robin so that machine noise hits
    all alike (each round calls every function once, in order)."""
    _check_counts("interleaved_timings", repeats, warmup)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: TimeStats.of(ts) for name, ts in times.items()}


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall time of each function, measured round-robin (:func:`interleaved_timings`)."""
    _check_counts("interleaved_medians", repeats, warmup)
    stats = interleaved_timings(fns, repeats=repeats, warmup=warmup)
    return {name: s.median for name, s in stats.items()}
