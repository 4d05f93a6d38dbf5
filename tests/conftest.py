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

import pytest
import torch

THREADS = int(os.environ.get("ATTNZOO_TEST_THREADS", "2"))


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
    if not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True)
