"""Saving what a damaged store still holds: copy every run that reads back whole into a new store.

A run is copied only when its row in ``runs`` and all its rows in every other table read back
without error; a run with any unreadable part is left out (a partial run would look complete)
and listed with the error. The copy keeps run ids, so reports and notes that name a run stay
true; the new store's run-id sequence starts after the largest copied id. The damaged file is
only read, never written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import duckdb

from attnzoo.store.store import Store, StoreError, first_line


@dataclasses.dataclass
class RepairReport:
    source: Path
    dest: Path
    copied: list[int] = dataclasses.field(default_factory=list)  # run ids
    lost: dict[int, str] = dataclasses.field(default_factory=dict)  # run id -> first error
    unreadable_tables: dict[str, str] = dataclasses.field(default_factory=dict)
    rows: int = 0  # rows copied, all tables

    def summary(self) -> str:
        s = f"copied {len(self.copied)} run(s) ({self.rows} rows) from {self.source} to {self.dest}"
        if self.lost:
            s += f"; left out {len(self.lost)} run(s) with unreadable parts: {sorted(self.lost)}"
        if self.unreadable_tables:
            s += f"; unreadable tables: {sorted(self.unreadable_tables)}"
        return s


def _read(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> tuple[list[str], list]:
    cur = con.execute(sql, params)
    return [d[0] for d in cur.description], cur.fetchall()


def repair(source: str | Path, dest: str | Path) -> RepairReport:
    """Copy the readable runs of ``source`` into a new store at ``dest`` (which must not exist)."""
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise StoreError(f"store repair: {source} is not a file")
    if dest.exists():
        raise StoreError(f"store repair: {dest} already exists; name a new file")
    if dest.resolve() == source.resolve():
        raise StoreError("store repair: the destination must differ from the damaged store")
    try:
        con = duckdb.connect(str(source), read_only=True)
    except duckdb.Error as e:
        raise StoreError(
            f"store repair: {source} cannot be opened at all ({first_line(str(e))}); nothing can be "
            f"saved from it: restore it from a backup"
        ) from None
    report = RepairReport(source, dest)
    try:
        try:
            tables = [
                r[0]
                for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            ]
            run_cols, run_rows = _read(con, "SELECT * FROM runs ORDER BY run_id", [])
        except duckdb.Error as e:
            raise StoreError(
                f"store repair: the runs table of {source} is unreadable ({first_line(str(e))}); "
                f"nothing can be saved from it: restore it from a backup"
            ) from None
        data: dict[int, dict[str, tuple[list[str], list]]] = {}
        for row in run_rows:
            run_id = row[run_cols.index("run_id")]
            data[run_id] = {"runs": (run_cols, [row])}
        for table in sorted(t for t in tables if t not in ("runs", "attnzoo_meta")):
            try:
                cols, rows = _read(con, f'SELECT * FROM "{table}"', [])
            except duckdb.Error as e:
                report.unreadable_tables[table] = first_line(str(e))
                for run_id in list(data):  # run by run, what still reads
                    try:
                        data[run_id][table] = _read(
                            con, f'SELECT * FROM "{table}" WHERE run_id = ?', [run_id]
                        )
                    except duckdb.Error as e2:
                        report.lost[run_id] = f"{table}: {first_line(str(e2))}"
                continue
            at = cols.index("run_id")
            for run_id in data:
                data[run_id][table] = (cols, [r for r in rows if r[at] == run_id])
    finally:
        con.close()
    store = Store(dest)  # the latest schema
    with store._write() as out:
        known = {
            t: {
                r[0]
                for r in out.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [t]
                ).fetchall()
            }
            for t in {t for d in data.values() for t in d}
        }
        for run_id, parts in data.items():
            if run_id in report.lost:
                continue
            for table, (cols, rows) in parts.items():
                keep = [i for i, c in enumerate(cols) if c in known[table]]
                if not rows or not keep:
                    continue
                names = ", ".join(f'"{cols[i]}"' for i in keep)
                marks = ", ".join("?" for _ in keep)
                out.executemany(
                    f'INSERT INTO "{table}" ({names}) VALUES ({marks})',
                    [[r[i] for i in keep] for r in rows],
                )
                report.rows += len(rows)
            report.copied.append(run_id)
        if report.copied:  # new runs must not reuse a copied id
            out.execute(f"SELECT nextval('run_ids') FROM range({max(report.copied)})").fetchall()
    return report
