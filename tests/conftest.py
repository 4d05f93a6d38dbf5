"""Shared fixtures: deterministic, one thread count for the whole run.

- Every test starts from ``torch.manual_seed(0)``.
- ``torch.use_deterministic_algorithms(True)``: an op without a deterministic implementation
  raises instead of varying between runs.
- One intra-op thread count for the whole session: ``ATTNZOO_TEST_THREADS`` (default 2, the
  project machines' cores), restored after any test that changes it. Spawned workers
  (``attnzoo.distributed.run_workers``) set their own single thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

THREADS = int(os.environ.get("ATTNZOO_TEST_THREADS", "2"))
CUDA_TESTS = Path(__file__).parent / "cuda"
NO_CUDA_EXIT = 3


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=None,
        help="run tests/cuda (every block against the CPU) on this device: cuda, cuda:1, or "
        "cpu to check the tests themselves. Without it tests/cuda is not collected.",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == CUDA_TESTS and config.getoption("--device") is None:
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    device = config.getoption("--device")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        pytest.exit(
            f"--device {device}: this machine has no CUDA device (torch {torch.__version__}, "
            "torch.cuda.is_available() is False); the CUDA tests did not run",
            returncode=NO_CUDA_EXIT,
        )


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
    if not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True)
