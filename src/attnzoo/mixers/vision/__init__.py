"""2-D mixers on channels-last ``[B, h, w, C]``. Importing a module registers its mixer."""

from attnzoo.mixers.vision import l2vit, vig  # noqa: F401
