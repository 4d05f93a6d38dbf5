"""Seeded quality tasks (DESIGN §2 ``tasks/``): synthetic generators with documented semantics,
each registered with the quality bench next to its generator (:mod:`attnzoo.tasks.registry`).

Each task module provides a frozen config dataclass, ``make_batch(cfg, batch_size, generator)``
(fully determined by the ``torch.Generator``'s state), a documented ``metric`` and, at its end,
the adapter that builds the model the quality bench trains on it (a :class:`QualityTask`).

- :mod:`attnzoo.tasks.mqar`: Zoology's multi-query associative recall.
- :mod:`attnzoo.tasks.listops`: LRA's ListOps (scaled down).
- :mod:`attnzoo.tasks.pointer`: sorting and planar convex hull for pointer networks
  (:mod:`attnzoo.tasks.pointer_net`: the pointer network and its adapter).
- :mod:`attnzoo.tasks.regression`: in-context (locally / piecewise) linear regression.
- :mod:`attnzoo.tasks.images`: seeded synthetic shapes classification.
- :mod:`attnzoo.tasks.digits`: scikit-learn's 8x8 digits, upsampled, fixed seeded split.
"""

from attnzoo.tasks import digits, images, listops, mqar, pointer, pointer_net, regression  # noqa: F401
from attnzoo.tasks.registry import TASKS, QualityTask, TaskParts, register_task

__all__ = ["TASKS", "QualityTask", "TaskParts", "register_task"]
