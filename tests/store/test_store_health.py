"""A store that fails clearly and never shows a dead run as alive: damage, liveness, concurrency,
machine state, notes, and ``repair``."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb
import pytest

from attnzoo.store import RunInProgressError, Store, StoreDamagedError, StoreError
from attnzoo.store import store as store_module
from attnzoo.store.repair import repair
from tests.store.test_store import SPEED_ROW, new_run


def filled(path: Path, runs: int = 3, rows: int = 40) -> Store:
    s = Store(path)
    cols = [*SPEED_ROW, "recorded_at"]
    for i in range(runs):
        run = new_run(s)
        s.add_speed(run, SPEED_ROW)
        with s._write() as con:  # the rest in one transaction (one file open per row is slow)
            con.executemany(
                f"INSERT INTO speed (run_id, {', '.join(cols)}) VALUES "
                f"({', '.join('?' for _ in range(len(cols) + 1))})",
                [[run, *{**SPEED_ROW, "seq_len": 65 + t, "median_s": 0.001 * (i + 1)}.values(),
                  dt.datetime.now()] for t in range(rows - 1)],
            )  # fmt: skip
        s.add_note(run, "test", f"run {i}")
        s.finish_run(run, "complete")
    return s


def test_truncated_store_is_refused_by_writers_at_once_and_readers_at_first_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.duckdb"
    filled(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreDamagedError, match=rf"store {path} is damaged.*store repair --db"):
        Store(path)  # a writer reads everything before it would measure
    with pytest.raises(StoreDamagedError, match="is damaged"):
        Store(path, read_only=True).speed()
    assert path.read_bytes() == data[: len(data) // 2]  # nothing written to a damaged file


def test_check_counts_every_table(tmp_path: Path) -> None:
    counts = filled(tmp_path / "c.duckdb", runs=2, rows=5).check()
    assert counts["speed"] == 10 and counts["runs"] == 2 and counts["run_notes"] == 2


def test_a_run_whose_process_is_gone_reads_interrupted(tmp_path: Path, monkeypatch) -> None:
    s = Store(tmp_path / "d.duckdb")
    run = new_run(s)
    (r,) = s.runs()
    assert r["status"] == "running" and r["alive"]
    monkeypatch.setattr(store_module, "_pid_alive", lambda pid: False)
    (r,) = s.runs()
    assert r["status"] == "interrupted" and not r["alive"]
    assert (
        r["note"]
        == f"interrupted (process gone): PID {os.getpid()} on {r['host']} no longer exists"
    )
    s.finish_run(run, "complete")


def test_a_run_with_a_stale_heartbeat_reads_interrupted(tmp_path: Path, monkeypatch) -> None:
    s = Store(tmp_path / "h.duckdb")
    run = new_run(s)
    s.heartbeat(run)
    later = dt.datetime.now() + dt.timedelta(seconds=store_module.HEARTBEAT_STALE + 5)
    monkeypatch.setattr(store_module, "_now", lambda: later)
    (r,) = s.runs()
    assert r["status"] == "interrupted" and "no heartbeat" in r["note"]
    monkeypatch.undo()
    s.heartbeat(run)
    assert s.runs()[0]["alive"]
    s.finish_run(run, "complete")


def test_every_record_is_a_heartbeat(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.duckdb")
    run = new_run(s)
    first = s.runs()[0]["heartbeat_at"]
    s.add_speed(run, SPEED_ROW)
    assert s.runs()[0]["heartbeat_at"] > first


def test_second_run_is_refused_while_one_is_alive(tmp_path: Path) -> None:
    s = Store(tmp_path / "r.duckdb")
    run = new_run(s)
    with pytest.raises(
        RunInProgressError, match=rf"run {run}, PID {os.getpid()} on .*'pytest'.*--allow-concurrent"
    ):
        new_run(s)
    other = s.begin_run(
        kind="speed", suite="t", command="c", config={}, env={}, allow_concurrent=True
    )
    assert other == run + 1
    s.finish_run(run, "complete")
    s.finish_run(other, "complete")
    new_run(s)  # nothing alive: allowed


def test_machine_state_and_notes_round_trip(tmp_path: Path) -> None:
    s = Store(tmp_path / "m.duckdb")
    run = s.begin_run(
        kind="speed", suite="t", command="c", config={}, env={}, machine={"quiet": True}
    )
    s.set_machine(run, "end", {"quiet": False, "busy": [{"pid": 1}]})
    s.add_note(run, "machine-busy", "someone else")
    (r,) = Store(s.path, read_only=True).runs()
    assert r["machine"] == {"start": {"quiet": True}, "end": {"quiet": False, "busy": [{"pid": 1}]}}
    assert [(n["kind"], n["text"]) for n in s.notes([run])] == [("machine-busy", "someone else")]


def test_evidence_is_stored_as_json(tmp_path: Path) -> None:
    s = Store(tmp_path / "e.duckdb")
    run = new_run(s)
    keys = ("mixer", "impl", "pattern", "mask", "mode", "seq_len")
    s.add_skip(run, {**{k: SPEED_ROW[k] for k in keys}, "kind": "skipped", "reason": "r",
                     "evidence": {"points": [[64, 0.1, 10]]}})  # fmt: skip
    assert s.skips([run])[0]["evidence"] == '{"points": [[64, 0.1, 10]]}'


def _damage_one_table(path: Path, table: str) -> None:
    """Zero the storage blocks that hold ``table``'s data (a hole in the middle of the file)."""
    con = duckdb.connect(str(path))
    blocks = {
        r[0]
        for r in con.execute(
            f"SELECT block_id FROM pragma_storage_info('{table}') WHERE block_id >= 0"
        ).fetchall()
    }
    size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
    con.close()
    assert blocks, f"{table} has no data blocks to damage"
    raw = bytearray(path.read_bytes())
    header = 3 * 4096  # DuckDB's file header and two database headers precede block 0
    for b in blocks:
        start = header + b * size
        raw[start : start + size] = bytes(size)
    path.write_bytes(bytes(raw))


