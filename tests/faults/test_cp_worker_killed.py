"""Fault injection: a ``bench cp`` worker killed mid-ring. The group fails promptly with the
reason recorded as a skip, the other groups' rows are kept, the run completes, and no worker is
left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

import attnzoo.bench.cp as cp_module
from attnzoo.bench.cp import CPPlan, run_cp
from attnzoo.store import Store
from tests.faults.cp_fault_workers import dying_cp_worker
from tests.faults.helpers import alive, children


def test_a_worker_killed_mid_ring_fails_its_group_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cp_module, "cp_worker", dying_cp_worker)
    store = Store(tmp_path / "cp.duckdb")
    plan = CPPlan(world_sizes=(1, 2), strategies=("ring",), masks=("causal",), seq_lens=(64,),
                  heads=2, head_dim=8, repeats=1, timeout=120)  # fmt: skip
    t0 = time.monotonic()
    run_id = run_cp(plan, store, console=Console(quiet=True), progress=False)
    assert time.monotonic() - t0 < 110  # failed at the death, not at the collective timeout
    assert store.run(run_id)["status"] == "complete"
    rows = store.cp([run_id])
    assert {r["world_size"] for r in rows} == {1} and rows  # world 1 ran: kept
    (skip,) = store.cp_skips([run_id])
    assert skip["world_size"] == 2 and skip["reason"].startswith("failed:")
    assert "rank 1 of 2 was killed by SIGKILL without reporting a result" in skip["reason"]
    assert not [
        p
        for p in children(os.getpid())
        if alive(p) and "spawn" in Path(f"/proc/{p}/cmdline").read_text()
    ]
