"""The quality tasks' registry: what a task hands the trainer (:class:`TaskParts`) and what the
bench and the report know of it (:class:`QualityTask`). Each task module registers its own
adapter with :func:`register_task`, next to its generator; ``attnzoo bench quality`` stores each
task's description (metric, direction, patterns, tokens per layer) with its run, so the report
reads it from the store and mirrors nothing.

A :class:`QualityTask` builds, for a (mixer, width, depth, task settings), the model
constructor, the batch generator, the loss and the metric. Settings are checked by name: an
unknown key is a ``ValueError`` that names it and the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.text import add, suggest


@dataclasses.dataclass(frozen=True)
class TaskParts:
    """What the trainer needs for one (task, mixer, width, depth, settings).

    Attributes:
        model_fn, batch_fn, loss_fn, metric_fn: see :mod:`attnzoo.bench.train`.
        task_config: the task's settings as trained (stored as JSON with every row).
        seq_len: tokens per sequence for the streaming-state size; ``None``: not defined.
        predict_fn: ``(model, inputs) -> predictions`` for the metric (e.g. greedy decoding).
        held_out: fixed evaluation batches (a held-out split) instead of draws from batch_fn.
        extra_evals: name -> ``f(final model) -> float``, stored in the ``quality_eval`` table.
    """

    model_fn: Callable[[], nn.Module]
    batch_fn: Callable[[int, torch.Generator], tuple[Any, Any]]
    loss_fn: Callable[[Any, Any], Tensor]
    metric_fn: Callable[[Any, Any], float]
    task_config: dict[str, Any]
    seq_len: int | None
    predict_fn: Callable[[nn.Module, Any], Any] | None = None
    held_out: Sequence[tuple[Any, Any]] | None = None
    extra_evals: dict[str, Callable[[nn.Module], float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class QualityTask:
    """A task the quality bench trains.

    Attributes:
        name, description: as listed by ``attnzoo bench quality --list``.
        causal: the mixers it trains run causally (language-model style) or not.
        build: ``(mixer, d_model, num_layers, settings) -> TaskParts``.
        metric: what the metric measures (the report's axis label).
        maximize: higher is better (``False`` for error metrics such as MSE).
        patterns: the speed patterns matching how the task runs its mixers, in preference order
            (the report puts each mechanism's speed at the task's length beside its quality).
        tokens: ``task_config -> tokens one mixer layer sees`` (or ``None``).
        fmt: number format of the metric in tables.
        bounded: the metric lies in ``[0, 1]`` (plots fix the y range; else a log axis for
            error metrics).
        point_keys: ``(config key, short label)`` pairs that always name a task point in the
            report (e.g. Zoology's ``L`` and ``kv``); other keys show when points differ in them.
    """

    name: str
    description: str
    causal: bool
    build: Callable[[str, int, int, dict[str, Any]], TaskParts]
    metric: str = "accuracy"
    maximize: bool = True
    patterns: tuple[str, ...] = ()
    tokens: Callable[[dict[str, Any]], int | None] = lambda cfg: None
    fmt: str = ".3f"
    bounded: bool = True
    point_keys: tuple[tuple[str, str], ...] = ()

    def describe(self, task_config: dict[str, Any]) -> dict[str, Any]:
        """What the store keeps of the task for one task point (see ``Store.add_task``)."""
        patterns = self.patterns or (("causal-self",) if self.causal else ("noncausal-self",))
        return {"task": self.name, "description": self.description, "metric": self.metric,
                "maximize": self.maximize, "patterns": list(patterns), "fmt": self.fmt,
                "bounded": self.bounded, "tokens": self.tokens(task_config),
                "point_keys": [list(k) for k in self.point_keys]}  # fmt: skip


TASKS: dict[str, QualityTask] = {}


def register_task(task: QualityTask) -> QualityTask:
    return add(TASKS, task.name, task, "register_task")


def split_settings(
    owner: str, fields: Sequence[str], settings: Mapping[str, Any], options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``settings`` into the task config's ``fields`` and the adapter's ``options`` (with
    their defaults); an unknown key is a ``ValueError`` naming it and the valid ones."""
    valid = [*fields, *options]
    for key in settings:
        if key not in valid:
            raise ValueError(
                f"{owner}: unknown setting {key!r}{suggest(str(key), valid)}; valid: "
                f"{', '.join(valid)}"
            )
    cfg = {k: v for k, v in settings.items() if k in fields}
    return cfg, {k: settings.get(k, v) for k, v in options.items()}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def parse_config(owner: str, cls: Callable[..., Any], settings: Mapping[str, Any]) -> Any:
    """``cls(**settings)`` for a task's config dataclass; unknown keys fail as in
    :func:`split_settings`, bad values with the config's own error."""
    return cls(**split_settings(owner, field_names(cls), settings, {})[0])  # type: ignore[arg-type]
