"""2-D mixers on channels-last ``[B, h, w, C]``. Importing a module registers its mixer."""

from attnzoo.mixers.vision import (  # noqa: F401
    area,
    davit_channel,
    davit_window,
    ffnified,
    gpsa,
    halo,
    l2vit,
    lka,
    moat,
    outlook,
    svga,
    tnt,
    vig,
)
