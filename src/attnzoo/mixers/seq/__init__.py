"""1-D sequence mixers ``[B, T, D] -> [B, T, D]``. Importing a module registers its mixer."""

from attnzoo.mixers.seq import (  # noqa: F401
    aaren,
    combiner,
    gla,
    hyena,
    lightning,
    linear,
    lla,
    routing,
    sigmoid,
    softmax,
    sparsifiner,
)
