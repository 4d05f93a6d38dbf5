"""The quality bench (``attnzoo bench quality``): train small models with any registered mixer on
seeded tasks, store config, seed, curve and final metric per run (DESIGN §5).

A :class:`QualityTask` adapts one task of :mod:`attnzoo.tasks` to the trainer: it builds, for a
(mixer, width, depth, task settings), the model constructor, the batch generator, the loss and
the metric. A :class:`QualitySuite` is the grid: tasks x mixers x widths x seeds, each trained
once per learning rate; the best learning rate of each group is flagged (Zoology reports the best
of a learning-rate sweep). Each evaluation point is committed as it is made; Ctrl-C marks the
run interrupted and keeps everything measured.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn

from attnzoo.bench.env import environment, git_sha
from attnzoo.bench.runs import finishing, progress_bar
from attnzoo.bench.train import TrainConfig, train
from attnzoo.config import suggest
from attnzoo.models.sequence import SequenceModel
from attnzoo.registry import build_mixer, get_spec
from attnzoo.store import Store


@dataclasses.dataclass(frozen=True)
class TaskParts:
    model_fn: Callable[[], nn.Module]
    batch_fn: Callable[[int, torch.Generator], tuple[Any, Any]]
    loss_fn: Callable[[Any, Any], Tensor]
    metric_fn: Callable[[Any, Any], float]
    task_config: dict[str, Any]
    seq_len: int


@dataclasses.dataclass(frozen=True)
class QualityTask:
    """``build(mixer, d_model, num_layers, settings) -> TaskParts``; ``causal``: the mixers it
    trains run causally (language-model style) or not."""

    name: str
    description: str
    causal: bool
    build: Callable[[str, int, int, dict[str, Any]], TaskParts]
    maximize: bool = True  # False for error metrics (lower is better)


TASKS: dict[str, QualityTask] = {}


def register_task(task: QualityTask) -> QualityTask:
    TASKS[task.name] = task
    return task


def _mqar(mixer: str, d_model: int, num_layers: int, settings: dict[str, Any]) -> TaskParts:
    from attnzoo.tasks import mqar

    cfg = mqar.MQARConfig(**settings)

    def model_fn() -> nn.Module:
        return SequenceModel(vocab_size=cfg.vocab_size, d_model=d_model, num_layers=num_layers,
                             mixer=mixer, causal=True, max_len=cfg.seq_len, short_conv=4)  # fmt: skip

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = mqar.make_batch(cfg, batch_size, g)
        return b.inputs, b.targets

    return TaskParts(model_fn, batch_fn, mqar.loss, mqar.metric, dataclasses.asdict(cfg),
                     cfg.seq_len)  # fmt: skip


register_task(QualityTask("mqar", "Zoology's multi-query associative recall (accuracy over the "
                          "queried positions)", True, _mqar))  # fmt: skip


def _listops(mixer: str, d_model: int, num_layers: int, settings: dict[str, Any]) -> TaskParts:
    """A non-causal sequence classifier; mean pooling runs over the right padding too (the pad
    token has its own embedding, so the model can learn to discount it)."""
    from attnzoo.tasks import listops

    cfg = listops.ListOpsConfig(**settings)

    def model_fn() -> nn.Module:
        return SequenceModel(vocab_size=listops.VOCAB_SIZE, d_model=d_model,
                             num_layers=num_layers, mixer=mixer, causal=False,
                             num_outputs=listops.NUM_CLASSES, pool="mean",
                             max_len=cfg.max_length)  # fmt: skip

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = listops.make_batch(cfg, batch_size, g)
        return b.inputs, b.targets

    return TaskParts(model_fn, batch_fn, listops.loss, listops.metric, dataclasses.asdict(cfg),
                     cfg.max_length)  # fmt: skip


register_task(QualityTask("listops", "LRA's ListOps, scaled down (accuracy of the 10-way value)",
                          False, _listops))  # fmt: skip


def _regression(mixer: str, d_model: int, num_layers: int, settings: dict[str, Any]) -> TaskParts:
    """In-context regression: continuous rows through a linear input map, a causal model, the
    task's MSE at the query rows (lower is better)."""
    from attnzoo.tasks import regression

    cfg = regression.RegressionConfig(**settings)
    probe = regression.make_batch(cfg, 1, torch.Generator().manual_seed(0))
    L, E = probe.inputs.shape[1:]

    def model_fn() -> nn.Module:
        return SequenceModel(vocab_size=1, input_dim=E, d_model=d_model, num_layers=num_layers,
                             mixer=mixer, causal=True, num_outputs=cfg.d_y, max_len=L)  # fmt: skip

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = regression.make_batch(cfg, batch_size, g)
        return b.inputs, b.targets

    return TaskParts(model_fn, batch_fn, regression.loss, regression.metric,
                     dataclasses.asdict(cfg), L)  # fmt: skip


