"""attnzoo: attention and token-mixing mechanisms behind one interface, verified and measured.

import attnzoo as az
az.list_mixers(layout="tokens", pattern="causal-self")
m = az.build_mixer("softmax", d_model=256, num_heads=4, causal=True)
"""

from attnzoo._version import __version__
from attnzoo.config import MixerConfig
from attnzoo.mixers import Mixer
from attnzoo.mixers.base import AttentionMaps, StreamingMixer
from attnzoo.models import create_model, list_models
from attnzoo.ops.masks import Mask
from attnzoo.registry import (
    build_mixer,
    get_spec,
    list_mixers,
    mixer_from_json,
    register_mixer,
)
from attnzoo.spec import (
    FAMILIES,
    LAYOUTS,
    PATTERNS,
    ROLES,
    STATES,
    ExportSupport,
    Layout,
    LowPrecision,
    MixerSpec,
    Paper,
    Role,
    Tolerance,
    register_role,
)

__all__ = [
    "FAMILIES",
    "LAYOUTS",
    "PATTERNS",
    "ROLES",
    "STATES",
    "AttentionMaps",
    "ExportSupport",
    "Layout",
    "LowPrecision",
    "Mask",
    "Mixer",
    "MixerConfig",
    "MixerSpec",
    "Paper",
    "Role",
    "StreamingMixer",
    "Tolerance",
    "__version__",
    "build_mixer",
    "create_model",
    "get_spec",
    "list_mixers",
    "list_models",
    "mixer_from_json",
    "register_mixer",
    "register_role",
]
