"""How far the report trusts each stored figure, in the report's words. The rules are
:mod:`attnzoo.stats`'s (spread, :data:`~attnzoo.stats.NOISY_SPREAD`,
:data:`~attnzoo.stats.MIN_REPEATS`); this module only names them for rows of the store:

- a speed timing is ``ok``, ``noisy``, ``few repeats`` or, for rows recorded before the store
  kept quantiles, ``spread not recorded`` (untrusted like ``few repeats``);
- a peer ratio is ``ok``, ``unreliable`` (either side noisy, too few repeats, or a busy
  machine) or ``spread not recorded``;
- a fraction of the GEMM limit above 1 is a measurement error (nothing beats the machine's
  own matrix multiply): a wrong FLOP count, a timing that missed work, or a GEMM rate measured
  while the machine was busy;
- a run is busy when its machine state at start or end was not quiet or it noted so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attnzoo import stats

Row = dict[str, Any]

OK = "ok"
NOISY = "noisy"
FEW = "few repeats"
UNRECORDED = "spread not recorded"
UNRELIABLE = "unreliable"
GEMM_LIMIT = 1.0  # a rate above the machine's own GEMM rate is a measurement error
WARNING_NOTES = ("machine-busy", "prediction-wrong", "point-failed")  # repeated at the top


def timing_spread(row: Row) -> float | None:
    """Interquartile range over the median of a speed row (``None``: unknown)."""
    return stats.relative_spread(row.get("repeats"), row.get("median_s"), row.get("q1_s"),
                                 row.get("q3_s"))  # fmt: skip


def timing_trust(row: Row) -> str:
    """:func:`attnzoo.stats.row_trust`, with rows of enough repeats but no stored quantiles
    (recorded before schema v8) called ``spread not recorded``."""
    label = stats.row_trust(row)
    if label == FEW and (row.get("repeats") or 0) >= stats.MIN_REPEATS:
        return UNRECORDED
    return label


def trusted(row: Row) -> bool:
    return timing_trust(row) == OK


def gemm_error(fraction: float | None) -> str | None:
    """Why a fraction of the GEMM limit cannot be a result, or ``None`` when it can."""
    if fraction is not None and fraction > GEMM_LIMIT:
        return (
            f"measurement error: {fraction:.2f}x the GEMM limit is impossible (a wrong FLOP "
            "count, a timing that missed work, or a GEMM rate measured on a busy machine)"
        )
    return None


def peer_trust(row: Row, busy: bool = False) -> tuple[str, str]:
    """``(label, why)`` of a peer ratio: ``ok``, ``unreliable`` (too few repeats, either side's
    spread above the noise threshold, or a busy machine) or ``spread not recorded``."""
    n = row.get("repeats")
    why = []
    if n is None or n < stats.MIN_REPEATS:
        why.append(f"{n or 0} repeats (< {stats.MIN_REPEATS})")
    spreads = {"ours": row.get("ours_spread"), "peer": row.get("peer_spread")}
    for side, spread in spreads.items():
        if stats.trust(n, spread) == NOISY:
            why.append(f"{side} spread {spread:.0%} (> {stats.NOISY_SPREAD:.0%})")
    if busy:
        why.append("the machine was busy during the run")
    if why:
        return UNRELIABLE, "; ".join(why)
    if None in spreads.values():
        return UNRECORDED, "recorded before the store kept each side's spread"
    return OK, f"spreads {spreads['ours']:.0%} / {spreads['peer']:.0%}, {n} repeats"


def busy_states(run: Row) -> list[tuple[str, dict[str, Any]]]:
    """The ``(when, state)`` machine states of a run that were not quiet."""
    machine = run.get("machine") or {}
    out = []
    for when in ("start", "end"):
        state = machine.get(when)
        if isinstance(state, dict) and state.get("quiet") is False:
            out.append((when, state))
    return out


def run_busy(run: Row, notes: Sequence[Row]) -> bool:
    """The run's machine was not quiet (by its stored states or its notes)."""
    machine = run.get("machine") or {}
    noted = any(n["run_id"] == run["run_id"] and n["kind"] == "machine-busy" for n in notes)
    return noted or machine.get("quiet") is False or bool(busy_states(run))


def describe_state(state: dict[str, Any]) -> str:
    """One line of a stored machine state: load average, CPUs and the busy processes (keys it
    lacks are left out)."""
    parts = []
    load = state.get("load_avg")
    if isinstance(load, list | tuple) and load:
        parts.append(f"load average {load[0]}")
    if state.get("cpu_count"):
        parts.append(f"on {state['cpu_count']} CPUs")
    busy = state.get("busy")
    if isinstance(busy, list) and busy:
        who = ", ".join(
            f"PID {b.get('pid', '?')} {b.get('name', '?')} {float(b.get('cpu') or 0) * 100:.0f}%"
            for b in busy[:5] if isinstance(b, dict)
        )  # fmt: skip
        parts.append(f"busy: {who}")
    return " ".join(parts) or "no detail recorded"


def machine_summary(run: Row, notes: Sequence[Row]) -> str:
    """``quiet``, ``busy at start, end`` or ``not recorded``: the runs table's machine cell."""
    machine = run.get("machine") or {}
    states = [w for w in ("start", "end") if isinstance(machine.get(w), dict)]
    busy = [w for w, _ in busy_states(run)]
    if busy:
        return "busy at " + ", ".join(busy)
    if run_busy(run, notes):
        return "busy (noted)"
    if not states:
        return "not recorded"
    return "quiet at " + ", ".join(states)


def run_warnings(run: Row, notes: Sequence[Row]) -> list[str]:
    """What a reader must know before trusting a run's numbers: it did not complete, its
    machine was busy (its notes, or a busy state it has no note for), a prediction proved
    wrong."""
    rid = run["run_id"]
    out = []
    if run["status"] == "running" and run.get("alive"):
        out.append(f"run {rid} is still running: its results are partial")
    elif run["status"] != "complete":
        out.append(f"run {rid} {run['status']}" + (f": {run['note']}" if run.get("note") else "")
                   + " (its results are partial)")  # fmt: skip
    mine = [n for n in notes if n["run_id"] == rid]
    noted = {n["kind"] for n in mine}
    for when, state in busy_states(run):
        if "machine-busy" not in noted:
            out.append(
                f"run {rid}: the machine was not quiet at the {when}: {describe_state(state)}"
            )
    for n in mine:
        if n["kind"] in WARNING_NOTES:
            out.append(f"run {rid} ({n['kind']}): {n['text']}")
    return out
