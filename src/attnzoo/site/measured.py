"""What the store holds for each mechanism, read once per build: the newest speed run that
measured it (rows, correctness checks, notes), every quality row and task description, and the
newest peers run that compared it."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from attnzoo.report.trust import run_busy
from attnzoo.store import Store

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SpeedRun:
    """A mechanism's rows of the newest speed run that measured it."""

    run: Row
    rows: list[Row]
    checks: list[Row]
    notes: list[Row]


@dataclasses.dataclass(frozen=True)
class PeerRun:
    """A mechanism's rows of the newest peers run that compared it; ``busy``: that run's machine
    was not quiet (every ratio unreliable)."""

    run: Row
    rows: list[Row]
    busy: bool


@dataclasses.dataclass(frozen=True)
class Measured:
    """Everything the site shows from one store.

    Attributes:
        source: the store's file name (for the pages' notes).
        speed: per mechanism, its newest speed run.
        quality: every quality row of every run (all mechanisms: a page ranks among them).
        tasks: every stored task description (``Store.tasks``).
        peers: per mechanism, its newest peers run.
    """

    source: str
    speed: dict[str, SpeedRun]
    quality: list[Row]
    tasks: list[Row]
    peers: dict[str, PeerRun]

    def quality_of(self, name: str) -> list[Row]:
        return [r for r in self.quality if r["mixer"] == name]

    def kinds(self, name: str) -> list[str]:
        """What the store has of ``name``: ``speed``, ``quality``, ``peers`` (in that order)."""
        has = (name in self.speed, any(r["mixer"] == name for r in self.quality),
               name in self.peers)  # fmt: skip
        return [k for k, ok in zip(("speed", "quality", "peers"), has, strict=True) if ok]

    def names(self) -> set[str]:
        """Every mechanism with a measurement of any kind."""
        return set(self.speed) | {r["mixer"] for r in self.quality} | set(self.peers)


def load(store: Store | None) -> Measured | None:
    """Read what the site needs from ``store`` (``None`` without one)."""
    if store is None:
        return None
    speed: dict[str, SpeedRun] = {}
    for run in reversed(store.runs("speed")):  # newest first: the first run found wins
        rid = run["run_id"]
        by_mixer: dict[str, list[Row]] = defaultdict(list)
        for r in store.speed([rid]):
            by_mixer[r["mixer"]].append(r)
        new = {m: rows for m, rows in by_mixer.items() if m not in speed}
        if not new:
            continue
        checks, notes = store.checks([rid]), store.notes([rid])
        for m, rows in new.items():
            speed[m] = SpeedRun(run, rows, [c for c in checks if c["mixer"] == m], notes)
    peers: dict[str, PeerRun] = {}
    for run in reversed(store.runs("peers")):
        rid = run["run_id"]
        by_mech: dict[str, list[Row]] = defaultdict(list)
        for r in store.peers([rid]):
            by_mech[r["mechanism"]].append(r)
        busy = run_busy(run, store.notes([rid]))
        for m, rows in by_mech.items():
            peers.setdefault(m, PeerRun(run, rows, busy))
    return Measured(store.path.name, speed, store.quality(), store.tasks(), peers)
