"""The quality bench (``attnzoo bench quality``): train small models with any registered mixer on
seeded tasks, store config, seed, curve and final metric per run (DESIGN §5).

A :class:`QualityTask` (registered by each task module of :mod:`attnzoo.tasks`, next to its
generator; :mod:`attnzoo.tasks.registry`) adapts one task to the trainer. A :class:`QualitySuite` is the grid: task
points (a task and its settings) x mixers x widths x seeds, each trained once per learning rate;
the best learning rate of each group is flagged (Zoology reports the best of a learning-rate
sweep). A task's extra evaluations of the final model (e.g. pointer greedy decoding
on longer inputs) go to the ``quality_eval`` table. Each evaluation point is committed as it is
made; Ctrl-C marks the run interrupted and keeps everything measured.

Each grid point (a task point, mixer, width and seed with its learning-rate sweep) is trained by
:func:`train_point`, which returns its rows (:mod:`attnzoo.bench.quality_points`) and writes
nothing; :func:`run_quality` (the driver) alone writes the store, from this process or from Ray
workers (``--executor ray``, :mod:`attnzoo.bench.executors`; there a point's rows are committed
when the point finishes). A model whose training raises, or a point whose worker died on every
attempt, is stored as ``failed`` rows with a ``point-failed`` run note; the others go on.

Suites (:data:`SUITES`; times for 2 quiet CPU cores, measured per step, not whole runs):

- ``quick`` (~5-10 min): MQAR L=64, kv=4, V=256, d=64, softmax / linear / gla, 800 steps.
- ``zoology`` (many CPU hours in full: up to 144 runs of <= 4000 steps, ~0.1-0.5 s a step on one
  core; early stops cut it): Zoology Figure 2 (``iclr24_zoology_figure2``
  config) scaled to CPU. Kept: the (L, kv) grid (64, 4), (128, 8), (256, 16); 2 layers; power
  law a = 0.01; no random non-query tokens; best of a log learning-rate sweep; target 0.99.
  Scaled: vocabulary 512 instead of 8192 (the output head over V at every position dominates
  CPU time; recall difficulty comes from L and kv; 512 is the smallest power of two above L=256,
  Zoology's V > L assert); widths 64, 128 (paper 64..512); lrs 1e-3, 3e-3, 1e-2 (paper
  ``logspace(-4, -2, 4)``: our short runs need the larger rates); up to 4000 steps of batch 64 =
  256k fresh examples (paper 64 epochs of 100k at batch 512/256, ~25x more). With 1000 steps of
  batch 32, nothing learned L=128 and softmax stopped at 0.95 at L=64: MQAR is learned abruptly
  (softmax at L=256 jumped from 0.21 to 0.99 between steps 1800 and 1900); one seed; mixers softmax,
  linear, gla, lightning (paper: attention, Hyena, RWKV, BaseConv, H3, Based, Mamba). Model:
  every block has a short causal conv and an MLP (the paper's attention has neither: no conv,
  ``state_mixer`` Identity), 1 head, no dropout (paper 0.1).
- ``pointer`` (~35 min): Vinyals et al.'s sorting and planar convex hull, trained on n = 5..10,
  greedy exact match, extra evaluations on fresh n = 5..10 and longer n = 11..20 (the paper
  trains hull on n = 5..50 and tests up to 500; sizes scaled down); d=64, 3000 steps of 64.
- ``images`` (~25 min): synthetic shapes (6 classes) and the 8x8 digits upsampled to 32x32 in
  metaformer_tiny with first stage width 16; 2-D mixers and softmax over the flattened tokens.
- ``regression`` (~1 h, mostly LLA): in-context regression, d_x=4, 32 pairs, noise 0.1, drifting
  and locally linear maps and the stationary control, lla / softmax / linear / gla at d=32 (the
  LLA paper's claim that LLA beats softmax on non-stationary targets; its exact generator and
  sizes are not published, see :mod:`attnzoo.tasks.regression`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console

from attnzoo.bench.env import environment
from attnzoo.bench.executors import Executor, LocalExecutor, error_text
from attnzoo.bench.quality_points import (
    GridPoint,
    HookFailed,
    PointResult,
    UpdateFn,
    failed_point,
    model_facts,
    record_new,
    record_point,
    state_size,
)
from attnzoo.bench.runs import finishing, progress_bar, start_run
from attnzoo.bench.train import TrainConfig, train
from attnzoo.config import suggest
from attnzoo.registry import get_spec
from attnzoo.store import Store
from attnzoo.tasks import TASKS, QualityTask, TaskParts, register_task

__all__ = [
    "SUITES", "TASKS", "GridPoint", "PointResult", "QualitySuite", "QualityTask", "TaskParts",
    "check_suite", "grid", "register_task", "run_quality", "state_size", "train_point",
]  # fmt: skip


TaskPoint = tuple[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class QualitySuite:
    """One quality run's grid: task points x mixers x widths x seeds, each trained per lr.

    A task point is ``(task, settings)``; the settings go to the task's config (e.g. MQAR's
    ``vocab_size``, ``seq_len``, ``num_kv_pairs``) and are stored with every row
    (``task_config``). ``points`` lists them (e.g. several MQAR grid points); without ``points``
    the grid has one point per entry of ``tasks``, each with ``task_settings``. With ``points``,
    ``tasks`` is derived from them. ``target`` stops a run early (maximised metrics only).
    """

    name: str = "custom"
    tasks: tuple[str, ...] = ("mqar",)
    mixers: tuple[str, ...] = ("softmax", "linear")
    d_models: tuple[int, ...] = (64,)
    num_layers: int = 2
    lrs: tuple[float, ...] = (1e-3,)
    seeds: tuple[int, ...] = (0,)
    steps: int = 400
    batch_size: int = 64
    eval_every: int = 50
    eval_batches: int = 4
    target: float | None = 0.99
    task_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    points: tuple[TaskPoint, ...] = ()

    def __post_init__(self) -> None:
        for p in self.points:
            pair = isinstance(p, (tuple, list)) and len(p) == 2
            if not (pair and isinstance(p[0], str) and isinstance(p[1], Mapping)):
                raise ValueError(f"points: each must be a (task, settings dict) pair, got {p!r}")
        if self.points:
            points = tuple((t, dict(st)) for t, st in self.points)
            object.__setattr__(self, "points", points)
            object.__setattr__(self, "tasks", tuple(dict.fromkeys(t for t, _ in points)))
        _check_tasks(self.tasks)
        for m in self.mixers:
            get_spec(m)  # raises with close matches
        for arg, values in (
            ("--d-model", self.d_models),
            ("--seeds", self.seeds),
            ("--lrs", self.lrs),
            ("--task", self.tasks),
        ):
            if not values:
                raise ValueError(f"{arg}: expected at least one value")
        if any(d < 1 for d in self.d_models):
            raise ValueError(f"--d-model: expected positive widths, got {self.d_models}")
        if any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"--lrs: expected positive learning rates, got {self.lrs}")
        TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            eval_batches=self.eval_batches,
        )  # fmt: skip  (validates those)

    def grid_points(self) -> tuple[TaskPoint, ...]:
        """The (task, settings) points the suite trains, in order."""
        if self.points:
            return self.points
        return tuple((t, dict(self.task_settings)) for t in self.tasks)

    def select_tasks(self, names: Sequence[str]) -> QualitySuite:
        """The suite restricted to the tasks ``names`` (``--task``): their points in this suite,
        and one point with default settings for a named task the suite does not hold."""
        _check_tasks(names)
        if not names:
            raise ValueError("--task: expected at least one task")
        points = [p for p in self.grid_points() if p[0] in names]
        points += [(t, {}) for t in dict.fromkeys(names) if t not in {q[0] for q in points}]
        return self.replace(points=tuple(points))

    def with_settings(self, settings: Mapping[str, Any]) -> QualitySuite:
        """Every point with ``settings`` laid over its own (``--set``); points that become
        identical are merged."""
        points: list[TaskPoint] = []
        for task, own in self.grid_points():
            point = (task, {**own, **settings})
            if point not in points:
                points.append(point)
        return self.replace(points=tuple(points))

    def replace(self, **changes: Any) -> QualitySuite:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_tasks(names: Sequence[str]) -> None:
    for t in names:
        if t not in TASKS:
            raise ValueError(f"--task: unknown task {t!r}{suggest(t, list(TASKS))}; known: "
                             f"{', '.join(TASKS)}")  # fmt: skip


def check_suite(suite: QualitySuite) -> None:
    """Build every (task point, mixer, width) model once, so that a bad setting or a mixer that
    lacks a pattern the task needs fails before any training (``ValueError``/``TypeError``)."""
    for task_name, settings in suite.grid_points():
        for mixer in suite.mixers:
            for d_model in suite.d_models:
                try:
                    TASKS[task_name].build(
                        mixer, d_model, suite.num_layers, dict(settings)
                    ).model_fn()
                except (TypeError, ValueError) as e:
                    raise type(e)(
                        f"task {task_name!r}, mixer {mixer!r}, d_model {d_model}: {e}"
                    ) from e


_MQAR_FIG2 = {"vocab_size": 512, "random_non_queries": False}

SUITES: dict[str, QualitySuite] = {
    # minutes on 2 cores: MQAR at Zoology's smallest grid point, softmax vs linear attention
    "quick": QualitySuite(
        name="quick",
        mixers=("softmax", "linear", "gla"),
        d_models=(64,),
        lrs=(3e-3,),
        steps=800,
        batch_size=64,
        eval_every=100,
        task_settings={
            "vocab_size": 256,
            "seq_len": 64,
            "num_kv_pairs": 4,
            "random_non_queries": False,
        },
    ),  # fmt: skip
    # Zoology Figure 2 scaled to CPU: what is kept and what is scaled is in the module docstring
    "zoology": QualitySuite(
        name="zoology",
        # issue 17's 1-D blocks beside softmax and the linear family
        mixers=(
            "softmax",
            "linear",
            "gla",
            "lightning",
            "combiner",
            "routing",
            "hyena",
            "axial_ar",
        ),
        d_models=(64, 128),
        lrs=(1e-3, 3e-3, 1e-2),
        steps=4000,
        batch_size=64,
        eval_every=100,
        eval_batches=8,
        target=0.99,
        points=tuple(
            ("mqar", {**_MQAR_FIG2, "seq_len": L, "num_kv_pairs": kv})
            for L, kv in ((64, 4), (128, 8), (256, 16))
        ),  # fmt: skip
    ),
    # LRA's ListOps (scaled down; a non-causal classifier, so the causal-only hyena and
    # axial_ar cannot take part) for issue 17's blocks beside softmax and the linear family
    "listops": QualitySuite(
        name="listops",
        mixers=("softmax", "linear", "gla", "combiner", "routing"),
        d_models=(64,),
        lrs=(1e-3, 3e-3),
        steps=2000,
        batch_size=64,
        eval_every=200,
        eval_batches=4,
        target=None,
        tasks=("listops",),
    ),
    # Vinyals et al.'s sorting and convex hull, trained on n = 5..10 (the paper's hull: n = 50),
    # tested greedily on n = 11..20 (paper: up to 500); mixers with both patterns a pointer
    # network needs (encoder noncausal-self, decoder causal-self).
    "pointer": QualitySuite(
        name="pointer",
        mixers=("softmax", "linear", "gla", "sigmoid"),
        d_models=(64,),
        lrs=(1e-3, 3e-3),
        steps=3000,
        batch_size=64,
        eval_every=200,
        eval_batches=4,
        target=None,
        points=(("pointer-sort", {}), ("pointer-hull", {})),
    ),
    # small images: 2-D mixers in metaformer_tiny (first stage width 16), and softmax attention
    # over the flattened tokens
    "images": QualitySuite(
        name="images",
        mixers=("halo", "lka", "davit_window", "area", "svga", "softmax"),
        d_models=(16,),
        lrs=(1e-3, 3e-3),
        steps=1000,
        batch_size=64,
        eval_every=100,
        eval_batches=4,
        target=None,
        points=(("shapes", {"image_size": 32, "num_classes": 6}), ("digits", {"image_size": 32})),
    ),
    # the LLA paper's claim (LLA beats softmax on non-stationary targets), at CPU scale: drifting
    # and locally linear maps, and the stationary linear case as the control
    "regression": QualitySuite(
        name="regression",
        mixers=("lla", "softmax", "linear", "gla"),
        d_models=(32,),
        lrs=(1e-3, 3e-3),
        steps=1000,
        batch_size=64,
        eval_every=200,
        eval_batches=4,
        target=None,
        points=tuple(
            ("regression", {"d_x": 4, "num_pairs": 32, "mode": mode, "noise_std": 0.1})
            for mode in ("drift", "locally_linear", "linear")
        ),  # fmt: skip
    ),
}


def grid(suite: QualitySuite) -> list[GridPoint]:
    """The suite's grid points in training order: task points x mixers x widths x seeds."""
    return [GridPoint(t, dict(st), m, d, s) for t, st in suite.grid_points()
            for m in suite.mixers for d in suite.d_models for s in suite.seeds]  # fmt: skip


