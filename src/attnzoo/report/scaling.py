"""Derived results from stored measurements (pure Python: no torch, no SQL).

- :func:`scaling_exponent`: least-squares slope of log(y) on log(T): time or memory ~ T^p.
- :func:`efficiency_length`: CAB's efficiency length, the smallest measured T at which a
  mechanism beats the speed run's baseline, exact softmax attention in every suite (same
  pattern, mask and mode), in time or in memory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any


def scaling_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """Slope of the log-log least-squares line through ``(T, y)``; ``None`` with < 2 lengths."""
    pts = [(math.log(t), math.log(y)) for t, y in points if t > 0 and y is not None and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    return sxy / sxx


def best_by_length(rows: Iterable[dict[str, Any]], key: str) -> dict[int, float]:
    """The smallest ``key`` over impls at each length (a mechanism at its best path)."""
    best: dict[int, float] = {}
    for r in rows:
        v = r.get(key)
        if v is None:
            continue
        t = r["seq_len"]
        best[t] = min(best.get(t, math.inf), v)
    return best


def efficiency_length(mine: dict[int, float], baseline: dict[int, float]) -> int | None:
    """Smallest T, measured for both, from which ``mine`` stays below ``baseline`` at every larger
    common T (CAB's crossing point); ``None`` if it never does."""
    common = sorted(set(mine) & set(baseline))
    found = None
    for t in reversed(common):
        if mine[t] < baseline[t]:
            found = t
        else:
            break
    return found


Group = tuple[str, str, str, str]  # (mixer, pattern, mask, mode)


def group_rows(rows: Iterable[dict[str, Any]]) -> dict[Group, list[dict[str, Any]]]:
    out: dict[Group, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[(r["mixer"], r["pattern"], r["mask"], r["mode"])].append(r)
    return dict(out)


def derived_table(rows: list[dict[str, Any]], baseline: str | None) -> list[dict[str, Any]]:
    """Per (mixer, impl, pattern, mask, mode): time and memory exponents; per (mixer, pattern,
    mask, mode): efficiency lengths vs ``baseline`` (best impl of each)."""
    by_impl: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_impl[(r["mixer"], r["impl"], r["pattern"], r["mask"], r["mode"])].append(r)
    groups = group_rows(rows)
    out = []
    for (mixer, impl, pattern, mask, mode), rs in sorted(by_impl.items()):
        base = groups.get((baseline, pattern, mask, mode), [])
        mine = groups[(mixer, pattern, mask, mode)]
        out.append(
            {
                "mixer": mixer, "impl": impl, "pattern": pattern, "mask": mask, "mode": mode,
                "lengths": sorted(r["seq_len"] for r in rs),
                "time_exponent": scaling_exponent([(r["seq_len"], r["median_s"]) for r in rs]),
                "memory_exponent": scaling_exponent([(r["seq_len"], r["peak_bytes"]) for r in rs]),
                "efficiency_length_time": None if mixer == baseline else efficiency_length(
                    best_by_length(mine, "median_s"), best_by_length(base, "median_s")),
                "efficiency_length_memory": None if mixer == baseline else efficiency_length(
                    best_by_length(mine, "peak_bytes"), best_by_length(base, "peak_bytes")),
            }
        )  # fmt: skip
    return out
