"""Fault injection: two benches on one store, a store held open by another writer, a full disk.
Each ends in one clear line or a clean wait, and nothing committed is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from attnzoo.cli import app
from attnzoo.store import Store, StoreError
from attnzoo.store import store as store_module
from tests.faults.helpers import assert_kept, cli, kill_group, rows_of, snapshot, start, wait_for
from tests.faults.test_signals import BENCHES
from tests.store.test_store import SPEED_ROW, new_run

SMALL = ["bench", "speed", "--mixers", "softmax", "--patterns", "causal-self", "--masks",
         "causal", "--mode", "fwd", "--seq-lens", "64", "--repeats", "1", "--no-progress"]  # fmt: skip


def test_second_bench_is_refused_while_one_runs(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    first = start(*BENCHES["speed"][0], "--db", str(db), "--no-progress")
    try:
        wait_for("the first bench's run", lambda: rows_of(db, "speed") > 0, 240, first)
        second = cli(*SMALL, "--db", str(db))
        assert second.returncode == 1
        (line,) = second.stderr.strip().splitlines()
        assert f"PID {first.pid}" in line and "bench speed" in line and "--allow-concurrent" in line
        assert "GEMM rate" not in second.stderr  # refused before measuring anything
        before = snapshot(db)
        both = cli(*SMALL, "--db", str(db), "--allow-concurrent")  # asked for: allowed
        assert both.returncode == 0, both.stderr
        assert_kept(before, snapshot(db))
    finally:
        kill_group(first)
    runs = Store(db, read_only=True).runs()
    assert [r["status"] for r in runs] == ["interrupted", "complete"]


HOLD = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])  # a notebook holding the store open for writing
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_a_held_store_names_its_holder_before_measuring(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    s = Store(db)
    run = new_run(s)
    s.add_speed(run, SPEED_ROW)
    s.finish_run(run, "complete")
    before = snapshot(db)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "60"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        r = CliRunner().invoke(app, [*SMALL, "--db", str(db), "--wait", "1"])
        assert time.monotonic() - t0 < 30  # not the old 30 s wait inside a long bench
        assert r.exit_code == 1
        (line,) = r.stderr.strip().splitlines()
        assert f"held open for writing by PID {holder.pid}" in line and "--wait SECONDS" in line
        assert "GEMM rate" not in r.output
        reader = CliRunner().invoke(app, ["results", "--db", str(db), "--wait", "1"])
        assert reader.exit_code == 1 and f"PID {holder.pid}" in reader.stderr
    finally:
        holder.kill()
        holder.wait()
    assert_kept(before, snapshot(db))


def test_a_bench_waits_for_a_store_released_within_wait(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    Store(db)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "2"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        r = CliRunner().invoke(app, [*SMALL, "--db", str(db), "--wait", "60"])
        assert r.exit_code == 0, r.output
    finally:
        holder.wait(timeout=60)
    assert rows_of(db, "speed") >= 1


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


@pytest.mark.parametrize("disk", ["tmpfs", "simulated"])
def test_a_full_disk_keeps_what_was_committed(tmp_path: Path, monkeypatch, disk: str) -> None:
    """A real full filesystem (a 3 MiB tmpfs, where this machine lets us mount one), and the
    write failure DuckDB reports for one, injected into the store's connection."""
    mnt = tmp_path / "small"
    real = disk == "tmpfs" and _tmpfs(mnt, "3m")
    if disk == "tmpfs" and not real:
        pytest.skip("cannot mount a tmpfs here (not root); the simulated case still runs")
    mnt.mkdir(exist_ok=True)
    db = mnt / "s.duckdb"
    try:
        s = Store(db)
        run = new_run(s)
        committed = 0
        if not real:
            original = duckdb.connect
            calls = {"n": 0}

            class Full:
                def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
                    self.con = con

                def execute(self, sql: str, *a, **k):  # noqa: ANN202
                    if sql.startswith("INSERT INTO speed"):
                        calls["n"] += 1
                        if calls["n"] > 20:
                            raise duckdb.IOException(
                                "IO Error: Could not write file: No space left on device"
                            )
                    return self.con.execute(sql, *a, **k)

                def __getattr__(self, name: str):  # noqa: ANN204
                    return getattr(self.con, name)

            monkeypatch.setattr(
                store_module.duckdb, "connect", lambda *a, **k: Full(original(*a, **k))
            )
        with pytest.raises(StoreError) as e:
            for t in range(2_000):  # incompressible rows fill 3 MiB within a few hundred writes
                s.add_speed(run, {**SPEED_ROW, "impl": os.urandom(16_000).hex(), "seq_len": t})
                committed += 1
        assert "no space left" in str(e.value).lower() and str(db) in str(e.value)
        assert "\n" not in str(e.value)
        monkeypatch.undo()
        kept = Store(db, read_only=True).speed()
        assert len(kept) >= committed and committed > 0
        assert [r["seq_len"] for r in kept][:committed] == list(range(committed))
    finally:
        if real:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
