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
from attnzoo.store.schema import LATEST, MIGRATIONS

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
    # every reader sees at once that the process is gone ...
    (dead,) = s.runs()
    assert dead["status"] == "interrupted" and not dead["alive"]
    assert dead["note"].startswith("interrupted (process gone): PID")
    with duckdb.connect(str(path), read_only=True) as con:  # ... the file still says running
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    new_run(s)  # the next writer marks it in the file too
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT status FROM runs ORDER BY run_id").fetchone()[0] == "interrupted"


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
            StoreBusyError,
            match=rf"held open for writing by PID {holder.pid} \(.*\) and stayed locked for 1 s",
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


CURVE_ROW = {"task": "mqar", "mixer": "linear", "d_model": 16, "lr": 1e-3, "seed": 0, "step": 10,
             "train_loss": 1.0, "eval_loss": 1.1, "metric": 0.5, "seconds": 2.0}  # fmt: skip
EVAL_ROW = {"task": "pointer-sort", "mixer": "softmax", "d_model": 16, "lr": 1e-3, "seed": 0,
            "name": "greedy_n11_20", "value": 0.75}  # fmt: skip


def v3_store(path: Path, curve_task_config: bool = False) -> None:
    """A store as schema v3 wrote it, with one quality run and a curve point."""
    con = duckdb.connect(str(path))
    for _, _, statements in MIGRATIONS[:3]:
        for sql in statements:
            con.execute(sql)
    if curve_task_config:  # a column the v4 migration adds: makes that migration fail half-way
        con.execute("ALTER TABLE quality_curve ADD COLUMN task_config VARCHAR")
    con.execute("INSERT INTO attnzoo_meta VALUES ('app', 'attnzoo-store'), ('schema_version', '3')")
    con.execute("INSERT INTO runs (kind, status, started_at, env, config) "
                "VALUES ('quality', 'complete', now(), '{}', '{}')")  # fmt: skip
    cols = ", ".join(CURVE_ROW)
    con.execute(f"INSERT INTO quality_curve (run_id, {cols}, recorded_at) VALUES "
                f"(1, {', '.join('?' for _ in CURVE_ROW)}, now())", list(CURVE_ROW.values()))  # fmt: skip
    con.close()


def test_v3_store_reads_then_migrates_to_latest_keeping_rows(tmp_path: Path) -> None:
    path = tmp_path / "v3.duckdb"
    v3_store(path)
    reader = Store(path, read_only=True)  # readers do not migrate; the new table reads empty
    assert reader.schema_version == 3 and reader.quality_evals() == [] == reader.quality_evals([1])
    assert reader.cp() == [] == reader.cp_skips([1])  # v5's tables read empty too
    (curve,) = reader.curves()
    assert curve["metric"] == 0.5 and curve["task_config"] is None
    store = Store(path)
    assert store.schema_version == LATEST == 8
    assert [c["task_config"] for c in store.curves()] == [None] and store.quality_evals() == []
    store.add_curve_point(1, {**CURVE_ROW, "step": 20, "task_config": '{"seq_len": 64}'})
    assert [c["task_config"] for c in store.curves([1])] == [None, '{"seq_len": 64}']
    store.add_quality_eval(1, EVAL_ROW)
    store.add_quality_eval(
        1, {**EVAL_ROW, "name": "greedy_n5_10", "value": 1.0, "task_config": "{}"}
    )
    rows = Store(path, read_only=True).quality_evals([1])
    assert [(r["name"], r["value"], r["task_config"]) for r in rows] == [
        ("greedy_n11_20", 0.75, None), ("greedy_n5_10", 1.0, "{}")]  # fmt: skip
    assert store.quality_evals([2]) == [] and store.quality_evals([]) == []
    with pytest.raises(ValueError, match=r"a quality_eval row needs \['value'\]"):
        store.add_quality_eval(1, {k: v for k, v in EVAL_ROW.items() if k != "value"})


def test_a_failing_migration_leaves_the_old_store_untouched(tmp_path: Path) -> None:
    path = tmp_path / "half.duckdb"
    v3_store(path, curve_task_config=True)
    with pytest.raises(duckdb.Error, match="task_config"):
        Store(path)  # CREATE TABLE quality_eval succeeds, the ALTER fails: all rolled back
    con = duckdb.connect(str(path))
    tables = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    version = con.execute("SELECT value FROM attnzoo_meta WHERE key = 'schema_version'").fetchone()
    con.close()
    assert "quality_eval" not in tables and version == ("3",)


