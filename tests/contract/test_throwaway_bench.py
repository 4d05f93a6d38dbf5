"""The throwaway grid3d mixer, 2-D fusion block and pooling head, defined only in
:mod:`tests.contract.throwaway`, run in ``attnzoo bench speed``: each is gated (its fast path
against its reference, forward and backward) and timed forward and forward+backward."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from attnzoo.cli import app
from attnzoo.store import Store
from tests.contract.throwaway import SPECS


def test_throwaway_blocks_run_in_bench_speed(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    names = [s.name for s in SPECS]
    res = CliRunner().invoke(app, ["bench", "speed", "--mixers", ",".join(names),
                                   "--seq-lens", "64,128", "--repeats", "1", "--warmup", "0",
                                   "--mode", "fwd,fwdbwd", "--db", str(db), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    store = Store(db, read_only=True)
    run = store.latest_run_id("speed")
    rows = store.speed([run])
    assert store.skips([run]) == []
    for spec in SPECS:
        mine = [r for r in rows if r["mixer"] == spec.name]
        # both modes, both lengths, reference and sdpa... the quick suite skips timing reference
        assert {(r["mode"], r["impl"]) for r in mine} == {("fwd", "sdpa"), ("fwdbwd", "sdpa")}
        assert {r["seq_len"] for r in mine} == (
            {64, 125}
            if spec.layout == "grid3d"
            else {64, 121}
            if spec.layout == "grid2d"
            else {64, 128}
        )
        checks = [c for c in store.checks([run]) if c["mixer"] == spec.name]
        compared = [c for c in checks if c["impl"] == "sdpa"]
        assert compared and all(c["ok"] for c in checks)
        assert all("shape/finite" not in (c["detail"] or "") for c in compared)
    fusion = [r for r in rows if r["mixer"] == "_contract_fusion2d"]
    assert all(r["pattern"] == "noncausal-cross" for r in fusion)
