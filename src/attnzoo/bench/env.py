"""What a run records about where it ran: versions, CPU, threads, GPU, git SHA, command line."""

from __future__ import annotations

import platform
import subprocess
import sys
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
    }


def gemm_gflops(n: int = 1024, repeats: int = 7, device: str = "cpu") -> float:
    """This machine's fp32 matrix-multiply rate (GFLOP/s): the limit other rates are compared to."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = median_seconds(lambda: torch.mm(a, b), repeats=repeats, warmup=2)
    return 2 * n**3 / t / 1e9
