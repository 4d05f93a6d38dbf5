"""``attnzoo store check`` and ``attnzoo store repair``: is the store whole, and saving what a
damaged one still holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnzoo.cli_common import DbOption, WaitOption, fail, open_store, out
from attnzoo.store import StoreError, default_path
from attnzoo.store.repair import repair

store_app = typer.Typer(no_args_is_help=True, help="Check a store, or save a damaged one.")


@store_app.command("check")
def check(db: DbOption = None, wait: WaitOption = 10.0) -> None:
    """Read the whole store back; list its tables' row counts and runs by status."""
    store = open_store(db, read_only=True, wait=wait)
    counts = store.check()  # StoreDamagedError (one line, via the command guard) when damaged
    runs = store.runs()
    by_status: dict[str, int] = {}
    for r in runs:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    rows = sum(counts.values())
    status = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "no runs"
    out.print(
        f"store {store.path} is readable: schema v{store.schema_version}, {rows} rows in "
        f"{len(counts)} tables, {len(runs)} runs ({status})",
        soft_wrap=True,
    )
    for r in runs:
        if r["status"] == "interrupted" and (r.get("note") or "").startswith("interrupted (pro"):
            out.print(f"  run {r['run_id']} ({r['kind']}): {r['note']}", soft_wrap=True)


@store_app.command("repair")
def repair_cmd(
    dest: Annotated[Path, typer.Argument(help="New store file for the readable runs.")],
    db: DbOption = None,
    wait: WaitOption = 10.0,
) -> None:
    """Copy every run of a damaged store that reads back whole into a new store file."""
    source = default_path(db)
    try:
        report = repair(source, dest)
    except StoreError as e:
        raise fail(str(e)) from None
    out.print(report.summary(), soft_wrap=True)
    for run_id, why in sorted(report.lost.items()):
        out.print(f"  run {run_id} left out: {why}", soft_wrap=True)