register_task(QualityTask("regression", "in-context (piecewise / locally) linear regression "
                          "(MSE at the query rows; lower is better)", True, _regression,
                          maximize=False))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class QualitySuite:
    """One quality run's grid. ``task_settings`` go to the task's config (e.g. MQAR's
    ``vocab_size``, ``seq_len``, ``num_kv_pairs``); ``target`` stops a run early."""

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

    def __post_init__(self) -> None:
        for t in self.tasks:
            if t not in TASKS:
                raise ValueError(f"--task: unknown task {t!r}{suggest(t, list(TASKS))}; known: "
                                 f"{', '.join(TASKS)}")  # fmt: skip
        for m in self.mixers:
            get_spec(m)  # raises with close matches
        for arg, values in (
            ("--d-model", self.d_models),
            ("--seeds", self.seeds),
            ("--lrs", self.lrs),
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

    def replace(self, **changes: Any) -> QualitySuite:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
}


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


def run_quality(
    suite: QualitySuite,
    store: Store,
    *,
    command: str = "attnzoo bench quality",
    console: Console | None = None,
    progress: bool = True,
) -> int:
    """Train the suite's grid into ``store``; returns the run id."""
    console = console or Console(stderr=True)
    run_id = store.begin_run(kind="quality", suite=suite.name, command=command,
                             config=suite.to_dict(), env=environment(), git_sha=git_sha())  # fmt: skip
    groups = [(t, m, d, s) for t in suite.tasks for m in suite.mixers for d in suite.d_models
              for s in suite.seeds]  # fmt: skip
    bar = progress_bar(console, progress, "steps")
    with finishing(store, run_id), bar:
        ptask = bar.add_task("quality", total=len(groups) * len(suite.lrs) * suite.steps)
        for task_name, mixer, d_model, seed in groups:
            _group(store, run_id, suite, task_name, mixer, d_model, seed, bar, ptask)
    return run_id


def _group(store: Store, run_id: int, suite: QualitySuite, task_name: str, mixer: str,
           d_model: int, seed: int, bar: Progress, ptask: Any) -> None:  # fmt: skip
    task = TASKS[task_name]
    parts = task.build(mixer, d_model, suite.num_layers, dict(suite.task_settings))
    best: tuple[float, float] | None = None  # (metric, lr)
    for lr in suite.lrs:
        bar.update(ptask, description=f"{task_name} {mixer} d={d_model} lr={lr:g} seed={seed}")
        cfg = TrainConfig(steps=suite.steps, batch_size=suite.batch_size, lr=lr,
                          eval_every=suite.eval_every, eval_batches=suite.eval_batches,
                          target=suite.target if task.maximize else None, seed=seed,
                          maximize=task.maximize)  # fmt: skip
        done = [0]

        def on_eval(row: dict[str, float], lr: float = lr, done: list[int] = done) -> None:
            store.add_curve_point(run_id, {"task": task_name, "mixer": mixer, "d_model": d_model,
                                           "lr": lr, "seed": seed, **row})  # fmt: skip
            bar.advance(ptask, int(row["step"]) - done[0])
            done[0] = int(row["step"])

        result = train(parts.model_fn, parts.batch_fn, parts.loss_fn, parts.metric_fn, cfg,
                       on_eval=on_eval)  # fmt: skip
        bar.advance(ptask, suite.steps - done[0])  # early stop: the rest of this run is skipped
        torch.manual_seed(seed)
        params = sum(p.numel() for p in parts.model_fn().parameters())
        layer_state = state_size(mixer, d_model, parts.seq_len)
        store.add_quality(run_id, {
            "task": task_name, "task_config": json.dumps(parts.task_config, sort_keys=True),
            "mixer": mixer, "d_model": d_model, "num_layers": suite.num_layers, "lr": lr,
            "seed": seed, "params": params,
            "state_size": None if layer_state is None else layer_state * suite.num_layers,
            "steps_run": result.steps_run, "status": result.status,
            "final_metric": result.final_metric, "best_metric": result.best_metric,
            "best_of_sweep": False, "seconds": result.seconds,
        })  # fmt: skip
        sign = 1.0 if task.maximize else -1.0
        if result.best_metric is not None and (best is None or sign * result.best_metric > best[0]):
            best = (sign * result.best_metric, lr)
        if result.status == "interrupted":
            raise KeyboardInterrupt
    if best is not None:
        store.mark_best_of_sweep(run_id, task_name, mixer, d_model, seed, best[1])
