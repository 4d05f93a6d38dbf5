"""The plan of an ``attnzoo bench cp`` run (the grid of cases and its validation) and the small
helpers its runner (:mod:`attnzoo.bench.cp`) and its workers (:mod:`attnzoo.bench.cp_worker`)
share. The strategies themselves are registered objects (:mod:`attnzoo.distributed.strategies`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from attnzoo.distributed.strategies import ATTENTION_MASKS, CPShape, Strategy, get_strategies

MODES = ("fwd", "fwd+bwd")
# exact: max |distributed - one process| <= RTOL * max(1, max |one process|) over the output
# (and input gradients); unnormalised linear attention sums thousands of terms (|o| ~ 100)
RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class CPPlan:
    """The grid of one ``bench cp`` run (validated on construction); ``strategies=None`` means
    every registered strategy."""

    world_sizes: tuple[int, ...] = (1, 2, 4)
    strategies: tuple[str, ...] | None = None
    masks: tuple[str, ...] = ("full", "causal")
    seq_lens: tuple[int, ...] = (1024, 4096)
    modes: tuple[str, ...] = ("fwd",)
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    repeats: int = 3
    seed: int = 0
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        known = get_strategies(self.strategies)  # unknown names raise with close matches
        object.__setattr__(self, "strategies", tuple(s.name for s in known))
        every_mask = tuple(dict.fromkeys([*ATTENTION_MASKS, *(m for s in known for m in s.masks)]))
        for m in self.masks:
            if m not in every_mask:
                raise ValueError(f"--masks: unknown mask {m!r}; expected some of {every_mask}")
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"--mode: expected some of {MODES}, got {m!r}")
        for arg, values in (("--world-size", self.world_sizes), ("--seq-lens", self.seq_lens),
                            ("--strategy", self.strategies), ("--masks", self.masks),
                            ("--mode", self.modes)):  # fmt: skip
            if not values:
                raise ValueError(f"{arg}: expected at least one value")
        if any(w < 1 for w in self.world_sizes):
            raise ValueError(f"--world-size: expected sizes >= 1, got {self.world_sizes}")
        for arg, value in (("--batch", self.batch), ("--heads", self.heads),
                           ("--head-dim", self.head_dim), ("--repeats", self.repeats)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}: expected an int >= 1, got {value!r}")
        for T in self.seq_lens:
            for w in self.world_sizes:
                if T % (2 * w):
                    raise ValueError(
                        f"--seq-lens: T={T} must be divisible by 2 x world size {w} (zigzag "
                        "sharding splits the sequence into 2 x world chunks)"
                    )

    @property
    def shape(self) -> CPShape:
        return CPShape(self.batch, self.heads, self.head_dim, self.seed)

    def strategy(self, name: str) -> Strategy:
        return get_strategies([name])[0]

    def cases(self, world_size: int) -> list[dict[str, Any]]:
        """The (strategy, mask, T, mode) cases that run at ``world_size``, and those skipped
        (with the reason) in the same list (``skip`` key)."""
        out = []
        for st in get_strategies(self.strategies):
            for mask in self.masks:
                for T in self.seq_lens:
                    for mode in self.modes:
                        case = {"strategy": st.name, "mask": mask, "seq_len": T, "mode": mode,
                                "sharding": st.sharding_kind(mask)}  # fmt: skip
                        reason = st.skip_reason(world_size, self.heads, mask)
                        if reason is not None:
                            case["skip"] = reason
                        out.append(case)
        return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def under_torchrun() -> bool:
    """This process was started by ``torchrun`` (its environment describes the group)."""
    import os

    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    )
