"""One grid point of the quality bench as data: what it is (:class:`GridPoint`), what training it
produced (:class:`PointResult`: the rows, not yet stored) and how the driver stores that
(:func:`record_point`).

A grid point is one (task point, mixer, width, seed) with its learning-rate sweep. Training it
(:func:`attnzoo.bench.quality.train_point`) writes nothing: it returns a :class:`PointResult`, so
points can run anywhere (this process, Ray workers) while one process, the driver, writes the
store (DuckDB has one writer). A model whose training raised, or a point whose worker died, is
stored as rows of status ``failed`` (no metrics) plus a ``point-failed`` run note naming the point
and the error: never dropped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from attnzoo.bench.train import TrainResult
from attnzoo.registry import build_mixer, get_spec
from attnzoo.store import Store
from attnzoo.tasks import TASKS

#: quality row statuses: the trainer's (complete, early-stop, interrupted) and the bench's failed
FAILED = "failed"
#: the run-note kind of a failed model or grid point (the report repeats it at its top)
FAILED_NOTE = "point-failed"


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One (task point, mixer, width, seed) of a suite; trained once per learning rate."""

    task: str
    settings: dict[str, Any]
    mixer: str
    d_model: int
    seed: int

    def label(self) -> str:
        """``mqar {"seq_len": 64} softmax d=64 seed=0``: the point in run notes (its settings as
        the suite gives them, not the task's full config)."""
        settings = f" {json.dumps(self.settings, sort_keys=True)}" if self.settings else ""
        return f"{self.task}{settings} {self.mixer} d={self.d_model} seed={self.seed}"


@dataclasses.dataclass
class PointResult:
    """The rows one grid point produced, in the store's shapes (see :mod:`attnzoo.store`).

    Attributes:
        point: the grid point.
        task_row: the ``quality_tasks`` row (``QualityTask.describe`` and ``task_config``).
        task_config: the task's config as trained (JSON), in every row of the point.
        curves: ``quality_curve`` rows, in the order they were made.
        rows: ``quality`` rows, one per learning rate trained (``best_of_sweep`` False).
        evals: ``quality_eval`` rows.
        best_lr: the learning rate to flag as best of the sweep (``None``: none, e.g. every
            model failed or the sweep was interrupted).
        errors: ``(lr or None for the whole point, error)`` of each failure, for the run notes.
        interrupt: Ctrl-C or SIGTERM caught by the trainer: the driver records the rows, then
            raises it again (as :mod:`attnzoo.bench.train` hands it over).
    """

    point: GridPoint
    task_row: dict[str, Any]
    task_config: str
    curves: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_lr: float | None = None
    errors: list[tuple[float | None, str]] = dataclasses.field(default_factory=list)
    interrupt: KeyboardInterrupt | None = dataclasses.field(default=None, compare=False)
    stored: dict[str, int] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def begin(cls, point: GridPoint, described: dict[str, Any], task_config: str) -> PointResult:
        """An empty result for ``point``; ``described``: ``QualityTask.describe``'s row."""
        return cls(point, {**described, "task_config": task_config}, task_config)

    @property
    def key(self) -> dict[str, Any]:
        """The columns every row of the point shares."""
        p = self.point
        return {"task": p.task, "task_config": self.task_config, "mixer": p.mixer,
                "d_model": p.d_model, "seed": p.seed}  # fmt: skip

    def add_trained(self, result: TrainResult, num_layers: int,
                    facts: tuple[int, int | None]) -> None:  # fmt: skip
        """The row of a trained model (``facts``: its parameter count and state floats of all
        layers) and its extra evaluations."""
        lr, (params, state) = result.config.lr, facts
        self.rows.append({
            **self.key, "num_layers": num_layers, "lr": lr, "params": params,
            "state_size": state, "steps_run": result.steps_run, "status": result.status,
            "final_metric": result.final_metric, "best_metric": result.best_metric,
            "best_of_sweep": False, "seconds": result.seconds,
        })  # fmt: skip
        self.evals += [{**self.key, "lr": lr, "name": name, "value": value}
                       for name, value in result.extra.items()]  # fmt: skip

    def add_failed(self, lrs: Sequence[float], num_layers: int, facts: tuple[int, int | None],
                   error: str, *, whole_point: bool = False) -> None:  # fmt: skip
        """A ``failed`` row for the model of each of ``lrs`` (``facts``: its parameter count and
        state floats of all layers, ``(0, None)`` when unknown), and the error for the notes:
        once for the whole point (``whole_point``, e.g. its worker died) or per model."""
        params, state = facts
        for lr in lrs:
            self.rows.append({
                **self.key, "num_layers": num_layers, "lr": lr, "params": params,
                "state_size": state, "steps_run": 0, "status": FAILED, "final_metric": None,
                "best_metric": None, "best_of_sweep": False, "seconds": 0.0,
            })  # fmt: skip
            if not whole_point:
                self.errors.append((lr, error))
        if whole_point:
            self.errors.append((None, error))


