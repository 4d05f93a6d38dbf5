"""What every benchmark run shares: its end state in the store and its progress bar."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attnzoo.store import Store


class RunInterrupted(Exception):
    """Ctrl-C during a run: the run is marked interrupted and keeps what it finished."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} interrupted")
        self.run_id = run_id


@contextlib.contextmanager
def finishing(store: Store, run_id: int) -> Iterator[None]:
    """Mark ``run_id`` complete when the block ends, interrupted on Ctrl-C (raising
    :class:`RunInterrupted`), failed on any other exception (re-raised)."""
    try:
        yield
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", note="stopped by the user (Ctrl-C)")
        raise RunInterrupted(run_id) from None
    except BaseException as e:
        store.finish_run(run_id, "failed", note=repr(e))
        raise
    store.finish_run(run_id, "complete")


def progress_bar(console: Console, progress: bool, unit: str = "") -> Progress:
    """The benchmark commands' bar: description, bar, done/total (``unit``), elapsed, ETA."""
    done = "{task.completed}/{task.total}" + (f" {unit}" if unit else "")
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn(done), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not progress,
    )  # fmt: skip
