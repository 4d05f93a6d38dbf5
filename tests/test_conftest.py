"""The test session is what ``tests/conftest.py`` promises: seeded, deterministic, one thread
count."""

from __future__ import annotations

import torch

from tests.conftest import THREADS


def test_every_test_starts_from_the_same_seed() -> None:
    first = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(first, torch.rand(3))


def test_deterministic_algorithms_and_one_thread_count() -> None:
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == THREADS
    torch.set_num_threads(1)  # the fixture restores it for the next test


def test_a_changed_thread_count_does_not_leak() -> None:
    assert torch.get_num_threads() == THREADS
