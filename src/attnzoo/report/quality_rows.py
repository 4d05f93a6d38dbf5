"""How the report's quality section reads tasks and picks rows: the task descriptions the bench
stored (metric, direction, matching speed patterns, tokens per layer), best-of-sweep selection
and the speed row closest to a task's length. Pure data functions (no HTML)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What the report knows of a quality task.

    Attributes:
        metric: what the stored metric measures (an axis label).
        maximize: higher is better (``False`` for error metrics such as MSE).
        patterns: speed patterns matching how the task runs its mixers, in preference order.
        fmt: number format of the metric in tables.
        bounded: the metric lies in ``[0, 1]`` (accuracies: plots fix the y range; error metrics
            get a log y axis instead).
        tokens: tokens one mixer layer sees at this task point (``None``: unknown).
        point_keys: ``(config key, short label)`` pairs that always name a task point.
    """

    metric: str
    maximize: bool
    patterns: tuple[str, ...]
    fmt: str = ".3f"
    bounded: bool = True
    tokens: int | None = None
    point_keys: tuple[tuple[str, str], ...] = ()

    @property
    def axis(self) -> str:
        return f"{self.metric} ({'higher' if self.maximize else 'lower'} is better)"

    @property
    def y(self) -> dict[str, Any]:
        """``panels_svg``'s y-axis keywords for this metric."""
        if self.bounded:
            return {"yscale": "linear", "ylim": (0.0, 1.02)}
        return {"yscale": "linear" if self.maximize else "log", "ylim": None}


#: What the report assumes of a task point the store does not describe (higher is better,
#: either self pattern, tokens unknown): only rows written outside ``attnzoo bench quality``.
UNKNOWN_TASK = TaskInfo("metric", True, ("causal-self", "noncausal-self"), ".3g", bounded=False)


def task_infos(described: Sequence[Row]) -> dict[tuple[int, str, str], TaskInfo]:
    """The stored task descriptions (``Store.tasks``) by ``(run_id, task, task_config)``."""
    return {
        (r["run_id"], r["task"], r["task_config"]): TaskInfo(
            r["metric"], bool(r["maximize"]), tuple(r["patterns"]), r["fmt"], bool(r["bounded"]),
            tokens=r["tokens"], point_keys=tuple(tuple(k) for k in r["point_keys"]),
        )
        for r in described
    }  # fmt: skip


def point_label(cfg: dict[str, Any], keys: Sequence[str], short: dict[str, str]) -> str:
    """A task point's settings, ``"L=64, kv=4"``: each of ``keys`` by its short label (a key whose
    label is empty shows its value alone, e.g. a regression's ``drift``)."""
    parts = []
    for k in keys:
        label = short.get(k, k)
        parts.append(f"{label}={cfg.get(k)}" if label else str(cfg.get(k)))
    return ", ".join(parts)


def pick_best(rows: Sequence[Row], maximize: bool) -> Row:
    """The best-of-sweep row of one (task point, mechanism, width, seed) group.

    The best ``best_metric`` in the metric's direction; ties go to the row the bench flagged,
    then to the first recorded. Rows without a finite metric come last.
    """
    if not rows:
        raise ValueError("pick_best: rows must hold at least one row of a sweep, got none")
    sign = 1.0 if maximize else -1.0

    def rank(item: tuple[int, Row]) -> tuple[bool, float, bool, int]:
        i, r = item
        m = r["best_metric"]
        ok = m is not None and math.isfinite(m)
        return ok, sign * m if ok else 0.0, bool(r["best_of_sweep"]), -i

    return max(enumerate(rows), key=rank)[1]


def closest_speed(
    rows: Sequence[Row], mixer: str, length: int, patterns: Sequence[str]
) -> Row | None:
    """The forward measurement of ``mixer`` nearest ``length`` tokens, or ``None``.

    The first of ``patterns`` the mixer was measured on (its base mask: ``causal`` or ``full``),
    the measured T closest to ``length`` on a log scale (ties: the longer), the fastest impl.
    """
    if length < 1:
        raise ValueError(f"closest_speed: length must be a positive token count, got {length}")
    for pattern in patterns:
        mask = "causal" if pattern.startswith("causal") else "full"
        want = (mixer, pattern, mask, "fwd")
        mine = [r for r in rows if (r["mixer"], r["pattern"], r["mask"], r["mode"]) == want]
        if mine:
            t = min({r["seq_len"] for r in mine}, key=lambda t: (abs(math.log(t / length)), -t))
            return min((r for r in mine if r["seq_len"] == t), key=lambda r: r["median_s"])
    return None
