"""One intra-op thread for the tiny models here: their matmuls are a few hundred flops, and on
the shared 2-core machines OpenMP's thread hand-off made a 5-token generate take seconds instead
of milliseconds (the root conftest restores the session's thread count after each test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    torch.set_num_threads(1)
    yield
