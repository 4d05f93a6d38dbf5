"""Seeded quality tasks (DESIGN §2 ``tasks/``): synthetic generators with documented semantics.

Each task module provides a frozen config dataclass, ``make_batch(cfg, batch_size, generator)``
(fully determined by the ``torch.Generator``'s state) and a documented ``metric``. Tasks
import nothing from ``attnzoo.mixers`` or ``attnzoo.models``.

- :mod:`attnzoo.tasks.mqar`: Zoology's multi-query associative recall.
- :mod:`attnzoo.tasks.listops`: LRA's ListOps (scaled down).
- :mod:`attnzoo.tasks.pointer`: sorting and planar convex hull for pointer networks.
- :mod:`attnzoo.tasks.regression`: in-context (locally / piecewise) linear regression.
- :mod:`attnzoo.tasks.images`: seeded synthetic shapes classification.
- :mod:`attnzoo.tasks.digits`: scikit-learn's 8x8 digits, upsampled, fixed seeded split.
"""

from attnzoo.tasks import digits, images, listops, mqar, pointer, regression  # noqa: F401
