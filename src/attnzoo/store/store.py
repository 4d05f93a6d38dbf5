"""The DuckDB store: the only code in attnzoo that speaks SQL.

Every write opens the file, writes in one transaction, commits and closes. So a measurement is
durable the moment it is recorded (an interrupted run keeps everything it finished), the file is
locked only for milliseconds, and a second process writing the same file waits for the lock (up
to ``wait`` seconds) instead of corrupting anything; past that it gets :class:`StoreBusyError`,
naming the process that holds it. A file that is not a DuckDB database, or a DuckDB database
that is not an attnzoo store, is refused with :class:`StoreError` before anything is written; a
damaged one (truncated, zeroed, overwritten) with :class:`StoreDamagedError`, at whichever read
first meets the damage, and at once when opened for writing (every table is read through).

Liveness: a run's process writes a heartbeat (:meth:`Store.heartbeat`, and with every record).
Every reader shows a run still marked 'running' whose process is gone (same host, pid no longer
exists) or whose heartbeat is older than :data:`HEARTBEAT_STALE` seconds as 'interrupted',
with the reason in its note; the file itself is corrected by the next writer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from attnzoo.store.schema import APP_ID, LATEST, MIGRATIONS

DEFAULT_DB = "attnzoo.duckdb"
ENV_DB = "ATTNZOO_DB"

SPEED_COLUMNS = (
    "mixer", "impl", "pattern", "mask", "mode", "batch", "seq_len", "ctx_len", "d_model", "heads",
    "head_dim", "repeats", "median_s", "min_s", "peak_bytes", "flops", "gflops_per_s", "gemm_fraction",
    "max_s", "q1_s", "q3_s",
)  # fmt: skip
SKIP_COLUMNS = ("mixer", "impl", "pattern", "mask", "mode", "seq_len", "kind", "reason", "evidence")
CHECK_COLUMNS = ("mixer", "impl", "pattern", "max_abs_err", "ok", "detail")
QUALITY_COLUMNS = (
    "task", "task_config", "mixer", "d_model", "num_layers", "lr", "seed", "params", "state_size",
    "steps_run", "status", "final_metric", "best_metric", "best_of_sweep", "seconds",
)  # fmt: skip
CURVE_COLUMNS = ("task", "mixer", "d_model", "lr", "seed", "step", "train_loss", "eval_loss",
                 "metric", "seconds")  # fmt: skip
EVAL_COLUMNS = ("task", "mixer", "d_model", "lr", "seed", "name", "value")
CP_COLUMNS = ("strategy", "sharding", "mask", "seq_len", "mode", "world_size", "rank", "latency_s",
              "rank_wall_s", "rank_cpu_s", "peak_bytes", "bytes_sent", "bytes_analytic", "pairs",
              "max_abs_err", "ref_max", "exact")  # fmt: skip
TASK_COLUMNS = ("task", "task_config", "description", "metric", "maximize", "patterns", "fmt",
                "bounded", "tokens", "point_keys")  # fmt: skip
CP_SKIP_COLUMNS = ("strategy", "sharding", "mask", "seq_len", "mode", "world_size", "reason")
PEER_COLUMNS = (
    "case_name", "mechanism", "peer", "size", "n", "ours_s", "peer_s", "ratio", "ours_flops",
    "ours_gflops", "gemm_fraction", "ours_peak_bytes", "peer_peak_bytes", "max_abs_diff",
    "rel_diff", "ok", "repeats", "detail", "ours_spread", "peer_spread",
)  # fmt: skip
# columns added after their table's first version: a row may leave them out (recorded as NULL)
OPTIONAL = frozenset({"max_s", "q1_s", "q3_s", "evidence", "ours_spread", "peer_spread"})
HEARTBEAT_STALE = 300.0  # seconds without a heartbeat after which a 'running' run is dead


class StoreError(Exception):
    """The file cannot be used as an attnzoo store (corrupt, foreign or too new)."""


class StoreBusyError(StoreError):
    """Another process held the store's lock for longer than the wait allowed."""


class StoreDamagedError(StoreError):
    """The file is an attnzoo store whose contents can no longer be read (truncated, zeroed,
    overwritten)."""


