"""The block registry: specs (:mod:`attnzoo.spec`) declared once at registration, looked up by
name."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from attnzoo.config import MixerConfig, suggest
from attnzoo.ops.masks import MASK_KINDS
from attnzoo.spec import (
    DIMS,
    FAMILIES,
    LAYOUTS,
    PATTERNS,
    ROLES,
    STATES,
    ExportSupport,
    FlopsFn,
    LowPrecision,
    MixerSpec,
    Paper,
)

if TYPE_CHECKING:
    from attnzoo.mixers.base import Mixer

__all__ = [
    "FAMILIES", "LAYOUTS", "PATTERNS", "ROLES", "STATES", "MixerSpec", "Paper", "build_mixer",
    "get_spec", "list_mixers", "mixer_from_json", "register_mixer", "unregister_mixer",
]  # fmt: skip

M = TypeVar("M", bound="type[Mixer]")


_REGISTRY: dict[str, MixerSpec] = {}


def _layout_of(name: str, layout: str | None, dims: int | None) -> str:
    by_dims = {v: k for k, v in DIMS.items()}
    if dims is not None and dims not in by_dims:
        raise ValueError(f"register_mixer({name!r}): dims must be 1, 2 or 3, got {dims!r}")
    if layout is None:
        return by_dims[dims] if dims is not None else "tokens"
    if layout not in LAYOUTS:
        raise ValueError(
            f"register_mixer({name!r}): layout must be one of {tuple(LAYOUTS)}, got {layout!r}"
        )
    if dims is not None and by_dims[dims] != layout:
        raise ValueError(f"register_mixer({name!r}): dims={dims} contradicts layout={layout!r}")
    return layout


def register_mixer(
    name: str,
    *,
    config: type[MixerConfig],
    family: str,
    layout: str | None = None,
    role: str = "mixer",
    patterns: tuple[str, ...] | None = None,
    masks: tuple[str, ...] | None = None,
    state: str = "none",
    exact: bool = False,
    context_layout: str | None = None,
    attention_maps: bool = False,
    complexity: str,
    paper: Paper,
    peer: str,
    flops: FlopsFn,
    dims: int | None = None,
    low_precision: LowPrecision | None = None,
    export: ExportSupport | None = None,
) -> Callable[[M], M]:
    """Class decorator that declares a block's spec and adds it to the registry.

    Defaults: ``layout="tokens"``; ``patterns`` the role's default (``noncausal-self`` for a
    mixer or pooling head, ``noncausal-cross`` for a fusion block); ``masks`` ``("full",)`` plus
    ``"causal"`` when a causal pattern is declared; ``context_layout`` the input layout when a
    cross pattern is declared. ``dims=`` (1 or 2) is the first version's spelling of ``layout``.
    ``low_precision`` defaults to ``LowPrecision()``: the default bfloat16 and float16
    tolerances, no impl refused (see :class:`attnzoo.spec.LowPrecision`). ``export`` defaults
    to ``ExportSupport()``: exports with torch.export at static and dynamic sizes and to ONNX
    (see :class:`attnzoo.spec.ExportSupport`; ``tests/contract/test_export.py`` holds it to that).
    """
    if name in _REGISTRY:
        raise ValueError(f"register_mixer: a mixer named {name!r} is already registered")
    layout = _layout_of(name, layout, dims)
    if family not in FAMILIES:
        raise ValueError(
            f"register_mixer({name!r}): family must be one of {FAMILIES}, got {family!r}"
        )
    if role not in ROLES:
        raise ValueError(
            f"register_mixer({name!r}): role must be one of {tuple(ROLES)}, got {role!r}"
        )
    info = ROLES[role]
    patterns = info.default_patterns if patterns is None else tuple(patterns)
    bad = [p for p in patterns if p not in info.patterns]
    if not patterns or bad:
        raise ValueError(
            f"register_mixer({name!r}): patterns of a {role} block must be a non-empty subset of "
            f"{info.patterns}, got {patterns}"
        )
    causal = any(p.startswith("causal") for p in patterns)
    masks = (("full", "causal") if causal else ("full",)) if masks is None else tuple(masks)
    bad = [m for m in masks if m not in MASK_KINDS]
    if bad:
        raise ValueError(f"register_mixer({name!r}): unknown mask kinds {bad}; known: {MASK_KINDS}")
    if state not in STATES:
        raise ValueError(f"register_mixer({name!r}): state must be one of {STATES}, got {state!r}")
    cross = any(p.endswith("cross") for p in patterns)
    if context_layout is None and cross:
        context_layout = layout
    if context_layout is not None and (not cross or context_layout not in LAYOUTS):
        raise ValueError(
            f"register_mixer({name!r}): context_layout must be one of {tuple(LAYOUTS)} for a "
            f"block with cross patterns (none without), got {context_layout!r} with {patterns}"
        )

    low_precision = LowPrecision() if low_precision is None else low_precision
    if not isinstance(low_precision, LowPrecision):
        raise TypeError(
            f"register_mixer({name!r}): low_precision must be a LowPrecision, "
            f"got {type(low_precision).__name__}"
        )
    export = ExportSupport() if export is None else export
    if not isinstance(export, ExportSupport):
        raise TypeError(
            f"register_mixer({name!r}): export must be an ExportSupport, "
            f"got {type(export).__name__}"
        )

    def deco(cls: M) -> M:
        spec = MixerSpec(
            name=name,
            family=family,
            layout=layout,
            context_layout=context_layout,
            role=role,
            patterns=patterns,
            masks=masks,
            state=state,
            exact=exact,
            attention_maps=attention_maps,
            complexity=complexity,
            paper=paper,
            peer=peer,
            config=config,
            flops_fn=flops,
            cls=cls,
            low_precision=low_precision,
            export=export,
        )
        _check_low_precision(spec)
        config.mixer_name = name
        cls.spec = spec
        _REGISTRY[name] = spec
        return cls

    return deco


def _check_low_precision(spec: MixerSpec) -> None:
    """``ValueError`` unless every impl ``spec.low_precision`` refuses is a fast path of the
    config (``impl`` values other than ``auto`` and ``reference``)."""
    bad = [i for i in spec.low_precision.refused_impls if i not in spec.fast_impls]
    if bad:
        raise ValueError(
            f"register_mixer({spec.name!r}): low_precision.refused_impls {bad} are not fast impls "
            f"of {spec.config.__name__}; its fast impls: {spec.fast_impls}"
        )


def unregister_mixer(name: str) -> None:
    """Remove a mixer (for tests that register temporary mixers)."""
    _REGISTRY.pop(name, None)


@contextlib.contextmanager
def registered(*specs: MixerSpec) -> Iterator[None]:
    """Put already-declared specs (e.g. of blocks a test file defines) in the registry for the
    duration of a ``with`` block; names already taken raise ``ValueError``."""
    taken = [s.name for s in specs if s.name in _REGISTRY and _REGISTRY[s.name] is not s]
    if taken:
        raise ValueError(f"registered: names already in the registry: {taken}")
    added = [s for s in specs if s.name not in _REGISTRY]
    for s in added:
        _REGISTRY[s.name] = s
    try:
        yield
    finally:
        for s in added:
            _REGISTRY.pop(s.name, None)


def _ensure_loaded() -> None:
    import attnzoo.mixers  # noqa: F401  (registers the built-in mixers)


def get_spec(name: str) -> MixerSpec:
    """The spec of a registered mixer; unknown names raise ``ValueError`` with close matches."""
    _ensure_loaded()
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown mixer {name!r}{suggest(name, _REGISTRY)}; registered: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def list_mixers(
    *,
    layout: str | None = None,
    role: str | None = None,
    pattern: str | None = None,
    family: str | None = None,
    state: str | None = None,
    mask: str | None = None,
    dims: int | None = None,
) -> list[MixerSpec]:
    """Registered specs, sorted by name, filtered by every argument that is not ``None``.

    ``dims`` (1, 2 or 3) is the first version's spelling of ``layout`` (tokens, grid2d, grid3d).
    """
    _ensure_loaded()
    for arg, value, allowed in (
        ("layout", layout, tuple(LAYOUTS)),
        ("role", role, tuple(ROLES)),
        ("pattern", pattern, PATTERNS),
        ("family", family, FAMILIES),
        ("state", state, STATES),
        ("mask", mask, MASK_KINDS),
        ("dims", dims, tuple(DIMS.values())),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"list_mixers: {arg} must be one of {allowed}, got {value!r}")
    out = []
    for spec in sorted(_REGISTRY.values(), key=lambda s: s.name):
        if (
            (layout is not None and spec.layout != layout)
            or (dims is not None and spec.dims != dims)
            or (role is not None and spec.role != role)
            or (pattern is not None and pattern not in spec.patterns)
            or (family is not None and spec.family != family)
            or (state is not None and spec.state != state)
            or (mask is not None and mask not in spec.masks)
        ):
            continue
        out.append(spec)
    return out


def build_mixer(name: str, *, d_model: int, causal: bool = False, **config: Any) -> Mixer:
    """Build a registered mixer from its keyword config.

    Unknown keys raise ``TypeError`` naming the closest valid keys; ``causal=True`` on a mixer
    without a causal pattern raises ``ValueError`` naming the supported patterns.
    """
    spec = get_spec(name)
    cfg = spec.config.from_kwargs(d_model=d_model, causal=causal, **config)
    return spec.cls(cfg)


def mixer_from_json(text: str) -> Mixer:
    """Rebuild a mixer (fresh weights) from ``mixer.cfg.to_json()``."""
    data = json.loads(text)
    if not isinstance(data, dict) or "mixer" not in data:
        raise ValueError(f"mixer JSON must be an object with a 'mixer' key, got {text!r}")
    spec = get_spec(data["mixer"])
    return spec.cls(spec.config.from_json(text))
