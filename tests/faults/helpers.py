"""Launching benches as separate processes, watching their store, and comparing what was kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnzoo.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("speed", "skips", "checks", "peers", "quality", "quality_curve", "cp", "cp_skips")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m attnzoo.cli ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "attnzoo.cli", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env=_env(),
    )  # fmt: skip


def start(*args: str) -> subprocess.Popen[str]:
    """``python -m attnzoo.cli ARGS`` in the background, in its own session (so its workers can
    be found and cleaned up)."""
    return subprocess.Popen(
        [sys.executable, "-m", "attnzoo.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True,
    )  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def wait_for(what: str, cond: Callable[[], Any], timeout: float, proc: subprocess.Popen | None = None) -> Any:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"the bench ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}"
            )
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def snapshot(db: Path) -> dict[str, list[tuple]]:
    """Every row of every results table (without recorded_at's precision games), read-only."""
    s = Store(db, read_only=True, wait=60)
    out = {}
    for t in TABLES:
        rows = getattr(s, {"quality_curve": "curves"}.get(t, t))()
        out[t] = sorted(tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows)
    return out


def rows_of(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    try:
        return len(snapshot(db)[table])
    except StoreError:
        return 0


def assert_kept(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> None:
    """Every row seen before the fault is still there, unchanged."""
    for table, rows in before.items():
        missing = set(rows) - set(after[table])
        assert not missing, f"{len(missing)} committed {table} rows lost, e.g. {sorted(missing)[0]}"


def children(pid: int) -> set[int]:
    """All descendants of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in found:
                found.add(k)
                todo.append(k)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent has not collected it
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_group(proc: subprocess.Popen) -> None:
    """Clean-up: the bench's whole session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