def run_quality(
    suite: QualitySuite,
    store: Store,
    *,
    command: str = "attnzoo bench quality",
    console: Console | None = None,
    progress: bool = True,
    allow_concurrent: bool = False,
    executor: Executor | None = None,
) -> int:
    """Train the suite's grid into ``store``; returns the run id. The grid is checked first
    (:func:`check_suite`): a bad setting fails before a run is recorded. ``allow_concurrent``:
    see :func:`attnzoo.bench.runs.start_run`.

    ``executor`` runs the grid points (:mod:`attnzoo.bench.executors`): this process, one after
    another (default, rows stored as they are made, a progress bar per step), or Ray tasks
    (:class:`~attnzoo.bench.executors.RayExecutor`: rows stored as each point arrives, a bar
    per point). Either way this process alone writes the store. A model whose training raised
    or a point whose worker died is stored as ``failed`` rows with a ``point-failed`` note, and
    the run goes on; Ctrl-C or SIGTERM stops it (what is still running is cancelled).
    """
    check_suite(suite)
    console = console or Console(stderr=True)
    executor = executor if executor is not None else LocalExecutor()
    points = grid(suite)
    with executor:  # Ray starts or attaches here: a failure records no run
        run_id = start_run(store, kind="quality", suite=suite.name, command=command,
                           config=suite.to_dict(), env=environment(), console=console,
                           allow_concurrent=allow_concurrent)  # fmt: skip
        if (where := executor.describe()) is not None:
            store.add_note(run_id, "executor", where)
        bar = progress_bar(console, progress, "steps" if executor.per_step else "grid points")
        with finishing(store, run_id), bar:
            per_point = len(suite.lrs) * suite.steps if executor.per_step else 1
            ptask = bar.add_task("quality", total=len(points) * per_point)

            def on_update(result: PointResult, steps: int, label: str) -> None:
                record_new(store, run_id, result)
                bar.update(ptask, advance=steps, description=label)

            try:
                outcomes = executor.map(functools.partial(train_point, suite), points, on_update)
                for point, outcome in outcomes:
                    result = (outcome if isinstance(outcome, PointResult) else
                              failed_point(point, suite.num_layers, suite.lrs, outcome.error))  # fmt: skip
                    record_point(store, run_id, result)
                    if not executor.per_step:
                        done = f"{point.task} {point.mixer} d={point.d_model} seed={point.seed}"
                        bar.update(ptask, advance=1, description=done)
                    if result.interrupt is not None:  # as it came: Ctrl-C or SIGTERM
                        raise result.interrupt
            except HookFailed as e:  # the driver's own store write failed
                raise e.error from None
    return run_id


