"""Where a bench's independent work items run: in this process (:class:`LocalExecutor`) or as
Ray tasks (:class:`RayExecutor`, ``attnzoo bench quality --executor ray``).

An executor maps a pure function over items and yields ``(item, outcome)`` as each finishes:
the function's return value, or a :class:`Failure` saying why there is none (the function
raised; its Ray worker died on every attempt). It never writes anything: the caller (the
driver) stores the outcomes, so a DuckDB store keeps its one writer. Ctrl-C and SIGTERM are not
failures: they propagate, and leaving the executor's ``with`` block cancels what is still
running.

Ray is optional (``pip install 'attnzoo[ray]'``): this module imports it only when a
:class:`RayExecutor` is entered. Its tasks take ``num_cpus`` CPUs each (1 by default) and set
torch's thread count to that, so N workers on N cores do not oversubscribe them. A task whose
worker process dies (killed, out of memory, its node lost) is retried ``retries`` times (kills
by Ray's memory monitor too: ``RAY_task_oom_retries`` is set to ``retries`` unless the
environment sets it); an exception raised by the function itself is not retried (a bug raises
again).

A cluster for several processes or machines::

    ray start --head --num-cpus 2
    attnzoo bench quality --executor ray --ray-address auto ...
    ray stop

Without ``--ray-address`` the bench attaches to the newest Ray instance of this machine, or
starts a local one for the run (and stops it at the end); a process that called ``ray.init``
itself keeps its session (``--ray-address`` is then ignored). The workers import attnzoo:
every node needs it installed (tasks registered outside attnzoo need their module imported
there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol, TypeVar

from attnzoo.extras import MissingExtra, require

T = TypeVar("T")
R = TypeVar("R")

#: the caller's progress hook, passed as is to the function by :class:`LocalExecutor` (the
#: quality bench's ``on_update``); Ray tasks get ``None`` (the caller advances per result)
ProgressFn = Callable[..., None]
POLL_S = 0.2  # seconds between polls for finished Ray tasks


class ExecutorError(RuntimeError):
    """The executor cannot start (e.g. no Ray cluster at the address given)."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why an item has no result: ``error`` names the exception (type, message, where)."""

    error: str


def error_text(e: BaseException) -> str:
    """``TypeError: message (at file.py:12 in f)``: an exception in one line for a note."""
    message = " ".join(str(e).split())
    text = f"{type(e).__name__}: {message}" if message else type(e).__name__
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        f = frames[-1]
        text += f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return text


class Executor(Protocol):
    """Runs a function over items (see the module docstring); used as a context manager."""

    #: the function reports progress per step (else the caller advances per finished item)
    per_step: bool

    def __enter__(self) -> Executor: ...

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None: ...  # fmt: skip

    def describe(self) -> str | None:
        """A run note saying where the items ran (``None``: this process, nothing to note)."""
        ...

    def map(self, fn: Callable[[T, ProgressFn | None], R], items: Sequence[T],
            on_progress: ProgressFn | None = None) -> Iterator[tuple[T, R | Failure]]:  # fmt: skip
        """``(item, fn(item, on_progress) or Failure)`` for every item, as each finishes."""
        ...


class LocalExecutor:
    """One item after another in this process, with per-step progress."""

    per_step = True

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        return None

    def describe(self) -> str | None:
        return None

    def map(self, fn: Callable[[T, ProgressFn | None], R], items: Sequence[T],
            on_progress: ProgressFn | None = None) -> Iterator[tuple[T, R | Failure]]:  # fmt: skip
        for item in items:
            try:
                outcome: R | Failure = fn(item, on_progress)
            except Exception as e:  # a bug in one item must not lose the others
                outcome = Failure(error_text(e))
            yield item, outcome


def import_ray() -> ModuleType:
    """The ``ray`` module, or :class:`~attnzoo.extras.MissingExtra` saying how to install it."""
    require("ray", "--executor ray")
    try:
        import ray
    except ImportError as e:  # installed but broken
        raise MissingExtra("ray", f"--executor ray (import ray failed: {e})", ["ray"]) from None
    return ray


