"""The contract tests see the throwaway blocks of :mod:`tests.contract.throwaway` registered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from attnzoo.registry import registered
from tests.contract.throwaway import SPECS


@pytest.fixture(autouse=True, scope="package")
def _throwaway_blocks() -> Iterator[None]:
    with registered(*SPECS):
        yield
