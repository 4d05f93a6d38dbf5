"""Moved: DaViT's two mixers live in one file each (Interface v2)."""

raise ImportError(
    "attnzoo.mixers.vision.davit was split into attnzoo.mixers.vision.davit_channel and "
    "attnzoo.mixers.vision.davit_window; import load_timm_weights from the mixer's module"
)
