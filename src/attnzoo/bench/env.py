"""What a run records about where it ran: versions, CPU, threads, GPU, git SHA, command line."""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from attnzoo.bench.measure import median_seconds

PACKAGES = ("attnzoo", "torch", "numpy", "einops", "duckdb", "typer", "rich", "matplotlib")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), if any."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (glibc malloc.h)
_ALLOCATOR: dict[str, Any] = {}


def keep_freed_memory() -> str:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (benchmarks only).

    By default glibc serves large blocks with ``mmap`` and unmaps them on free, so every fresh
    tensor of a few MB is page-faulted in again: on this machine that doubled the time of the
    memory-bound chunked linear-attention paths (and of their fla-core peer) and made repeats
    noisy. The usual fix in PyTorch CPU deployments is a caching allocator (jemalloc/tcmalloc
    via ``LD_PRELOAD``); the benchmark harness instead sets two ``mallopt`` thresholds for its
    own process, once, before timing anything. It applies to ours and the peers alike, it is
    recorded in the run's environment, and the library itself never changes the allocator.
    Reuse starts after a few blocks of a size: torch's aligned allocations ask for slightly more
    than the block just freed, so the heap grows by a few blocks before freed neighbours merge;
    the harness's warmup calls and medians over repeats absorb that.
    Returns a description of what was done ("glibc mallopt ..." or why not).
    """
    if "state" in _ALLOCATOR:
        return _ALLOCATOR["state"]
    state = "unchanged (not glibc)"
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # mallopt(int, int)
            # the largest values an int takes: ctypes would silently mask a larger Python int
            # (1 << 40 became a trim threshold of 0, which returned freed memory at once)
            ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(
                M_TRIM_THRESHOLD, 2**31 - 1
            )
            state = "glibc mallopt mmap_threshold=1GiB trim_threshold=2GiB" if ok else state
        except (OSError, AttributeError):
            pass
    _ALLOCATOR["state"] = state
    return state


def environment(device: str = "cpu") -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": gpu,
        "versions": versions,
        "argv": sys.argv,
        "allocator": _ALLOCATOR.get("state", "unchanged"),
    }


def gemm_call(n: int = 1024, device: str = "cpu") -> tuple[Callable[[], object], int]:
    """One ``n x n`` fp32 matrix multiply to time, and its FLOPs: the reference rate."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return (lambda: torch.mm(a, b)), 2 * n**3


def gemm_gflops(n: int = 1024, repeats: int = 7, device: str = "cpu") -> float:
    """This machine's fp32 matrix-multiply rate (GFLOP/s): the limit other rates are compared to."""
    fn, flops = gemm_call(n, device)
    t = median_seconds(fn, repeats=repeats, warmup=2)
    return flops / t / 1e9


BUSY_SHARE = 0.25  # another process using more than this share of one core is "busy"


def _cpu_ticks() -> dict[int, tuple[int, int, str]]:
    """{pid: (utime + stime ticks, parent pid, name)} of every process readable in /proc."""
    out: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (name with spaces) state ppid ... utime stime": split after the last ')'
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[11]) + int(fields[12]), int(fields[1]), name)
    return out


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:160]


def machine_state(sample_s: float = 0.25) -> dict[str, Any]:
    """The machine's load now: load averages, CPU count and the other processes that used more
    than :data:`BUSY_SHARE` of a core over ``sample_s`` seconds (this process and its children
    excluded). ``quiet`` is False when any did: timings taken now share the cores."""
    import os
    import time

    state: dict[str, Any] = {"cpu_count": os.cpu_count(), "sampled_s": sample_s}
    try:
        state["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        state["load_avg"] = None
    before = _cpu_ticks()
    t0 = time.monotonic()
    time.sleep(sample_s)
    after = _cpu_ticks()
    elapsed = time.monotonic() - t0
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    me = os.getpid()
    busy = []
    for pid, (ticks, ppid, name) in after.items():
        if pid == me or ppid == me or pid not in before:
            continue
        share = (ticks - before[pid][0]) / hz / elapsed
        if share > BUSY_SHARE:
            busy.append({"pid": pid, "name": name, "cpu": round(share, 2), "cmd": _cmdline(pid)})
    busy.sort(key=lambda b: -b["cpu"])
    state["busy"] = busy[:10]
    state["quiet"] = not busy
    return state


def describe_load(state: dict[str, Any]) -> str:
    """One line: who else was using the cores."""
    who = ", ".join(f"PID {b['pid']} {b['name']} {b['cpu'] * 100:.0f}%" for b in state["busy"])
    load = state.get("load_avg")
    return f"load average {load[0] if load else '?'} on {state['cpu_count']} CPUs; busy: {who}"