def test_best_of_sweep_narrows_to_one_task_point(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.duckdb")
    run = new_run(s)
    base = {"task": "mqar", "mixer": "linear", "d_model": 16, "num_layers": 2, "seed": 0,
            "params": 1, "state_size": None, "steps_run": 1, "status": "complete",
            "final_metric": 0.5, "best_metric": 0.5, "best_of_sweep": False, "seconds": 1.0}  # fmt: skip
    for cfg in ('{"L": 64}', '{"L": 256}'):
        for lr in (1e-3, 1e-2):
            s.add_quality(run, {**base, "task_config": cfg, "lr": lr})
    s.mark_best_of_sweep(run, "mqar", "linear", 16, 0, 1e-2, task_config='{"L": 64}')
    s.mark_best_of_sweep(run, "mqar", "linear", 16, 0, 1e-3, task_config='{"L": 256}')
    flagged = sorted((r["task_config"], r["lr"]) for r in s.quality([run], best_of_sweep=True))
    assert flagged == [('{"L": 256}', 1e-3), ('{"L": 64}', 1e-2)]
    s.mark_best_of_sweep(run, "mqar", "linear", 16, 0, 1e-2)  # without: the whole task
    assert len(s.quality([run], best_of_sweep=True)) == 2


CP_ROW = {"strategy": "ring", "sharding": "zigzag", "mask": "causal", "seq_len": 64,
          "mode": "fwd", "world_size": 2, "rank": 0, "latency_s": 0.01, "rank_wall_s": 0.01,
          "rank_cpu_s": 0.008, "peak_bytes": 1024, "bytes_sent": 512, "bytes_analytic": 512,
          "pairs": 1040.0, "max_abs_err": 1e-7, "ref_max": 1.5, "exact": True}  # fmt: skip


def test_cp_rows_and_skips_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "cp.duckdb")
    run = store.begin_run(kind="cp", suite="cp", command="t", config={}, env={})
    store.add_cp(run, CP_ROW)
    store.add_cp(
        run,
        {**CP_ROW, "rank": 1, "max_abs_err": None, "ref_max": None, "exact": None, "pairs": None},
    )
    store.add_cp_skip(run, {k: CP_ROW[k] for k in ("strategy", "sharding", "mask", "seq_len",
                                                   "mode", "world_size")} | {"reason": "r"})  # fmt: skip
    rows = store.cp([run])
    assert [r["rank"] for r in rows] == [0, 1] and rows[1]["max_abs_err"] is None
    assert rows[0]["exact"] is True and rows[0]["bytes_sent"] == 512
    assert [s["reason"] for s in store.cp_skips([run])] == ["r"]
    with pytest.raises(ValueError, match=r"a cp row needs \['exact'\]"):
        store.add_cp(run, {k: v for k, v in CP_ROW.items() if k != "exact"})


def test_v6_store_migrates_task_descriptions_and_speed_baselines(tmp_path: Path) -> None:
    """Schema v7: quality runs recorded before it get the task descriptions the bench then used
    (the report no longer mirrors them), speed runs their baseline; a run of v7 writes its own
    (once per task point)."""
    path = tmp_path / "v6.duckdb"
    con = duckdb.connect(str(path))
    for _, _, statements in MIGRATIONS[:6]:
        for sql in statements:
            con.execute(sql)
    con.execute("INSERT INTO attnzoo_meta VALUES ('app', 'attnzoo-store'), ('schema_version', '6')")
    con.execute(
        "INSERT INTO runs (kind, status, started_at, env, config) VALUES "
        "('quality', 'complete', now(), '{}', '{}'), ('speed', 'complete', now(), '{}', '{}')"
    )
    points = [
        ("mqar", '{"num_kv_pairs": 4, "seq_len": 64}', 64),
        ("pointer-hull", '{"train_n": [5, 10]}', 10),
        ("digits", '{"image_size": 32}', 64),
        ("regression", '{"mode": "drift", "num_pairs": 32}', 64),
    ]
    for task, cfg, _ in points:
        con.execute(
            "INSERT INTO quality VALUES (1, ?, ?, 'm', 64, 2, 0.001, 0, 10, NULL, 10, 'complete', "
            "0.5, 0.5, true, 1.0, now())",
            [task, cfg],
        )
    con.close()
    store = Store(path)
    assert store.schema_version == LATEST >= 7
    described = {r["task"]: r for r in store.tasks([1])}
    assert {t: described[t]["tokens"] for t, _, _ in points} == {t: n for t, _, n in points}
    assert described["regression"]["metric"] == "MSE" and not described["regression"]["maximize"]
    assert described["mqar"]["point_keys"] == [("seq_len", "L"), ("num_kv_pairs", "kv")]
    assert described["pointer-hull"]["patterns"] == ("noncausal-self", "causal-self")
    assert store.run(2)["config"] == {"baseline": "softmax"}
    row = {"task": "mqar", "task_config": "{}", "description": "d", "metric": "accuracy",
           "maximize": True, "patterns": ["causal-self"], "fmt": ".3f", "bounded": True,
           "tokens": None, "point_keys": []}  # fmt: skip
    store.add_task(1, row)
    store.add_task(1, row)  # a repeat is ignored
    assert len([r for r in store.tasks([1]) if r["task_config"] == "{}"]) == 1
