"""2-D mixers on channels-last ``[B, h, w, C]``. Importing a module registers its mixer."""

from attnzoo.mixers.vision import (  # noqa: F401
    area,
    axial,
    davit_channel,
    davit_window,
    ffnified,
    gpsa,
    halo,
    hyena_nd,
    l2vit,
    lka,
    moat,
    outlook,
    svga,
    tnt,
    vig,
)