class RayExecutor:
    """Items as Ray tasks, results yielded as they arrive (see the module docstring).

    Args:
        address: the cluster to attach to (``auto``: the running one; ``None``: the newest of
            this machine, else a new local instance for the run), as ``ray.init`` takes it.
        retries: attempts after the first for an item whose worker died.
        num_cpus: CPUs each task reserves; torch uses as many threads (at least 1).
        init: more keywords for ``ray.init`` when this executor starts Ray.
    """

    per_step = False

    def __init__(self, address: str | None = None, *, retries: int = 1, num_cpus: float = 1.0,
                 init: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"--retries must be an int >= 0, got {retries!r}")
        if not (isinstance(num_cpus, (int, float)) and num_cpus > 0):
            raise ValueError(f"RayExecutor: num_cpus must be > 0, got {num_cpus!r}")
        require("ray", "--executor ray")  # said before anything runs
        self.address, self.retries, self.num_cpus = address, retries, num_cpus
        self.init = dict(init or {})
        self._ray: ModuleType | None = None
        self._owns = False  # this executor called ray.init, so it calls ray.shutdown
        self._pending: list[Any] = []
        self._cpus = 0.0

    def __enter__(self) -> RayExecutor:
        ray = import_ray()
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, **self.init}
            # a task its node's memory monitor kills is retried by its own count, forever by
            # default: --retries bounds it too (read by this process when Ray starts or attaches)
            oom = {"RAY_task_oom_retries": str(self.retries)}
            try:
                with _environ(oom):
                    ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"--ray-address {self.address}" if self.address else "a local Ray instance"
                raise ExecutorError(
                    f"{where}: could not start or attach Ray ({_first_line(str(e))}). Start a "
                    "cluster with `ray start --head --num-cpus 2` and pass --ray-address auto, "
                    "or leave --ray-address out to start a local one"
                ) from None
            self._owns = True
        self._ray = ray
        self._cpus = float(ray.cluster_resources().get("CPU", 0.0))
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._cancel()
        if self._owns and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._owns = None, False

    def describe(self) -> str | None:
        where = self.address or "local"
        return (
            f"ran on Ray ({where}, {self._cpus:g} CPUs): {self.num_cpus:g} CPU and "
            f"{self.threads} torch thread(s) per grid point, --retries {self.retries}"
        )

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))

    def map(self, fn: Callable[[T, ProgressFn | None], R], items: Sequence[T],
            on_progress: ProgressFn | None = None) -> Iterator[tuple[T, R | Failure]]:  # fmt: skip
        ray = self._ray
        if ray is None:
            raise RuntimeError("RayExecutor.map: enter the executor first (`with executor:`)")
        task = ray.remote(_in_worker).options(
            num_cpus=self.num_cpus, max_retries=self.retries, retry_exceptions=False
        )
        fn_ref = ray.put(fn)
        pending = {task.remote(fn_ref, item, self.threads): i for i, item in enumerate(items)}
        self._pending = list(pending)
        try:
            while pending:
                # polled, with the waiting in Python: Ray's blocking wait turns the SIGTERM the
                # driver raises as `Terminated` into a plain KeyboardInterrupt ("Ctrl-C")
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                if not ready:
                    time.sleep(POLL_S)
                for ref in ready:
                    item = items[pending.pop(ref)]
                    self._pending = list(pending)
                    yield item, self._outcome(ray, ref)
        finally:
            self._cancel()

    def _outcome(self, ray: ModuleType, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the function raised (not retried)
            return Failure(_task_error(e))
        except ray.exceptions.RayError as e:  # the worker died on every attempt
            tries = f"{self.retries + 1} attempt" + ("s" if self.retries else "")
            return Failure(
                f"{type(e).__name__}: {_first_line(str(e))} (the worker died on all {tries}; "
                f"--retries {self.retries})"
            )

    def _cancel(self) -> None:
        """Stop what is still running (Ctrl-C, SIGTERM, an error of the driver)."""
        pending, self._pending = self._pending, []
        if self._ray is None or not pending or not self._ray.is_initialized():
            return
        for ref in pending:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone: nothing to stop
                continue


@contextlib.contextmanager
def _environ(defaults: Mapping[str, str]) -> Iterator[None]:
    """Environment variables set for the block, unless the user set them already."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _in_worker(fn: Callable[[Any, ProgressFn | None], Any], item: Any, threads: int) -> Any:
    """A Ray task: ``fn(item)`` with torch limited to the task's CPUs."""
    import torch

    torch.set_num_threads(threads)
    return fn(item, None)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _task_error(e: Any) -> str:
    """A Ray task's exception as :func:`error_text` says it: the cause's type and message and
    the innermost frame of the worker's traceback."""
    cause = getattr(e, "cause", None)
    text = error_text(cause) if isinstance(cause, BaseException) else _first_line(str(e))
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', getattr(e, "traceback_str", ""))
    if frames and "(at " not in text:
        name, line, func = frames[-1]
        text += f" (at {Path(name).name}:{line} in {func})"
    return text + " (in a Ray worker)"
