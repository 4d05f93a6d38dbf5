"""A ``bench cp`` worker whose rank 1 is killed (SIGKILL) in the middle of the ring: at its
second K/V shift, after the first one has been sent. Imported by the spawned workers."""

from __future__ import annotations

import os
import signal
from typing import Any

from attnzoo.bench.cp_worker import cp_worker
from attnzoo.distributed.comm import Comm


def dying_cp_worker(rank: int, world_size: int, plan: Any, cases: list[dict]) -> list[dict]:
    if rank == 1:
        shift = Comm.shift_async
        calls = {"n": 0}

        def shift_then_die(self: Comm, *args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return shift(self, *args, **kwargs)

        Comm.shift_async = shift_then_die  # this worker process only
    return cp_worker(rank, world_size, plan, cases)
