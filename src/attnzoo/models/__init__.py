"""Small generic backbones that take any registered mixer (DESIGN §2).

    import attnzoo as az
    model = az.create_model("metaformer_tiny", mixer="lka", num_classes=10)  # [B, 3, H, W] -> [B, 10]

timm: when timm is already imported at the time this package is imported, the backbones are
registered into timm's model registry as ``attnzoo_<name>`` (``timm.create_model(
"attnzoo_metaformer_tiny", mixer="lka")``); otherwise call :func:`register_timm_models` once.
attnzoo never imports timm by itself (it is not a runtime dependency and costs ~1.5 s to import).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from attnzoo.config import suggest
from attnzoo.models.metaformer import (
    MetaFormer,
    metaformer3d_tiny,
    metaformer_small,
    metaformer_tiny,
)
from attnzoo.models.registry import MODELS as _MODELS
from attnzoo.models.registry import register_model
from attnzoo.models.sequence import SequenceModel
from attnzoo.models.timm_registry import register_timm_models


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a backbone by name; ``kwargs`` go to its constructor (e.g. :class:`MetaFormer`).

    Unknown names raise ``ValueError`` with close matches; unknown keywords raise ``TypeError``.
    """
    if not isinstance(name, str):
        raise TypeError(f"create_model: name must be a str, got {type(name).__name__}")
    if name not in _MODELS:
        raise ValueError(
            f"create_model: unknown model {name!r}{suggest(name, _MODELS)}; "
            f"available: {', '.join(list_models())}"
        )
    return _MODELS[name](**kwargs)


if "timm" in sys.modules:
    register_timm_models()

__all__ = [
    "MetaFormer",
    "SequenceModel",
    "create_model",
    "list_models",
    "metaformer3d_tiny",
    "metaformer_small",
    "metaformer_tiny",
    "register_model",
    "register_timm_models",
]
