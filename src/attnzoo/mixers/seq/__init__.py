"""1-D sequence mixers ``[B, T, D] -> [B, T, D]``. One import line per mechanism."""

from attnzoo.mixers.seq import sigmoid, softmax  # noqa: F401