class HookFailed(BaseException):
    """An exception of the driver's ``on_update`` hook (its store writes), carried through the
    trainer and the executor, which record exceptions of the training as failures, to the
    driver, which raises ``error`` again (a store that fails stops the run)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


#: ``on_update(result, steps_done_since_last_call, label)``: called by ``train_point`` as the
#: point's rows grow (the local driver stores them as they come and advances its bar)
UpdateFn = Callable[[PointResult, int, str], None]


def record_new(store: Store, run_id: int, result: PointResult) -> None:
    """Write the rows of ``result`` not written yet (task, curve points, models, evaluations,
    a ``point-failed`` note per error), in that order; ``result.stored`` counts what is."""
    done = result.stored
    if not done.get("task"):
        store.add_task(run_id, result.task_row)
        done["task"] = 1
    for name, add in (("curves", store.add_curve_point), ("rows", store.add_quality),
                      ("evals", store.add_quality_eval)):  # fmt: skip
        rows = getattr(result, name)
        for row in rows[done.get(name, 0) :]:
            add(run_id, row)
            done[name] = done.get(name, 0) + 1
    p = result.point
    for lr, error in result.errors[done.get("errors", 0) :]:
        where = p.label() + ("" if lr is None else f" lr={lr:g}")
        store.add_note(run_id, FAILED_NOTE, f"{where} failed: {error}")
        done["errors"] = done.get("errors", 0) + 1


def record_point(store: Store, run_id: int, result: PointResult) -> None:
    """Write the rest of one finished point (:func:`record_new`) and flag its best learning
    rate: the driver's only store writes."""
    record_new(store, run_id, result)
    p = result.point
    if result.best_lr is not None:
        store.mark_best_of_sweep(run_id, p.task, p.mixer, p.d_model, p.seed, result.best_lr,
                                 task_config=result.task_config)  # fmt: skip


def failed_point(point: GridPoint, num_layers: int, lrs: Sequence[float],
                 error: str) -> PointResult:  # fmt: skip
    """The rows of a point that produced none (its worker died, or it raised outside training):
    one ``failed`` row per learning rate and one note with ``error``."""
    task = TASKS[point.task]
    task_config, facts = dict(point.settings), (0, None)  # if the same failure happens here
    try:  # check_suite built this model in this process before the run
        parts = task.build(point.mixer, point.d_model, num_layers, dict(point.settings))
        task_config = parts.task_config
        facts = model_facts(parts.model_fn, point.mixer, point.d_model, num_layers,
                            parts.seq_len, point.seed)  # fmt: skip
    except Exception:  # noqa: BLE001 - the rows say failed either way; the note says why
        pass
    out = PointResult.begin(point, task.describe(task_config),
                            json.dumps(task_config, sort_keys=True))  # fmt: skip
    out.add_failed(lrs, num_layers, facts, error, whole_point=True)
    return out


def model_facts(model_fn: Callable[[], torch.nn.Module], mixer: str, d_model: int,
                num_layers: int, seq_len: int | None, seed: int) -> tuple[int, int | None]:  # fmt: skip
    """A model's parameter count and the streaming-state floats of all its layers (``None``:
    not defined), from a model built under ``seed``."""
    torch.manual_seed(seed)
    params = sum(p.numel() for p in model_fn().parameters())
    layer_state = None if seq_len is None else state_size(mixer, d_model, seq_len)
    return params, None if layer_state is None else layer_state * num_layers


def state_size(mixer: str, d_model: int, seq_len: int) -> int | None:
    """Floats of one layer's streaming state after ``seq_len`` tokens (batch 1): constant for
    recurrences, the KV cache for attention; ``None`` for mixers without a causal state."""
    spec = get_spec(mixer)
    if spec.state == "none" or "causal-self" not in spec.patterns:
        return None
    m = build_mixer(mixer, d_model=d_model, causal=True)
    with torch.no_grad():
        state = m.init_state(batch_size=1)
        x = torch.zeros(1, d_model)
        for _ in range(seq_len):
            _, state = m.step(x, state)
    return _count_floats(state)


def _count_floats(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() if obj.is_floating_point() else 0
    if dataclasses.is_dataclass(obj):
        return sum(_count_floats(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(_count_floats(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_count_floats(o) for o in obj.values())
    return 0
