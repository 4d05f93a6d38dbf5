"""The DuckDB store: schema/migrations, durability per record, locking, refusal of bad files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from attnzoo.store import Store, StoreBusyError, StoreError, default_path
from attnzoo.store.schema import LATEST

SPEED_ROW = {
    "mixer": "softmax", "impl": "sdpa", "pattern": "causal-self", "mask": "causal", "mode": "fwd", "batch": 1,
    "seq_len": 64, "ctx_len": 64, "d_model": 32, "heads": 2, "head_dim": 16, "repeats": 3, "median_s": 0.01,
    "min_s": 0.009, "peak_bytes": 1000, "flops": 10**6, "gflops_per_s": 0.1, "gemm_fraction": 0.001,
}  # fmt: skip


def new_run(s: Store) -> int:
    return s.begin_run(
        kind="speed", suite="test", command="pytest", config={"a": 1}, env={"cpu": "x"}
    )


def test_create_reopen_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    s = Store(path)
    assert s.schema_version == LATEST
    run = new_run(s)
    s.add_speed(run, SPEED_ROW)
    s.add_skip(run, {**{k: SPEED_ROW[k] for k in ("mixer", "impl", "pattern", "mask", "mode", "seq_len")},
                     "kind": "skipped", "reason": "budget"})  # fmt: skip
    s.add_check(
        run,
        {
            "mixer": "softmax",
            "impl": "sdpa",
            "pattern": "causal-self",
            "max_abs_err": 1e-7,
            "ok": True,
            "detail": "",
        },
    )
    s.finish_run(run, "complete")
    again = Store(path, read_only=True)
    (r,) = again.runs()
    assert r["status"] == "complete" and r["config"] == {"a": 1} and r["env"] == {"cpu": "x"}
    assert again.speed([run])[0]["median_s"] == 0.01
    assert again.skips([run])[0]["reason"] == "budget" and again.checks([run])[0]["ok"]
    assert again.latest_run_id("speed") == run
    with pytest.raises(StoreError, match="opened read-only"):
        again.add_speed(run, SPEED_ROW)


def test_every_record_is_durable_when_the_writer_dies(tmp_path: Path) -> None:
    path = tmp_path / "crash.duckdb"
    code = textwrap.dedent(f"""
        import os
        from attnzoo.store import Store
        from tests.store.test_store import SPEED_ROW, new_run
        s = Store({str(path)!r})
        run = new_run(s)
        for t in (64, 128, 256):
            s.add_speed(run, {{**SPEED_ROW, "seq_len": t}})
        os._exit(9)  # dies without finishing the run
    """)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True
    )
    assert r.returncode == 9, r.stderr
    s = Store(path)
    assert [row["seq_len"] for row in s.speed()] == [64, 128, 256]
    assert s.runs()[0]["status"] == "running"
    new_run(s)  # the next writer notices the dead process and marks its run interrupted
    assert s.runs()[0]["status"] == "interrupted"


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "t.duckdb")
    run = new_run(s)
    with pytest.raises(ValueError, match="needs \\['median_s'\\]"):
        s.add_speed(run, {k: v for k, v in SPEED_ROW.items() if k != "median_s"})
    with pytest.raises(RuntimeError), s._write() as con:
        con.execute(
            "INSERT INTO runs (kind, status, started_at, env, config) VALUES ('x', 'y', now(), '{}', '{}')"
        )
        raise RuntimeError("boom")
    assert len(s.runs()) == 1 and s.speed() == []


HOLD = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
""")


def test_second_writer_waits_then_errors_clearly(tmp_path: Path) -> None:
    path = tmp_path / "busy.duckdb"
    Store(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(
            StoreBusyError, match="locked by another process and stayed locked for 1 s"
        ):
            Store(path, wait=1.0)
        assert time.monotonic() - t0 >= 0.9
        s = Store(path, wait=30.0)  # waits for the holder to let go
        new_run(s)
    finally:
        holder.wait(timeout=30)
    assert len(Store(path).runs()) == 1


def test_corrupt_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bad.duckdb"
    path.write_bytes(b"\x00garbage" * 1000)
    before = path.read_bytes()
    with pytest.raises(
        StoreError, match="cannot be opened as an attnzoo store.*not a valid DuckDB database"
    ):
        Store(path)
    assert path.read_bytes() == before


def test_foreign_duckdb_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.close()
    with pytest.raises(StoreError, match="is a DuckDB database but not an attnzoo store"):
        Store(path)
    con = duckdb.connect(str(path))
    assert [
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    ] == ["customers"]
    con.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    Store(path)
    con = duckdb.connect(str(path))
    con.execute("UPDATE attnzoo_meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema v999, written by a newer attnzoo"):
        Store(path)


def test_bad_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="does not exist; run `attnzoo bench speed` first"):
        Store(tmp_path / "missing.duckdb", read_only=True)
    with pytest.raises(StoreError, match="folder .* does not exist"):
        Store(tmp_path / "no" / "such.duckdb")
    monkeypatch.setenv("ATTNZOO_DB", str(tmp_path / "env.duckdb"))
    assert default_path() == tmp_path / "env.duckdb"
    assert default_path("x.duckdb") == Path("x.duckdb")
    monkeypatch.delenv("ATTNZOO_DB")
    assert default_path() == Path("attnzoo.duckdb")


def test_unknown_run_and_bad_status(tmp_path: Path) -> None:
    s = Store(tmp_path / "r.duckdb")
    run = new_run(s)
    with pytest.raises(ValueError, match="--run 99: no such run"):
        s.run(99)
    with pytest.raises(ValueError, match="status must be complete, interrupted or failed"):
        s.finish_run(run, "done")
