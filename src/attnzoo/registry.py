"""The mixer registry: specs declared once at registration, looked up by name."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from attnzoo.config import MixerConfig, suggest
from attnzoo.ops.masks import MASK_KINDS, Mask

if TYPE_CHECKING:
    from attnzoo.mixers.base import Mixer

PATTERNS = ("noncausal-self", "causal-self", "noncausal-cross", "causal-cross")
FAMILIES = ("softmax", "dense", "linear", "sparse", "conv", "recurrent", "hybrid", "graph", "other")
STATES = ("none", "constant", "growing")

# flops(config, batch, T, S, mask) -> FLOPs of one forward call; S is None for self patterns
FlopsFn = Callable[[Any, int, int, "int | None", "Mask | None"], int]

M = TypeVar("M", bound="type[Mixer]")


@dataclasses.dataclass(frozen=True)
class Paper:
    title: str
    year: int
    url: str
    code: str = ""


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """What a mechanism is and can do. Data, declared once at registration.

    Attributes:
        name: registry name (``build_mixer(name, ...)``).
        family: one of ``FAMILIES`` (``dense``: all pairs, no softmax normaliser, e.g. sigmoid).
        dims: 1 for sequences ``[B, T, D]``, 2 for channels-last images ``[B, h, w, C]``.
        patterns: subset of the four CAB patterns it supports.
        masks: mask kinds it accepts (``MASK_KINDS``).
        state: ``none`` / ``constant`` / ``growing`` streaming state.
        exact: computes softmax attention exactly.
        complexity: time complexity in words, e.g. ``"O(T·S·K)"``.
        paper: the paper and its official code.
        peer: what the peer/identity test compares against (nobody here wrote it).
        config: the config dataclass.
    """

    name: str
    family: str
    dims: int
    patterns: tuple[str, ...]
    masks: tuple[str, ...]
    state: str
    exact: bool
    complexity: str
    paper: Paper
    peer: str
    config: type[MixerConfig]
    flops_fn: FlopsFn = dataclasses.field(repr=False, compare=False)
    cls: type = dataclasses.field(repr=False, compare=False, default=object)

    def flops(
        self,
        config: MixerConfig,
        batch: int,
        T: int,
        S: int | None = None,
        mask: Mask | None = None,
    ) -> int:
        """Analytic FLOPs (2 per multiply-add) of one forward call with this config."""
        return int(self.flops_fn(config, batch, T, S, mask))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "dims": self.dims,
            "patterns": list(self.patterns),
            "masks": list(self.masks),
            "state": self.state,
            "exact": self.exact,
            "complexity": self.complexity,
            "paper": dataclasses.asdict(self.paper),
            "peer": self.peer,
            "config_keys": self.config.field_names(),
        }


_REGISTRY: dict[str, MixerSpec] = {}


def register_mixer(
    name: str,
    *,
    config: type[MixerConfig],
    family: str,
    dims: int,
    patterns: tuple[str, ...],
    masks: tuple[str, ...] = ("full",),
    state: str = "none",
    exact: bool = False,
    complexity: str,
    paper: Paper,
    peer: str,
    flops: FlopsFn,
) -> Callable[[M], M]:
    """Class decorator that declares a mixer's spec and adds it to the registry."""
    if name in _REGISTRY:
        raise ValueError(f"register_mixer: a mixer named {name!r} is already registered")
    if family not in FAMILIES:
        raise ValueError(
            f"register_mixer({name!r}): family must be one of {FAMILIES}, got {family!r}"
        )
    if dims not in (1, 2):
        raise ValueError(f"register_mixer({name!r}): dims must be 1 or 2, got {dims!r}")
    bad = [p for p in patterns if p not in PATTERNS]
    if not patterns or bad:
        raise ValueError(
            f"register_mixer({name!r}): patterns must be a non-empty subset of {PATTERNS}, got {patterns}"
        )
    bad = [m for m in masks if m not in MASK_KINDS]
    if bad:
        raise ValueError(f"register_mixer({name!r}): unknown mask kinds {bad}; known: {MASK_KINDS}")
    if state not in STATES:
        raise ValueError(f"register_mixer({name!r}): state must be one of {STATES}, got {state!r}")

    def deco(cls: M) -> M:
        spec = MixerSpec(
            name=name,
            family=family,
            dims=dims,
            patterns=tuple(patterns),
            masks=tuple(masks),
            state=state,
            exact=exact,
            complexity=complexity,
            paper=paper,
            peer=peer,
            config=config,
            flops_fn=flops,
            cls=cls,
        )
        config.mixer_name = name
        cls.spec = spec
        _REGISTRY[name] = spec
        return cls

    return deco


def unregister_mixer(name: str) -> None:
    """Remove a mixer (for tests that register temporary mixers)."""
    _REGISTRY.pop(name, None)


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
    dims: int | None = None,
    pattern: str | None = None,
    family: str | None = None,
    state: str | None = None,
    mask: str | None = None,
) -> list[MixerSpec]:
    """Registered specs, sorted by name, filtered by every argument that is not ``None``."""
    _ensure_loaded()
    for arg, value, allowed in (
        ("dims", dims, (1, 2)),
        ("pattern", pattern, PATTERNS),
        ("family", family, FAMILIES),
        ("state", state, STATES),
        ("mask", mask, MASK_KINDS),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"list_mixers: {arg} must be one of {allowed}, got {value!r}")
    out = []
    for spec in sorted(_REGISTRY.values(), key=lambda s: s.name):
        if dims is not None and spec.dims != dims:
            continue
        if pattern is not None and pattern not in spec.patterns:
            continue
        if family is not None and spec.family != family:
            continue
        if state is not None and spec.state != state:
            continue
        if mask is not None and mask not in spec.masks:
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
