"""Derived results from stored measurements (pure Python: no torch, no SQL), each given only
where the measurements support it; otherwise the result says why not.

- :func:`scaling_exponent`: time or memory ~ T^p, fitted in log-log space
  (:func:`attnzoo.stats.fit_power_law`) with its R² and 95 % interval, only over lengths that
  can support one (:func:`attnzoo.stats.supports_exponent`: at least three over at least 4x).
- :func:`efficiency_length`: CAB's efficiency length, the measured T from which a mechanism
  beats the speed run's baseline (exact softmax attention in every suite; same pattern, mask
  and mode), in time or in memory, only where the two curves visibly cross.
- :func:`derived_table`: both, per (run, mechanism, impl, pattern, mask, mode).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from attnzoo.report.trust import FEW, NOISY, OK, UNRECORDED, timing_trust, trusted
from attnzoo.stats import PowerFit, fit_power_law, supports_exponent

Row = dict[str, Any]
WORST_FIRST = (NOISY, FEW, UNRECORDED, OK)


@dataclasses.dataclass(frozen=True)
class Exponent:
    """A scaling exponent, or why the points cannot support one."""

    fit: PowerFit | None
    reason: str | None  # None exactly when ``fit`` is a finding

    @property
    def value(self) -> float | None:
        return self.fit.exponent if self.fit is not None else None

    def text(self) -> str:
        """``"1.98 (95% CI 1.90..2.05, R² 0.998)"`` or ``"— (2 length(s); ...)"``."""
        if self.fit is None or self.fit.ci is None or self.fit.r2 is None:
            return f"— ({self.reason})"
        lo, hi = self.fit.ci
        return f"{self.fit.exponent:.2f} (95% CI {lo:.2f}..{hi:.2f}, R² {self.fit.r2:.3f})"


def scaling_exponent(points: Sequence[tuple[float, float | None]]) -> Exponent:
    """The exponent p of y ~ T^p over ``(T, y)`` points (non-positive and missing values
    dropped), or the reason the lengths cannot support one."""
    pts = [(t, y) for t, y in points if t > 0 and y is not None and y > 0]
    reason = supports_exponent([t for t, _ in pts])
    if reason is not None:
        return Exponent(None, reason)
    return Exponent(fit_power_law(pts), None)


@dataclasses.dataclass(frozen=True)
class Efficiency:
    """An efficiency length (``length``), or a statement of what the curves show instead."""

    length: int | None
    text: str


def efficiency_length(
    mine: Mapping[int, float], baseline: Mapping[int, float], trusted: Collection[int] | None = None
) -> Efficiency:
    """Where ``mine`` becomes and stays smaller than ``baseline`` (CAB's efficiency length).

    The rule: over the lengths measured for both, mine must be no smaller at every length below
    the crossing T_x and smaller at T_x and every length above it (one sign change). T_x is
    given only when the crossing is backed either by at least two lengths on each side, or by
    trusted points on both sides of it (the last length below and T_x itself in ``trusted``:
    both timings ``ok``, neither noisy nor of too few repeats). A single length on a side with
    an untrusted point there gives no length, nor does a second sign change. ``trusted=None``
    trusts every length (peak memory is deterministic).

    Returns an :class:`Efficiency` whose ``length`` is T_x, or ``None`` with the text saying
    what the curves show instead: never smaller (at the lengths measured), smaller at every
    length measured (no crossing in range), crossing more than once, or a crossing too thinly
    measured to place.
    """
    common = sorted(set(mine) & set(baseline))
    if not common:
        return Efficiency(None, "— (no common lengths)")
    wins = [t for t in common if mine[t] < baseline[t]]
    if not wins:
        return Efficiency(None, f"never below the baseline (T ≤ {common[-1]})")
    if common[-1] not in wins:
        return Efficiency(
            None, f"— (below the baseline at {_ts(wins)}, not at the longest, {common[-1]})"
        )
    if len(wins) == len(common):
        return Efficiency(
            None, f"below the baseline at every length ({_ts(common)}): no crossing in range"
        )
    first = len(common)
    while first > 0 and common[first - 1] in wins:
        first -= 1
    before, after = common[:first], common[first:]
    if any(t in wins for t in before):
        return Efficiency(None, f"— (crosses more than once: below the baseline at {_ts(wins)})")
    cross = after[0]
    backed = trusted is None or (before[-1] in trusted and cross in trusted)
    if (len(before) >= 2 and len(after) >= 2) or backed:
        return Efficiency(cross, f"{cross} (above at {_ts(before)}; below at {_ts(after)})")
    return Efficiency(None, f"— (crosses between {before[-1]} and {cross} with "
                            f"{min(len(before), len(after))} length on a side and untrusted "
                            "timings there)")  # fmt: skip


def _ts(ts: Sequence[int]) -> str:
    return ", ".join(map(str, ts))


def best_rows(rows: Iterable[Row], key: str) -> dict[int, Row]:
    """The row of the smallest ``key`` over impls at each length (a mechanism at its best path)."""
    best: dict[int, Row] = {}
    for r in rows:
        v = r.get(key)
        if v is None:
            continue
        t = r["seq_len"]
        if t not in best or v < best[t][key]:
            best[t] = r
    return best


def worst_trust(rows: Iterable[Row]) -> str:
    """The least trusted timing label among ``rows`` (``ok`` for none)."""
    labels = {timing_trust(r) for r in rows}
    return next((w for w in WORST_FIRST if w in labels), OK)


Group = tuple[int, str, str, str, str]  # (run, mixer, pattern, mask, mode)


def group_rows(rows: Iterable[Row]) -> dict[Group, list[Row]]:
    out: dict[Group, list[Row]] = defaultdict(list)
    for r in rows:
        out[(r["run_id"], r["mixer"], r["pattern"], r["mask"], r["mode"])].append(r)
    return dict(out)


def _efficiency(mine: list[Row], base: list[Row], key: str) -> Efficiency:
    m, b = best_rows(mine, key), best_rows(base, key)
    if key != "median_s":
        return efficiency_length(_values(m, key), _values(b, key))
    ok = {t for t in set(m) & set(b) if trusted(m[t]) and trusted(b[t])}
    return efficiency_length(_values(m, key), _values(b, key), ok)


def _values(best: dict[int, Row], key: str) -> dict[int, float]:
    return {t: r[key] for t, r in best.items()}


def derived_table(rows: list[Row], baseline: str | None) -> list[Row]:
    """Per (run, mixer, impl, pattern, mask, mode): the lengths and repeats, time and memory
    exponents (:class:`Exponent`), the least trusted of its timings; per (run, mixer, pattern,
    mask, mode): efficiency lengths (:class:`Efficiency`, best impl of each) against
    ``baseline`` of the same run (``None`` for the baseline itself or without one)."""
    by_impl: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        by_impl[(r["run_id"], r["mixer"], r["impl"], r["pattern"], r["mask"], r["mode"])].append(r)
    groups = group_rows(rows)
    out = []
    for (run, mixer, impl, pattern, mask, mode), rs in sorted(by_impl.items()):
        base = groups.get((run, baseline, pattern, mask, mode)) if baseline else None
        mine = groups[(run, mixer, pattern, mask, mode)]
        compare = base is not None and mixer != baseline
        out.append(
            {
                "run_id": run, "mixer": mixer, "impl": impl, "pattern": pattern, "mask": mask,
                "mode": mode, "lengths": sorted(r["seq_len"] for r in rs),
                "repeats": sorted({r["repeats"] for r in rs if r.get("repeats") is not None}),
                "time": scaling_exponent([(r["seq_len"], r["median_s"]) for r in rs]),
                "memory": scaling_exponent([(r["seq_len"], r["peak_bytes"]) for r in rs]),
                "trust": worst_trust(rs),
                "efficiency_time": _efficiency(mine, base, "median_s") if compare else None,
                "efficiency_memory": _efficiency(mine, base, "peak_bytes") if compare else None,
            }
        )  # fmt: skip
    return out
