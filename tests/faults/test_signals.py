"""Fault injection: every bench killed by SIGKILL, SIGTERM or SIGINT at a random point after it
has recorded something. Nothing committed may be lost; the run must read as interrupted (with
the reason) at once; the store stays readable and usable."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnzoo.cli import app
from attnzoo.store import Store
from tests.faults.helpers import (
    alive,
    assert_kept,
    children,
    kill_group,
    rows_of,
    snapshot,
    start,
    wait_for,
)

LENGTHS = ",".join(str(t) for t in range(32, 32 + 3 * 150, 3))
BENCHES = {
    # (command, the table its first records go to)
    "speed": (["bench", "speed", "--mixers", "softmax", "--patterns", "causal-self", "--masks",
               "causal", "--mode", "fwd", "--repeats", "3", "--warmup", "0", "--seq-lens", LENGTHS],
              "speed"),
    # the peer's chunked form needs multiples of its chunk (64)
    "peers": (["bench", "peers", "--cases", "linear/fla-naive-chunk", "--repeats", "3",
               "--no-memory", "--sizes", ",".join(str(64 * k) for k in range(1, 65))], "peers"),
    "quality": (["bench", "quality", "--mixers", "linear,softmax", "--d-model", "16", "--steps",
                 "3000", "--seeds", "0,1,2"], "quality_curve"),
    "cp": (["bench", "cp", "--strategy", "ring", "--world-size", "1,2,2,2", "--seq-lens",
            "64,128,256,512,1024", "--masks", "causal", "--mode", "fwd"], "cp"),
}  # fmt: skip
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("bench", list(BENCHES))
def test_killed_bench_keeps_what_it_committed(tmp_path: Path, bench: str, sig: str) -> None:
    db = tmp_path / "s.duckdb"
    args, table = BENCHES[bench]
    proc = start(*args, "--db", str(db), "--no-progress")
    try:
        wait_for(f"the first {table} row", lambda: rows_of(db, table) > 0, 240, proc)
        time.sleep(random.Random(f"{bench}/{sig}").uniform(0, 1.5))  # a random point after it
        workers = children(proc.pid)
        before = snapshot(db)
        proc.send_signal(SIGNALS[sig])
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        kill_group(proc)
    if sig == "SIGKILL":
        assert rc == -signal.SIGKILL
    else:  # handled like Ctrl-C: the run is marked, what finished is kept, the exit says so
        assert rc == 130, stderr[-3000:]
        assert "interrupted: run" in stderr and "kept" in stderr
    after = snapshot(db)
    assert_kept(before, after)
    (run,) = Store(db, read_only=True).runs()
    assert run["status"] == "interrupted" and not run["alive"]
    expect = {"SIGKILL": "interrupted (process gone): PID", "SIGTERM": "stopped by SIGTERM",
              "SIGINT": "stopped by the user (Ctrl-C)"}[sig]  # fmt: skip
    assert run["note"].startswith(expect), run["note"]
    # no worker outlives its bench for long (cp spawns gloo workers)
    wait_for("the bench's workers to exit", lambda: not any(alive(p) for p in workers), 60)
    check = CliRunner().invoke(app, ["store", "check", "--db", str(db)])
    assert check.exit_code == 0 and "is readable" in check.stdout, check.output
    if bench == "speed":
        shown = CliRunner().invoke(app, ["results", "--db", str(db), "--format", "csv"])
        assert shown.exit_code == 0 and shown.stdout.count("\n") == len(after["speed"]) + 1
        assert f"run {run['run_id']} is interrupted: {expect}" in shown.stderr
