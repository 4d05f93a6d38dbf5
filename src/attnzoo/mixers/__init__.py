"""nn.Module mixers, one file per mechanism; importing this package registers them all."""

from attnzoo.mixers import seq, vision  # noqa: F401
from attnzoo.mixers.base import Mixer

__all__ = ["Mixer"]
