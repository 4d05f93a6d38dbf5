"""``make test-cuda`` (``tests/cuda``) is not part of ``make test``, but its code is: run a slice
of it CPU against CPU, and check that asking for CUDA where there is none stops loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def pytest_cuda(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "tests/cuda", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=600)


def test_the_cuda_suite_runs_cpu_against_cpu() -> None:
    p = pytest_cuda("--device", "cpu", "-k", "softmax-causal-self or gla-causal-self or peak")
    assert p.returncode == 0, p.stdout[-3000:]
    assert "5 passed" in p.stdout.splitlines()[-1], p.stdout[-500:]


def test_the_cuda_suite_needs_a_device() -> None:
    p = pytest_cuda("-k", "peak")
    assert p.returncode == 1 and "tests/cuda needs --device" in p.stdout, p.stdout[-500:]
    # discovery of the tests folder (everything but tests/cuda and this file left out, for time)
    others = [p for p in (ROOT / "tests").iterdir() if p.name not in ("cuda", "test_cuda_suite.py")]
    ignore = [f"--ignore={p.relative_to(ROOT)}" for p in others if p.name != "conftest.py"]
    found = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests", *ignore],
                           cwd=ROOT, text=True, capture_output=True, timeout=600)  # fmt: skip
    assert "tests/cuda/" not in found.stdout and "tests/test_cuda_suite.py" in found.stdout, (
        found.stdout
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_one_fails_and_says_so() -> None:
    p = pytest_cuda("--device", "cuda")
    assert p.returncode == 3
    assert "this machine has no CUDA device" in p.stdout + p.stderr
