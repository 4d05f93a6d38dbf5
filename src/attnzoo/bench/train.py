"""A small CPU-friendly trainer for the quality bench: AdamW, warm-up + cosine schedule, periodic
evaluation on fixed held-out batches, early stop at a target metric, a learning-rate sweep with
best-of (as Zoology reports), deterministic given a seed, Ctrl-C keeps the partial curve.

The trainer knows nothing about tasks or models: it takes callables.

- ``model_fn() -> nn.Module`` builds the model (called after seeding, so the init is seeded);
- ``batch_fn(batch_size, generator) -> (inputs, targets)`` draws a batch from a seeded generator;
- ``loss_fn(outputs, targets) -> scalar tensor`` and ``metric_fn(outputs, targets) -> float``
  (higher is better; e.g. accuracy over the scored positions).

Evaluation batches are drawn once from their own generator (``seed + 1``), so every evaluation
of every learning rate sees the same data; a task with a fixed held-out split passes its batches
instead (``held_out``). Optional hooks: ``predict_fn(model, inputs)`` replaces ``model(inputs)``
as the metric's input (e.g. greedy decoding, where the training forward is teacher-forced; the
evaluation loss still uses ``model(inputs)``), and ``extra_evals`` (name -> ``f(model) -> float``)
run once on the final model (in eval mode, without gradients) unless the run was interrupted.
A block's auxiliary loss (:meth:`attnzoo.mixers.base.Mixer.aux_loss`, e.g. routing attention's
commitment loss) is added to the task loss before ``backward()``; the curve records the task loss.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mixers.base import auxiliary_loss

Batch = tuple[Any, Any]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Attributes:
    steps: optimizer steps at most.
    batch_size: training batch size.
    lr: peak learning rate (after ``warmup_steps`` of linear warm-up, cosine decay to 0).
    weight_decay: AdamW decoupled weight decay.
    warmup_steps: linear warm-up steps.
    eval_every: evaluate every this many steps (and after the last step).
    eval_batches: held-out batches per evaluation (of ``batch_size`` each).
    target: stop early once the evaluation metric reaches this (``None``: never).
    maximize: the metric improves upwards (accuracy) or downwards (``False``: an error such as
        MSE); it decides "reaches the target" and "best".
    grad_clip: max global gradient norm (``None``: no clipping).
    seed: seeds the model init, the training data and (``seed + 1``) the held-out data.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    eval_every: int = 50
    eval_batches: int = 4
    target: float | None = None
    grad_clip: float | None = 1.0
    seed: int = 0
    maximize: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig: {name} must be an int >= 1, got {v!r}")
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or self.warmup_steps < 0
        ):
            raise ValueError(f"TrainConfig: warmup_steps must be an int >= 0, got {self.warmup_steps!r}")  # fmt: skip
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ValueError(f"TrainConfig: lr must be a finite float > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig: weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig: grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"TrainConfig: seed must be an int, got {self.seed!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate multiplier at ``step`` (0-based): linear warm-up, then cosine to 0."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))


@dataclasses.dataclass
class TrainResult:
    """A run's outcome. ``curve`` rows: ``{"step", "train_loss", "eval_loss", "metric", "seconds"}``;
    ``status``: ``complete``, ``early-stop`` (target reached) or ``interrupted`` (Ctrl-C or
    SIGTERM: ``interrupt`` is the exception, for the caller to raise again once the partial
    result is recorded); ``extra``: the final model's extra evaluations by name (empty when
    interrupted)."""

    config: TrainConfig
    curve: list[dict[str, float]]
    status: str
    steps_run: int
    seconds: float
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    interrupt: KeyboardInterrupt | None = None

    @property
    def final_metric(self) -> float | None:
        return self.curve[-1]["metric"] if self.curve else None

    @property
    def best_metric(self) -> float | None:
        pick = max if self.config.maximize else min
        return pick((r["metric"] for r in self.curve), default=None)


PredictFn = Callable[[nn.Module, Any], Any]


def _evaluate(
    model: nn.Module,
    batches: Sequence[Batch],
    loss_fn: Callable,
    metric_fn: Callable,
    predict_fn: PredictFn | None,
) -> tuple[float, float]:
    model.eval()
    losses, metrics = [], []
    with torch.no_grad():
        for inputs, targets in batches:
            out = model(inputs)
            losses.append(float(loss_fn(out, targets)))
            pred = out if predict_fn is None else predict_fn(model, inputs)
            metrics.append(float(metric_fn(pred, targets)))
    model.train()
    return sum(losses) / len(losses), sum(metrics) / len(metrics)


def _extra(model: nn.Module, evals: Mapping[str, Callable[[nn.Module], float]]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = {name: float(fn(model)) for name, fn in evals.items()}
    model.train()
    return out


def train(
    model_fn: Callable[[], nn.Module],
    batch_fn: Callable[[int, torch.Generator], Batch],
    loss_fn: Callable[[Any, Any], Tensor],
    metric_fn: Callable[[Any, Any], float],
    cfg: TrainConfig,
    *,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    predict_fn: PredictFn | None = None,
    held_out: Sequence[Batch] | None = None,
    extra_evals: Mapping[str, Callable[[nn.Module], float]] | None = None,
) -> TrainResult:
    """Train one model; see the module docstring. ``on_eval`` sees each curve row as it is made
    (progress bars, storing rows as they come); ``held_out`` (non-empty) replaces the
    ``cfg.eval_batches`` batches drawn from ``batch_fn``."""
    if held_out is not None and len(held_out) == 0:
        raise ValueError("train: held_out must hold at least one (inputs, targets) batch, got []")
    torch.manual_seed(cfg.seed)
    model = model_fn()
    g_train = torch.Generator().manual_seed(cfg.seed)
    g_eval = torch.Generator().manual_seed(cfg.seed + 1)
    if held_out is None:
        held_out = [batch_fn(cfg.batch_size, g_eval) for _ in range(cfg.eval_batches)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_at)
    curve: list[dict[str, float]] = []
    status, step, t0, running = "complete", 0, time.perf_counter(), []
    interrupt: KeyboardInterrupt | None = None
    model.train()
    try:
        for step in range(1, cfg.steps + 1):
            inputs, targets = batch_fn(cfg.batch_size, g_train)
            loss = loss_fn(model(inputs), targets)
            aux = auxiliary_loss(model)  # e.g. routing attention's commitment loss
            opt.zero_grad(set_to_none=True)
            (loss if aux is None else loss + aux).backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            running.append(float(loss.detach()))
            if step % cfg.eval_every == 0 or step == cfg.steps:
                eval_loss, metric = _evaluate(model, held_out, loss_fn, metric_fn, predict_fn)
                row = {"step": step, "train_loss": sum(running) / len(running),
                       "eval_loss": eval_loss, "metric": metric,
                       "seconds": time.perf_counter() - t0}  # fmt: skip
                running = []
                curve.append(row)
                if on_eval is not None:
                    on_eval(row)
                t = cfg.target
                if t is not None and (metric >= t if cfg.maximize else metric <= t):
                    status = "early-stop"
                    break
    except KeyboardInterrupt as e:
        status, interrupt = "interrupted", e
        step = max(0, step - 1)
    seconds = time.perf_counter() - t0
    extra = _extra(model, extra_evals) if extra_evals and status != "interrupted" else {}
    return TrainResult(cfg, curve, status, step, seconds, extra, interrupt)


def sweep(
    lrs: Sequence[float],
    model_fn: Callable[[], nn.Module],
    batch_fn: Callable[[int, torch.Generator], Batch],
    loss_fn: Callable[[Any, Any], Tensor],
    metric_fn: Callable[[Any, Any], float],
    cfg: TrainConfig,
    *,
    on_eval: Callable[[float, dict[str, float]], None] | None = None,
) -> tuple[TrainResult, list[TrainResult]]:
    """Train once per learning rate (same seed, data and held-out set) and return the best run by
    its best evaluation metric, with every run. Stops at the first interrupted run."""
    if not lrs:
        raise ValueError("sweep: lrs must name at least one learning rate")
    results = []
    for lr in lrs:
        hook = (lambda row, lr=lr: on_eval(lr, row)) if on_eval is not None else None
        r = train(model_fn, batch_fn, loss_fn, metric_fn, dataclasses.replace(cfg, lr=lr),
                  on_eval=hook)  # fmt: skip
        results.append(r)
        if r.status == "interrupted":
            break
    sign = 1.0 if cfg.maximize else -1.0
    best = max(results, key=lambda r: -math.inf if r.best_metric is None else sign * r.best_metric)
    return best, results