def test_repair_copies_the_runs_that_read_back_whole(tmp_path: Path) -> None:
    src = tmp_path / "src.duckdb"
    s = filled(src, runs=2, rows=2000)
    other = s.begin_run(kind="quality", suite="t", command="q", config={}, env={})
    s.add_note(other, "test", "no speed rows")
    s.finish_run(other, "complete")
    before = {r["run_id"]: r for r in s.runs()}
    notes_before = s.notes()
    _damage_one_table(src, "speed")
    with pytest.raises(StoreDamagedError):
        Store(src, read_only=True).speed()
    dest = tmp_path / "new.duckdb"
    report = repair(src, dest)
    assert "speed" in report.unreadable_tables
    fixed = Store(dest)
    copied = fixed.runs()
    # every copied run is whole: its rows equal the original's; the others are listed as lost
    assert sorted(report.copied) == [r["run_id"] for r in copied] == [other]
    assert sorted(report.lost) == [1, 2] and "speed" in report.lost[1]
    for r in copied:
        assert {k: v for k, v in r.items() if k != "alive"} == {
            k: v for k, v in before[r["run_id"]].items() if k != "alive"
        }
    assert [n for n in notes_before if n["run_id"] in report.copied] == fixed.notes()
    assert new_run(fixed) > other  # new runs never reuse a copied id
    fixed.check()


def test_repair_refuses_to_overwrite_or_read_nothing(tmp_path: Path) -> None:
    src = tmp_path / "a.duckdb"
    filled(src, runs=1, rows=2)
    with pytest.raises(StoreError, match="already exists"):
        repair(src, src)
    zero = tmp_path / "z.duckdb"
    zero.write_bytes(bytes(4096 * 8))
    with pytest.raises(StoreError, match="cannot be opened at all.*restore it from a backup"):
        repair(zero, tmp_path / "out.duckdb")
    assert not (tmp_path / "out.duckdb").exists()