class RunInProgressError(StoreError):
    """Another bench is running on this store (its process is alive)."""


def first_line(message: str) -> str:
    """The first line of a (DuckDB) error message, which names what failed."""
    text = message.strip()
    return text.splitlines()[0] if text else "unreadable"


def damaged(path: Path, detail: str) -> StoreDamagedError:
    first = first_line(detail)
    return StoreDamagedError(
        f"store {path} is damaged and cannot be read ({first}). Restore it from a backup, save "
        f"what is readable with `attnzoo store repair --db {path} NEW.duckdb`, or start a new "
        f"store with --db NEW.duckdb"
    )


def _holder(msg: str) -> str:
    """'PID 123 (/usr/bin/python3)' from DuckDB's lock message, or 'another process'."""
    m = re.search(r"held in (.+?) \(PID (\d+)\)", msg)
    return f"PID {m.group(2)} ({m.group(1)})" if m else "another process"


def default_path(db: str | os.PathLike[str] | None = None) -> Path:
    """``db`` if given, else ``$ATTNZOO_DB``, else ``attnzoo.duckdb`` in the working directory."""
    return Path(db if db is not None else os.environ.get(ENV_DB) or DEFAULT_DB)


def _now() -> dt.datetime:
    return dt.datetime.now()


class Store:
    """An attnzoo results store in one DuckDB file.

    Args:
        path: the database file (created, with the schema, if missing).
        read_only: open without writing (the file must exist and be a current store).
        wait: seconds to wait for another process's lock before :class:`StoreBusyError`.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, read_only: bool = False, wait: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.wait = wait
        # one writer at a time within this process (the bench's heartbeat thread and its main
        # thread update the same run row; DuckDB would call that a transaction conflict)
        self._lock = threading.RLock()
        self._missing: set[str] = (
            set()
        )  # tables of newer schemas, absent from an old read-only store
        if self.path.is_dir():
            raise StoreError(
                f"--db {self.path} is a directory; give a file path such as {self.path / DEFAULT_DB}"
            )
        if read_only and not self.path.exists():
            raise StoreError(f"--db {self.path} does not exist; run `attnzoo bench speed` first")
        if not read_only and not self.path.parent.exists():
            raise StoreError(f"--db {self.path}: folder {self.path.parent} does not exist")
        with self._connect() as con:
            self._check_and_migrate(con)
            if not read_only:  # a writer proves the whole file readable before it measures
                self._read_through(con)

    # ---- connections --------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.wait
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=self.read_only)
                break
            except duckdb.IOException as e:
                msg = str(e)
                if "lock" in msg.lower():
                    if time.monotonic() >= deadline:
                        raise StoreBusyError(
                            f"store {self.path} is held open for writing by {_holder(msg)} and "
                            f"stayed locked for {self.wait:.0f} s; close it there (a notebook's "
                            f"connection, another bench) or wait longer with --wait SECONDS"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                raise self._unusable(msg) from None
            except duckdb.Error as e:
                raise self._unusable(str(e)) from None
        try:
            yield con
        except duckdb.Error as e:
            if _is_full(e):
                raise StoreError(
                    f"could not write to store {self.path}: no space left on its disk. Everything "
                    f"recorded before this is kept; free space, then run again"
                ) from None
            if _is_damage(e):
                raise damaged(self.path, str(e)) from None
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                con.close()

    def _unusable(self, msg: str) -> StoreError:
        if self.path.exists() and self.path.stat().st_size > 0 and _looks_like_duckdb(self.path):
            return damaged(self.path, msg)
        first = first_line(msg)
        return StoreError(
            f"--db {self.path} cannot be opened as an attnzoo store ({first}). If it was one, it "
            f"is damaged: restore it from a backup or start a new store with --db NEW.duckdb"
        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction: committed on success, rolled back on any error."""
        if self.read_only:
            raise StoreError(f"store {self.path} was opened read-only")
        with self._lock, self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _check_and_migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        if "attnzoo_meta" not in tables:
            if tables:
                raise StoreError(
                    f"--db {self.path} is a DuckDB database but not an attnzoo store "
                    f"(it has tables {sorted(tables)[:5]} and no attnzoo_meta); refusing to touch it"
                )
            version = 0
        else:
            meta = dict(con.execute("SELECT key, value FROM attnzoo_meta").fetchall())
            if meta.get("app") != APP_ID:
                raise StoreError(
                    f"--db {self.path} has an attnzoo_meta table but is not an attnzoo store"
                )
            version = int(meta["schema_version"])
        if version > LATEST:
            raise StoreError(
                f"--db {self.path} has schema v{version}, written by a newer attnzoo; this one knows "
                f"up to v{LATEST}. Upgrade attnzoo or use another --db"
            )
        if version == LATEST:
            return
        if self.read_only:  # readers see the old tables; tables added since read as empty
            self._missing = {t for v, _, sql in MIGRATIONS if v > version for t in _created(sql)}
            return
        con.execute("BEGIN TRANSACTION")
        try:
            for v, _, statements in MIGRATIONS:
                if v <= version:
                    continue
                for sql in statements:
                    con.execute(sql)
            con.execute("DELETE FROM attnzoo_meta WHERE key IN ('app', 'schema_version')")
            con.execute(
                "INSERT INTO attnzoo_meta VALUES ('app', ?), ('schema_version', ?)",
                [APP_ID, str(LATEST)],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _tables(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        return sorted(
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        )

    def _read_through(self, con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        """Read every row of every table (raises :class:`StoreDamagedError` through
        :meth:`_connect` where the file is damaged); returns the row counts."""
        counts = {}
        for t in self._tables(con):
            # hashing every row forces every column block to be read and decompressed
            counts[t] = int(
                con.execute(f'SELECT count(*), sum(hash(t)) FROM "{t}" t').fetchone()[0]
            )
        return counts

    def check(self) -> dict[str, int]:
        """Read the whole store; the row count of every table, or :class:`StoreDamagedError`."""
        with self._connect() as con:
            return self._read_through(con)

    @property
    def schema_version(self) -> int:
        with self._connect() as con:
            return int(
                con.execute(
                    "SELECT value FROM attnzoo_meta WHERE key = 'schema_version'"
                ).fetchone()[0]
            )

    # ---- runs ---------------------------------------------------------------------------
    def begin_run(
        self, *, kind: str, suite: str | None, command: str, config: dict[str, Any], env: dict[str, Any],
        git_sha: str | None = None, gemm_gflops: float | None = None, allow_concurrent: bool = False,
        machine: dict[str, Any] | None = None,
    ) -> int:  # fmt: skip
        """Record a new 'running' run. Refused with :class:`RunInProgressError` while another
        run of this store is alive (two benches on one machine spoil each other's timings),
        unless ``allow_concurrent``."""
        with self._write() as con:
            self._mark_dead_runs(con)
            if not allow_concurrent:
                alive = con.execute(
                    "SELECT run_id, kind, pid, host, command FROM runs WHERE status = 'running'"
                ).fetchall()
                if alive:
                    run_id, kind, pid, host, command = alive[0]
                    raise self._in_progress(run_id, kind, pid, host, command)
            now = _now()
            row = con.execute(
                """INSERT INTO runs (kind, suite, status, started_at, command, git_sha, host, pid, env,
                   config, gemm_gflops, heartbeat_at, machine)
                   VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING run_id""",
                [kind, suite, now, command, git_sha, socket.gethostname(), os.getpid(),
                 json.dumps(env, sort_keys=True), json.dumps(config, sort_keys=True), gemm_gflops,
                 now, json.dumps({"start": machine} if machine else {}, sort_keys=True)],
            ).fetchone()  # fmt: skip
        return int(row[0])

    def check_idle(self) -> None:
        """:class:`RunInProgressError` if a run of this store is alive (read-only: a bench
        checks this before it measures anything; :meth:`begin_run` checks again)."""
        for r in self.runs():
            if r["alive"]:
                raise self._in_progress(r["run_id"], r["kind"], r["pid"], r["host"], r["command"])

    def _in_progress(self, run_id: int, kind: str, pid: int, host: str, command: str) -> RunInProgressError:  # fmt: skip
        return RunInProgressError(
            f"store {self.path} has a {kind} run in progress: run {run_id}, PID {pid} on "
            f"{host}: {command!r}. Two benches measuring at once spoil each other's timings; "
            f"wait for it, stop it, or pass --allow-concurrent"
        )

    def heartbeat(self, run_id: int) -> None:
        """Mark ``run_id`` alive now (the bench calls this periodically)."""
        with self._write() as con:
            con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [_now(), run_id])

    def set_machine(self, run_id: int, when: str, state: dict[str, Any]) -> None:
        """Record the machine's load at the run's ``when`` ('start' or 'end')."""
        with self._write() as con:
            old = con.execute("SELECT machine FROM runs WHERE run_id = ?", [run_id]).fetchone()
            machine = json.loads(old[0]) if old and old[0] else {}
            machine[when] = state
            con.execute(
                "UPDATE runs SET machine = ? WHERE run_id = ?",
                [json.dumps(machine, sort_keys=True), run_id],
            )

    def add_note(self, run_id: int, kind: str, text: str) -> None:
        """A note about ``run_id`` made while it runs (e.g. a skip later proved wrong)."""
        with self._write() as con:
            con.execute("INSERT INTO run_notes VALUES (?, ?, ?, ?)", [run_id, kind, text, _now()])

    def notes(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Notes of the runs (empty for stores older than v8)."""
        return self._table("run_notes", run_ids, {})

    def finish_run(self, run_id: int, status: str, note: str | None = None) -> None:
        if status not in ("complete", "interrupted", "failed"):
            raise ValueError(
                f"finish_run: status must be complete, interrupted or failed, got {status!r}"
            )
        with self._write() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, note = ? WHERE run_id = ?",
                [status, _now(), note, run_id],
            )

    def _mark_dead_runs(self, con: duckdb.DuckDBPyConnection) -> None:
        """Runs left 'running' whose process is gone are marked interrupted, with the reason."""
        for run_id, host, pid, beat in con.execute(
            "SELECT run_id, host, pid, heartbeat_at FROM runs WHERE status = 'running'"
        ).fetchall():
            why = dead_reason(host, pid, beat)
            if why:
                con.execute(
                    "UPDATE runs SET status = 'interrupted', note = ? WHERE run_id = ?",
                    [f"interrupted (process gone): {why}", run_id],
                )

    # ---- records ------------------------------------------------------------------------
    def add_specs(self, run_id: int, specs: Sequence[dict[str, Any]]) -> None:
        with self._write() as con:
            con.executemany(
                "INSERT INTO mixer_specs VALUES (?, ?, ?)",
                [[run_id, s["name"], json.dumps(s)] for s in specs],
            )

    def _insert(self, table: str, columns: Sequence[str], run_id: int, row: dict[str, Any]) -> None:
        missing = [c for c in columns if c not in row and c not in OPTIONAL]
        if missing:
            raise ValueError(f"store: a {table} row needs {missing}")
        cols = ", ".join(("run_id", *columns, "recorded_at"))
        marks = ", ".join("?" for _ in range(len(columns) + 2))
        values = [row.get(c) for c in columns]
        values = [
            json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v for v in values
        ]
        now = _now()
        with self._write() as con:
            con.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", [run_id, *values, now])
            # every record is also a heartbeat of its run
            con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [now, run_id])

    def add_check(self, run_id: int, row: dict[str, Any]) -> None:
        self._insert("checks", CHECK_COLUMNS, run_id, row)

    def add_speed(self, run_id: int, row: dict[str, Any]) -> None:
        self._insert("speed", SPEED_COLUMNS, run_id, row)

    def add_skip(self, run_id: int, row: dict[str, Any]) -> None:
        self._insert("skips", SKIP_COLUMNS, run_id, row)

    def add_peer(self, run_id: int, row: dict[str, Any]) -> None:
        self._insert("peers", PEER_COLUMNS, run_id, row)

    def add_quality(self, run_id: int, row: dict[str, Any]) -> None:
        """One trained model: :data:`QUALITY_COLUMNS`. ``status``: the trainer's ``complete``,
        ``early-stop`` or ``interrupted``, or ``failed`` (its training raised or its worker
        died: no metrics; a ``point-failed`` run note says why)."""
        self._insert("quality", QUALITY_COLUMNS, run_id, row)

    def add_curve_point(self, run_id: int, row: dict[str, Any]) -> None:
        """``row``: :data:`CURVE_COLUMNS`, and optionally ``task_config`` (JSON; else NULL)."""
        cols = (*CURVE_COLUMNS, "task_config")
        self._insert("quality_curve", cols, run_id, {"task_config": None, **row})

    def add_quality_eval(self, run_id: int, row: dict[str, Any]) -> None:
        """One extra evaluation of a trained model: :data:`EVAL_COLUMNS` (``name``, e.g.
        ``greedy_n11_20``, and its ``value``), optionally ``task_config`` (JSON; else NULL)."""
        cols = (*EVAL_COLUMNS, "task_config")
        self._insert("quality_eval", cols, run_id, {"task_config": None, **row})

    def add_task(self, run_id: int, row: dict[str, Any]) -> None:
        """What a quality task point is (``QualityTask.describe``): once per run, task and
        ``task_config`` (JSON); a repeat is ignored."""
        have = self._rows(
            "SELECT 1 FROM quality_tasks WHERE run_id = ? AND task = ? AND task_config = ?",
            [run_id, row["task"], row["task_config"]],
        )
        if not have:
            cols = {**row, "patterns": json.dumps(list(row["patterns"])),
                    "point_keys": json.dumps([list(k) for k in row.get("point_keys", ())])}  # fmt: skip
            self._insert("quality_tasks", TASK_COLUMNS, run_id, cols)

    def add_cp(self, run_id: int, row: dict[str, Any]) -> None:
        self._insert("cp", CP_COLUMNS, run_id, row)

    def add_cp_skip(self, run_id: int, row: dict[str, Any]) -> None:
        self._insert("cp_skips", CP_SKIP_COLUMNS, run_id, row)

    def mark_best_of_sweep(self, run_id: int, task: str, mixer: str, d_model: int, seed: int,
                           lr: float, *, task_config: str | None = None) -> None:  # fmt: skip
        """Flag the row of ``lr`` as its group's best (the others cleared), in one transaction.
        ``task_config`` narrows the group to one task point (several MQAR (L, kv) points)."""
        where = "run_id = ? AND task = ? AND mixer = ? AND d_model = ? AND seed = ?"
        params: list[Any] = [lr, run_id, task, mixer, d_model, seed]
        if task_config is not None:
            where += " AND task_config = ?"
            params.append(task_config)
        with self._write() as con:
            con.execute(f"UPDATE quality SET best_of_sweep = (lr = ?) WHERE {where}", params)

    # ---- queries ------------------------------------------------------------------------
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._connect() as con:
            cur = con.execute(sql, list(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The runs, oldest first. A run still marked 'running' whose process is gone reads as
        'interrupted', its note saying why (``alive`` False); a live one has ``alive`` True."""
        sql = "SELECT * FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY run_id"
        rows = self._rows(sql, [kind] if kind else [])
        for r in rows:
            r["env"] = json.loads(r["env"])
            r["config"] = json.loads(r["config"])
            r["machine"] = json.loads(r["machine"]) if r.get("machine") else {}
            r["alive"] = False
            if r["status"] == "running":
                why = dead_reason(r["host"], r["pid"], r.get("heartbeat_at"))
                if why:
                    r["status"], r["note"] = "interrupted", f"interrupted (process gone): {why}"
                else:
                    r["alive"] = True
        return rows

    def run(self, run_id: int) -> dict[str, Any]:
        found = [r for r in self.runs() if r["run_id"] == run_id]
        if not found:
            ids = [r["run_id"] for r in self.runs()]
            raise ValueError(f"--run {run_id}: no such run in {self.path}; runs: {ids or 'none'}")
        return found[0]

    def latest_run_id(self, kind: str = "speed") -> int | None:
        """The newest run of ``kind`` that recorded anything (complete or not)."""
        rows = self._rows("SELECT max(run_id) AS r FROM runs WHERE kind = ?", [kind])
        return rows[0]["r"]

    def specs(self, run_id: int) -> list[dict[str, Any]]:
        rows = self._rows("SELECT spec FROM mixer_specs WHERE run_id = ? ORDER BY name", [run_id])
        return [json.loads(r["spec"]) for r in rows]

    def _table(
        self, table: str, run_ids: Sequence[int] | None, filters: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if table in self._missing:
            return []
        where, params = [], []
        if run_ids is not None:
            if not run_ids:
                return []
            where.append(f"run_id IN ({', '.join('?' for _ in run_ids)})")
            params += list(run_ids)
        for col, value in filters.items():
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
        return self._rows(sql + " ORDER BY run_id, recorded_at", params)

    def speed(self, run_ids: Sequence[int] | None = None, **filters: Any) -> list[dict[str, Any]]:
        bad = set(filters) - set(SPEED_COLUMNS)
        if bad:
            raise ValueError(f"speed filters must be speed columns, got {sorted(bad)}")
        return self._table("speed", run_ids, filters)

    def peers(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        return self._table("peers", run_ids, {})

    def quality(self, run_ids: Sequence[int] | None = None, **filters: Any) -> list[dict[str, Any]]:
        bad = set(filters) - set(QUALITY_COLUMNS)
        if bad:
            raise ValueError(f"quality filters must be quality columns, got {sorted(bad)}")
        return self._table("quality", run_ids, filters)

    def curves(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Curve points; ``task_config`` is None for points of older stores (before v4)."""
        rows = self._table("quality_curve", run_ids, {})
        for r in rows:
            r.setdefault("task_config", None)
        return rows

    def quality_evals(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Extra evaluations (``quality_eval`` rows); empty for stores older than v4."""
        return self._table("quality_eval", run_ids, {})

    def tasks(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """What each quality task point is (``patterns`` and ``point_keys`` parsed); empty for
        stores older than v7."""
        rows = self._table("quality_tasks", run_ids, {})
        for r in rows:
            r["patterns"] = tuple(json.loads(r["patterns"]))
            r["point_keys"] = [tuple(k) for k in json.loads(r["point_keys"])]
        return rows

    def cp(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Context-parallel rows (one per case and rank); empty for stores older than v5."""
        return self._table("cp", run_ids, {})

    def cp_skips(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        return self._table("cp_skips", run_ids, {})

    def skips(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        return self._table("skips", run_ids, {})

    def checks(self, run_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        return self._table("checks", run_ids, {})


def _created(statements: Sequence[str]) -> list[str]:
    """Table names a migration's statements create."""
    out = []
    for sql in statements:
        words = sql.split()
        if words[:2] == ["CREATE", "TABLE"]:
            out.append(words[2])
    return out


def _is_full(e: duckdb.Error) -> bool:
    msg = str(e).lower()
    return "no space left" in msg or "disk full" in msg or "disk is full" in msg


def _is_damage(e: duckdb.Error) -> bool:
    """Whether a DuckDB error reading a store means its file is damaged (not a query bug)."""
    if isinstance(e, duckdb.IOException | duckdb.InternalException | duckdb.SerializationException):
        return True
    msg = str(e).lower()
    return type(e) is duckdb.Error or "corrupt" in msg or "checksum" in msg


def _looks_like_duckdb(path: Path) -> bool:
    """DuckDB files carry the magic 'DUCK' at byte 8."""
    try:
        with open(path, "rb") as f:
            return f.read(12)[8:12] == b"DUCK"
    except OSError:
        return False


def dead_reason(host: str | None, pid: int | None, heartbeat: dt.datetime | None) -> str | None:
    """Why a run marked 'running' is no longer running, or ``None`` if it may be alive: its
    process (on this host) no longer exists, or its heartbeat is older than
    :data:`HEARTBEAT_STALE` seconds."""
    if host == socket.gethostname() and pid is not None and not _pid_alive(int(pid)):
        return f"PID {pid} on {host} no longer exists"
    if heartbeat is not None:
        age = (_now() - heartbeat).total_seconds()
        if age > HEARTBEAT_STALE:
            return f"no heartbeat from PID {pid} on {host} for {age:.0f} s"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
