"""`attnzoo bench cp`: the plan's validation and case grid, and one real run of spawned gloo
workers into a store (exactness, counted == analytic bytes, load balance, memory per rank)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnzoo.bench.cp import STRATEGIES, CPPlan, run_cp
from attnzoo.cli import app
from attnzoo.report.html import build_report
from attnzoo.store import Store


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategies": ("rign",)}, r"--strategy: unknown strategy 'rign'.*did you mean 'ring'"),
        ({"masks": ("causual",)}, r"--masks: unknown mask 'causual'"),
        ({"modes": ("bwd",)}, r"--mode: expected some of"),
        ({"world_sizes": (0,)}, r"--world-size: expected sizes >= 1"),
        ({"world_sizes": ()}, r"--world-size: expected at least one value"),
        ({"heads": 0}, r"--heads: expected an int >= 1, got 0"),
        ({"seq_lens": (100,), "world_sizes": (3,)}, r"T=100 must be divisible by 2 x world size 3"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CPPlan(**kwargs)


def test_cases_skip_what_a_strategy_cannot_do() -> None:
    plan = CPPlan(world_sizes=(2,), masks=("full", "causal"), seq_lens=(64,), heads=6)
    cases = {(c["strategy"], c["mask"]): c for c in plan.cases(2)}
    assert (
        "skip" not in cases[("ring", "causal")]
        and cases[("ring", "causal")]["sharding"] == "zigzag"
    )
    assert cases[("ring", "full")]["sharding"] == "contiguous"
    assert cases[("ring-contiguous", "causal")]["sharding"] == "contiguous"  # the unbalanced one
    assert "world size >= 4" in cases[("hybrid", "full")]["skip"]
    assert "computes ('causal',) only" in cases[("state-gla", "full")]["skip"]
    assert cases[("ulysses", "causal")]["sharding"] == "contiguous"
    assert "skip" not in cases[("ulysses", "full")]  # 6 heads over 2 ranks
    odd = {(c["strategy"], c["mask"]): c for c in plan.cases(4)}
    assert "heads=6 not divisible by 4 (ulysses splits heads)" in odd[("ulysses", "full")]["skip"]
    assert "skip" not in odd[("hybrid", "full")]  # 6 heads over Ulysses groups of 2
    assert "skip" not in odd[("ring-allgather", "full")]


def test_run_cp_stores_exact_rows_with_counted_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path / "cp.duckdb")
    plan = CPPlan(world_sizes=(1, 2), strategies=("ring", "ulysses", "state-lightning", "hybrid"),
                  masks=("causal",), seq_lens=(32,), modes=("fwd+bwd",), heads=2, head_dim=8,
                  repeats=1, timeout=300.0)  # fmt: skip
    run = run_cp(plan, store, progress=False)
    assert run is not None and store.run(run)["status"] == "complete"
    rows = store.cp([run])
    # ring, ulysses, state-lightning at world 1 (1 rank) and 2 (2 ranks); hybrid skipped twice
    assert len(rows) == 3 * 1 + 3 * 2
    assert all(r["exact"] and r["max_abs_err"] < 1e-4 for r in rows if r["rank"] == 0)
    assert all(r["max_abs_err"] is None for r in rows if r["rank"] > 0)
    assert all(r["bytes_sent"] == r["bytes_analytic"] for r in rows)
    assert all(r["bytes_sent"] > 0 for r in rows if r["world_size"] == 2)
    ring2 = [r for r in rows if r["strategy"] == "ring" and r["world_size"] == 2]
    assert ring2[0]["sharding"] == "zigzag" and ring2[0]["pairs"] == ring2[1]["pairs"]
    assert all(r["peak_bytes"] > 0 and r["latency_s"] > 0 for r in rows)
    skips = store.cp_skips([run])
    assert {(s["strategy"], s["world_size"]) for s in skips} == {("hybrid", 1), ("hybrid", 2)}
    html = build_report(store)
    assert 'id="cp-table"' in html and "hybrid needs world size" in html


def test_cli_bench_cp_lists_strategies_and_rejects_bad_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["bench", "cp", "--list"])
    assert out.exit_code == 0
    for name in STRATEGIES:
        assert name in out.output
    bad = runner.invoke(app, ["bench", "cp", "--strategy", "rign", "--db", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "did you mean 'ring'" in bad.output


def test_bench_cp_under_torchrun(tmp_path: Path) -> None:
    """`torchrun -m attnzoo bench cp`: the launched processes are the workers, rank 0 writes."""
    db = tmp_path / "tr.duckdb"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "-m", "attnzoo", "bench", "cp", "--db", str(db),
           "--seq-lens", "32", "--heads", "2", "--head-dim", "8", "--strategy", "ring,state-gla",
           "--masks", "causal", "--repeats", "1", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    store = Store(db, read_only=True)
    (run,) = store.runs("cp")
    assert run["env"]["cp_launch"] == "torchrun" and run["config"]["world_sizes"] == [2]
    rows = store.cp([run["run_id"]])
    assert {(r["strategy"], r["rank"]) for r in rows} == {("ring", 0), ("ring", 1),
                                                         ("state-gla", 0), ("state-gla", 1)}  # fmt: skip
    assert all(r["bytes_sent"] == r["bytes_analytic"] > 0 for r in rows)
    assert all(r["exact"] for r in rows if r["rank"] == 0)
