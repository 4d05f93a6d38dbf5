"""A small real store shared by the report tests (one tiny speed run, two for comparison).

The ``compiled`` and token-loop ``recurrent`` paths are gated but not timed here: timing them
took most of this fixture's minutes, and the report treats every impl's rows alike.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnzoo.bench.speed import run_speed
from attnzoo.bench.speed_suites import SpeedSuite
from attnzoo.store import Store


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    db = tmp_path_factory.mktemp("report") / "r.duckdb"
    store = Store(db)
    suite = SpeedSuite(seq_lens=(32, 64, 512), repeats=1, warmup=0, heads=2, head_dim=8,
                       memory_budget=1 << 20, skip_impls=("compiled", "recurrent"))  # fmt: skip
    runs = [run_speed(suite, store, command="pytest", progress=False) for _ in range(2)]
    return db, runs
