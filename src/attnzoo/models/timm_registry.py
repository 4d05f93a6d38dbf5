"""timm entry points for the attnzoo backbones, registered on request.

:func:`register_timm_models` adds ``attnzoo_metaformer_tiny`` and ``attnzoo_metaformer_small`` to
timm's model registry, so ``timm.create_model("attnzoo_metaformer_tiny", mixer="lka",
num_classes=10)`` builds :func:`attnzoo.models.metaformer.metaformer_tiny`. timm is imported
only inside that function; there are no pretrained weights (``pretrained=True`` raises).
"""

from __future__ import annotations

from typing import Any

from attnzoo.models.metaformer import MetaFormer
from attnzoo.models.registry import MODELS

# timm's register_model appends entry-point names to the module's __all__; list them up front.
__all__ = ["attnzoo_metaformer_small", "attnzoo_metaformer_tiny", "register_timm_models"]

# keywords timm.create_model passes to every entry point; they describe weights, of which
# attnzoo has none
_TIMM_WEIGHT_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _entry(name: str, pretrained: bool, kwargs: dict[str, Any]) -> MetaFormer:
    if pretrained:
        raise ValueError(
            f"attnzoo_{name}: attnzoo has no pretrained weights, got pretrained={pretrained!r}"
        )
    for key in _TIMM_WEIGHT_KEYS:
        kwargs.pop(key, None)
    return MODELS[name](**kwargs)


def attnzoo_metaformer_tiny(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """timm entry point of :func:`attnzoo.models.metaformer.metaformer_tiny`."""
    return _entry("metaformer_tiny", pretrained, kwargs)


def attnzoo_metaformer_small(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """timm entry point of :func:`attnzoo.models.metaformer.metaformer_small`."""
    return _entry("metaformer_small", pretrained, kwargs)


ENTRYPOINTS = (attnzoo_metaformer_tiny, attnzoo_metaformer_small)


def register_timm_models() -> bool:
    """Register the attnzoo backbones in timm's model registry (idempotent).

    Returns ``False`` (and registers nothing) when timm is not installed, ``True`` otherwise.
    """
    try:
        from timm.models import is_model, register_model
    except ImportError:
        return False
    for fn in ENTRYPOINTS:
        if not is_model(fn.__name__):
            register_model(fn)
    return True
