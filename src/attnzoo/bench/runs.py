"""What every benchmark run shares: its start and end state in the store and its progress bar.

- :func:`start_run` records the run ('running'), refusing while another run of the store is
  alive (unless ``allow_concurrent``), with the machine's load at the start; a machine that is
  not quiet is warned about on the console and noted in the run.
- :func:`finishing` ends it: 'complete', 'interrupted' on Ctrl-C or SIGTERM (which
  ``timeout`` and job schedulers send; both raise :class:`RunInterrupted` and keep everything
  recorded), 'failed' on any other exception. While the block runs a thread writes the run's
  heartbeat every :data:`HEARTBEAT_EVERY` seconds, so readers on other hosts can tell a dead
  run (SIGKILL leaves no chance to mark it) from a live one; the machine's load at the end is
  recorded too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attnzoo.bench.env import describe_load, git_sha, machine_state
from attnzoo.store import Store, StoreError

HEARTBEAT_EVERY = 30.0  # seconds; readers call a run dead after store.HEARTBEAT_STALE


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM during a run: the run is marked interrupted and keeps what it finished."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} interrupted")
        self.run_id = run_id


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C."""


def start_run(
    store: Store, *, kind: str, suite: str | None, command: str, config: dict[str, Any],
    env: dict[str, Any], console: Console, gemm_gflops: float | None = None,
    allow_concurrent: bool = False,
) -> int:  # fmt: skip
    """Record a new run and return its id (see the module docstring)."""
    state = machine_state()
    run_id = store.begin_run(
        kind=kind, suite=suite, command=command, config=config, env=env, git_sha=git_sha(),
        gemm_gflops=gemm_gflops, allow_concurrent=allow_concurrent, machine=state,
    )  # fmt: skip
    if not state["quiet"]:
        text = f"the machine was not quiet at the start: {describe_load(state)}"
        store.add_note(run_id, "machine-busy", text)
        console.print(f"[yellow]warning:[/] {text}; timings may be inflated", soft_wrap=True)
    return run_id


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigterm_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _heartbeat(store: Store, run_id: int) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY):
            with contextlib.suppress(StoreError):  # a busy store delays one beat, no more
                store.heartbeat(run_id)

    thread = threading.Thread(target=beat, name=f"attnzoo-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _record_end(store: Store, run_id: int) -> None:
    state = machine_state()
    store.set_machine(run_id, "end", state)
    if not state["quiet"]:
        store.add_note(run_id, "machine-busy", f"not quiet at the end: {describe_load(state)}")


@contextlib.contextmanager
def finishing(store: Store, run_id: int) -> Iterator[None]:
    """Mark ``run_id`` complete when the block ends, interrupted on Ctrl-C or SIGTERM (raising
    :class:`RunInterrupted`), failed on any other exception (re-raised)."""
    try:
        with _sigterm_as_interrupt(), _heartbeat(store, run_id):
            yield
    except KeyboardInterrupt as e:
        how = "SIGTERM" if isinstance(e, Terminated) else "the user (Ctrl-C)"
        with _sigterm_ignored():  # a second SIGTERM must not stop the bookkeeping
            store.finish_run(run_id, "interrupted", note=f"stopped by {how}")
        raise RunInterrupted(run_id) from None
    except BaseException as e:
        store.finish_run(run_id, "failed", note=repr(e))
        raise
    _record_end(store, run_id)
    store.finish_run(run_id, "complete")


def progress_bar(console: Console, progress: bool, unit: str = "") -> Progress:
    """The benchmark commands' bar: description, bar, done/total (``unit``), elapsed, ETA."""
    done = "{task.completed}/{task.total}" + (f" {unit}" if unit else "")
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn(done), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not progress,
    )  # fmt: skip
