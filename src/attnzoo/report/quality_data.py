"""What the report's quality section knows about tasks, and how it picks rows: the task
directory (metric, direction, matching speed patterns), task lengths, best-of-sweep selection and
the speed row closest to a task's length. Pure data functions (no HTML)."""

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
    """

    metric: str
    maximize: bool
    patterns: tuple[str, ...]
    fmt: str = ".3f"
    bounded: bool = True

    @property
    def axis(self) -> str:
        return f"{self.metric} ({'higher' if self.maximize else 'lower'} is better)"

    @property
    def y(self) -> dict[str, Any]:
        """``panels_svg``'s y-axis keywords for this metric."""
        if self.bounded:
            return {"yscale": "linear", "ylim": (0.0, 1.02)}
        return {"yscale": "linear" if self.maximize else "log", "ylim": None}


#: The bench's tasks as the report sees them: mirrors ``bench.quality.QualityTask.maximize`` and
#: ``causal`` (the report may not import the bench); a task missing here reads as
#: :data:`UNKNOWN_TASK` (higher is better, either self pattern).
TASKS: dict[str, TaskInfo] = {
    "mqar": TaskInfo("accuracy", True, ("causal-self",)),
    "listops": TaskInfo("accuracy", True, ("noncausal-self",)),
    "regression": TaskInfo("MSE", False, ("causal-self",), ".3g", bounded=False),
    "pointer-sort": TaskInfo("greedy exact match", True, ("noncausal-self", "causal-self")),
    "pointer-hull": TaskInfo("greedy exact match", True, ("noncausal-self", "causal-self")),
    "shapes": TaskInfo("accuracy", True, ("noncausal-self",)),
    "digits": TaskInfo("accuracy", True, ("noncausal-self",)),
}
UNKNOWN_TASK = TaskInfo("metric", True, ("causal-self", "noncausal-self"), ".3g", bounded=False)


def task_length(task_config: dict[str, Any]) -> int | None:
    """Tokens one mixer layer sees for a task config, or ``None`` if the config does not say.

    ``seq_len`` (MQAR), ``max_length`` (ListOps), ``2 * num_pairs`` (regression: a query and a
    pair token per example), the largest ``train_n`` (pointer tasks), ``(image_size / 4)²``
    (images: the tokens of MetaFormer's first stage after its stride-4 stem).
    """
    if not isinstance(task_config, dict):
        raise TypeError(f"task_config: expected a dict, got {type(task_config).__name__}")
    if "seq_len" in task_config:
        return int(task_config["seq_len"])
    if "max_length" in task_config:
        return int(task_config["max_length"])
    if "num_pairs" in task_config:
        return 2 * int(task_config["num_pairs"])
    if "train_n" in task_config:
        return int(max(task_config["train_n"]))
    if "image_size" in task_config:
        return (int(task_config["image_size"]) // 4) ** 2
    return None


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
