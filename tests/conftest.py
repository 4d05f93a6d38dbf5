"""Shared fixtures: fp32, deterministic, one thread count for the whole run."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
