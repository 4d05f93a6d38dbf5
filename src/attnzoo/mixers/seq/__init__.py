"""1-D sequence mixers ``[B, T, D] -> [B, T, D]``. Importing a module registers its mixer."""

from attnzoo.mixers.seq import aaren, gla, lightning, linear, lla, sigmoid, softmax  # noqa: F401