def train_point(suite: QualitySuite, point: GridPoint,
                on_update: UpdateFn | None = None) -> PointResult:  # fmt: skip
    """Train one grid point's learning-rate sweep and return its rows (writes nothing).

    A model whose training raises gets a ``failed`` row and the sweep goes on; Ctrl-C or
    SIGTERM in training ends the sweep with an ``interrupted`` row and ``result.interrupt``
    set (no best learning rate then). ``on_update`` (the local driver's store writes and bar)
    is called as rows are added; its own exceptions reach the caller as :class:`HookFailed`.
    """
    task = TASKS[point.task]
    parts = task.build(point.mixer, point.d_model, suite.num_layers, dict(point.settings))
    out = PointResult.begin(point, task.describe(parts.task_config),
                            json.dumps(parts.task_config, sort_keys=True))  # fmt: skip
    facts: tuple[int, int | None] | None = None

    def emit(steps: int, label: str) -> None:
        if on_update is not None:
            try:
                on_update(out, steps, label)
            except Exception as e:
                raise HookFailed(e) from e

    def get_facts() -> tuple[int, int | None]:
        return model_facts(parts.model_fn, point.mixer, point.d_model, suite.num_layers,
                           parts.seq_len, point.seed)  # fmt: skip

    best: tuple[float, float] | None = None  # (metric, lr)
    for lr in suite.lrs:
        label = f"{point.task} {point.mixer} d={point.d_model} lr={lr:g} seed={point.seed}"
        emit(0, label)
        done = [0]

        def on_eval(row: dict[str, float], lr: float = lr, done: list[int] = done,
                    label: str = label) -> None:  # fmt: skip
            out.curves.append({**out.key, "lr": lr, **row})
            emit(int(row["step"]) - done[0], label)
            done[0] = int(row["step"])

        try:
            cfg = TrainConfig(steps=suite.steps, batch_size=suite.batch_size, lr=lr,
                              eval_every=suite.eval_every, eval_batches=suite.eval_batches,
                              target=suite.target if task.maximize else None, seed=point.seed,
                              maximize=task.maximize)  # fmt: skip
            result = train(parts.model_fn, parts.batch_fn, parts.loss_fn, parts.metric_fn, cfg,
                           on_eval=on_eval, predict_fn=parts.predict_fn, held_out=parts.held_out,
                           extra_evals=parts.extra_evals)  # fmt: skip
            facts = facts or get_facts()
        except Exception as e:  # a bug or a resource error of this model: the others go on
            try:
                known = facts or get_facts()
            except Exception:
                known = (0, None)
            out.add_failed([lr], suite.num_layers, known, error_text(e))
            emit(suite.steps - done[0], label)
            continue
        out.add_trained(result, suite.num_layers, facts)
        emit(suite.steps - done[0], label)  # early stop: the rest of this run is skipped
        sign = 1.0 if task.maximize else -1.0
        if result.best_metric is not None and (best is None or sign * result.best_metric > best[0]):
            best = (sign * result.best_metric, lr)
        if result.status == "interrupted":
            out.interrupt = result.interrupt or KeyboardInterrupt()
            return out
    out.best_lr = None if best is None else best[1]
    return out
