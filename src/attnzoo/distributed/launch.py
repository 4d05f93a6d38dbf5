"""Start torch.distributed workers: spawned on this machine, or joined from ``torchrun``.

:func:`run_workers` is what the tests and the single-machine bench use: it spawns ``world_size``
processes, gives each a process group (FileStore rendezvous in a private temp dir, so no port can
collide), runs ``fn(rank, world_size, *args)`` and returns the results ordered by rank. A worker
that raises ends the run at once with its rank and traceback; a run that outlives ``timeout`` is
killed. Nothing is left waiting forever: the collectives of every group carry the same timeout.

:func:`init_from_env` is for code already started by ``torchrun`` (it reads ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and ``LOCAL_RANK``)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 prog.py
"""

from __future__ import annotations

import os
import pickle
import queue
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnzoo.distributed.comm import Comm

BACKENDS = ("gloo", "nccl")
_POLL = 0.05  # seconds between checks of the result queue and the worker processes


def run_workers(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    backend: str = "gloo",
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes.

    Each worker sets ``torch.set_num_threads(1)`` and joins a default process group of the given
    backend whose collectives time out after ``timeout`` seconds. With ``backend="nccl"`` worker
    ``r`` uses CUDA device ``r % device_count``.

    Args:
        fn: a module-level (picklable) function; its return value must be picklable.
        world_size: number of processes, >= 1.
        *args: extra picklable arguments passed to every worker.
        timeout: seconds the whole run may take; also the collective timeout.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (GPU).

    Returns:
        ``[fn(0, ...), fn(1, ...), ...]``, ordered by rank.

    Raises:
        RuntimeError: a worker raised (names the first failing rank, includes its traceback) or
            died without reporting; the other workers are terminated.
        TimeoutError: the workers did not all finish within ``timeout`` seconds; all are killed.

    Shapes:
        not applicable (tensors in ``args`` and results are pickled as they are).
    """
    if not callable(fn):
        raise TypeError(f"run_workers: fn must be callable, got {type(fn).__name__}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"run_workers: world_size must be an int >= 1, got {world_size!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(
            f"run_workers: timeout must be a positive number of seconds, got {timeout!r}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"run_workers: backend must be one of {BACKENDS}, got {backend!r}")
    ctx = mp.get_context("spawn")
    results: queue.Queue[Any] = ctx.Queue()
    tmp = tempfile.mkdtemp(prefix="attnzoo-dist-")
    init_method = "file://" + os.path.join(tmp, "rendezvous")
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, world_size, fn, args, init_method, backend, float(timeout), results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    started: list[Any] = []
    try:
        for p in procs:
            p.start()
            started.append(p)
        return _collect(procs, results, world_size, float(timeout))
    finally:
        for p in started:
            if p.is_alive():
                p.kill()
        for p in started:
            p.join(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def _collect(
    procs: list[Any], results: queue.Queue[Any], world_size: int, timeout: float
) -> list[Any]:
    deadline = time.monotonic() + timeout
    done: dict[int, Any] = {}
    dead_since: dict[int, float] = {}
    while len(done) < world_size:
        try:
            status, rank, payload = results.get(timeout=_POLL)
        except queue.Empty:
            status = None
        if status == "error":
            dead = _dead_peers(procs, done, rank)
            if dead:  # the root cause: a peer that died mid-collective, e.g. killed
                raise RuntimeError(
                    f"run_workers: {dead} without reporting a result; rank {rank} of {world_size} "
                    f"then failed:\n{payload}"
                )
            raise RuntimeError(f"run_workers: rank {rank} of {world_size} failed:\n{payload}")
        if status == "ok":
            done[rank] = pickle.loads(payload)
            continue
        now = time.monotonic()
        for rank, p in enumerate(procs):
            if rank in done or p.exitcode is None:
                continue
            # a clean exit may still have its message in flight: give it a moment
            first = dead_since.setdefault(rank, now)
            if p.exitcode != 0 or now - first > 5.0:
                raise RuntimeError(
                    f"run_workers: rank {rank} of {world_size} {_death(p.exitcode)} "
                    "without reporting a result"
                )
        if now > deadline:
            missing = sorted(set(range(world_size)) - set(done))
            raise TimeoutError(
                f"run_workers: ranks {missing} of {world_size} did not finish within "
                f"timeout={timeout}s; all workers were killed"
            )
    return [done[r] for r in range(world_size)]


def _death(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"died with exit code {exitcode}"


def _dead_peers(procs: list[Any], done: dict[int, Any], failed: int, grace: float = 2.0) -> str:
    """Which other ranks have died (waiting up to ``grace`` s for their exit to register): a
    rank failing in a collective is usually the symptom of a peer that died."""
    deadline = time.monotonic() + grace
    while True:
        dead = [
            f"rank {r} of {len(procs)} {_death(p.exitcode)}"
            for r, p in enumerate(procs)
            if r != failed and r not in done and p.exitcode not in (None, 0)
        ]
        if dead or time.monotonic() > deadline:
            return "; ".join(dead)
        time.sleep(0.05)


def _worker(
    rank: int,
    world_size: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    init_method: str,
    backend: str,
    timeout: float,
    results: queue.Queue[Any],
) -> None:
    torch.set_num_threads(1)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout),
        )
        out = fn(rank, world_size, *args)
        results.put(("ok", rank, pickle.dumps(out)))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        return
    dist.destroy_process_group()


def init_from_env(backend: str | None = None, timeout: float = 600.0) -> Comm:
    """Join the process group described by ``torchrun``'s environment variables.

    Does nothing but wrap the group if one is already initialised.

    Args:
        backend: ``"gloo"``/``"nccl"``; ``None`` picks NCCL when CUDA is available, else gloo.
        timeout: collective timeout in seconds.

    Returns:
        A :class:`Comm` over the default group. With NCCL the current CUDA device is set to
        ``LOCAL_RANK``.

    Shapes:
        not applicable.
    """
    if not dist.is_initialized():
        missing = [
            n for n in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ
        ]
        if missing:
            raise RuntimeError(
                f"init_from_env: environment variables {missing} are not set; start the program "
                "with torchrun (or use run_workers to spawn workers on this machine)"
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in BACKENDS:
            raise ValueError(
                f"init_from_env: backend must be one of {BACKENDS} or None, got {backend!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(
                f"init_from_env: timeout must be a positive number of seconds, got {timeout!r}"
            )
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout))
    return Comm()
