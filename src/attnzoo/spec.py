"""What a block is, as data: layouts, roles, patterns and the :class:`MixerSpec`. No torch.

The report, the README generator and the store read these without importing torch; the
registry (:mod:`attnzoo.registry`) builds specs from them at registration.

Layouts (channels last, ``B`` batch first):

- ``tokens`` ``[B, T, D]``: a sequence (or any set of tokens);
- ``grid2d`` ``[B, h, w, C]``: an image or feature map;
- ``grid3d`` ``[B, d, h, w, C]``: a volume (or bands x image, video frames x image).

Flattening a grid lists its tokens in row-major order (the last spatial axis fastest), which is
the order attention maps use for their query and key axes.

Roles: ``mixer`` (``x -> x``; cross patterns take an optional ``context``), ``fusion``
(``x, context -> x``; the context is required and may have its own layout, size and width) and
``pooling`` (``x -> [B, D]``). :func:`register_role` adds more.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attnzoo.declarations import (  # noqa: F401  (re-exported: part of the spec's vocabulary)
    BFLOAT16,
    EXPORT_STEPS,
    FLOAT16,
    LOW_DTYPES,
    ExportSupport,
    LowPrecision,
    Tolerance,
)

if TYPE_CHECKING:
    from torch import Tensor

PATTERNS = ("noncausal-self", "causal-self", "noncausal-cross", "causal-cross")
FAMILIES = ("softmax", "dense", "linear", "sparse", "conv", "recurrent", "hybrid", "graph", "other")
STATES = ("none", "constant", "growing")


@dataclasses.dataclass(frozen=True)
class Layout:
    """A tensor layout: batch first, ``axes`` of tokens, channels last.

    Attributes:
        name: ``tokens``, ``grid2d`` or ``grid3d``.
        axes: names of the token axes (``("T",)``, ``("h", "w")``, ``("d", "h", "w")``).
        channels: name of the last axis (``D`` for tokens, ``C`` for grids).
        what: what such a tensor usually holds, for messages and docs.
    """

    name: str
    axes: tuple[str, ...]
    channels: str
    what: str

    @property
    def rank(self) -> int:
        """Tensor rank: batch + token axes + channels."""
        return len(self.axes) + 2

    @property
    def shape(self) -> str:
        """``"[B, h, w, C]"``."""
        return "[" + ", ".join(("B", *self.axes, self.channels)) + "]"

    def sizes_for(self, tokens: int) -> tuple[int, ...]:
        """The most even sizes of the token axes with about ``tokens`` tokens (a square or cube
        grid for grids; the bench measures grids at the nearest such size)."""
        if tokens < 1:
            raise ValueError(f"{self.name}: tokens must be >= 1, got {tokens}")
        side = max(1, round(tokens ** (1.0 / len(self.axes))))
        return (side,) * len(self.axes)

    def sizes(self, x: Tensor) -> tuple[int, ...]:
        """The token axes' sizes of ``x`` (``(T,)``, ``(h, w)``, ``(d, h, w)``)."""
        return tuple(x.shape[1:-1])

    def tokens(self, sizes: Sequence[int]) -> int:
        return math.prod(sizes)

    def example(
        self,
        batch: int,
        sizes: Sequence[int],
        channels: int,
        *,
        generator: Any = None,
        dtype: Any = None,
        device: Any = None,
    ) -> Tensor:
        """A standard-normal tensor of this layout: ``[B, *sizes, channels]``."""
        import torch

        sizes = tuple(sizes)
        if len(sizes) != len(self.axes):
            raise ValueError(
                f"{self.name}: sizes must give {len(self.axes)} axes {self.axes}, got {sizes}"
            )
        return torch.randn(batch, *sizes, channels, generator=generator, dtype=dtype, device=device)

    def flatten(self, x: Tensor) -> Tensor:
        """``[B, *sizes, C] -> [B, N, C]`` with ``N = prod(sizes)`` in row-major order."""
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def unflatten(self, t: Tensor, sizes: Sequence[int]) -> Tensor:
        """``[B, N, C] -> [B, *sizes, C]`` (the inverse of :meth:`flatten`)."""
        return t.reshape(t.shape[0], *sizes, t.shape[-1])

    def check(self, owner: str, arg: str, x: Any, width: int | None) -> None:
        """Raise ``TypeError``/``ValueError`` naming ``owner`` and ``arg`` unless ``x`` is a
        floating-point tensor of this layout with last axis ``width`` (any width if ``None``)."""
        shape = getattr(x, "shape", None)
        if shape is None or not hasattr(x, "is_floating_point"):
            raise TypeError(f"{owner}: {arg} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != self.rank:
            last = " (channels-last)" if self.channels == "C" else ""
            raise ValueError(f"{owner}: {arg} must be {self.shape}{last}, got shape {tuple(shape)}")
        if width is not None and shape[-1] != width:
            raise ValueError(
                f"{owner}: {arg} last dim must be {width} (the mixer's width), got {shape[-1]}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{owner}: {arg} must be a floating-point tensor, got dtype {x.dtype}")


TOKENS = Layout("tokens", ("T",), "D", "a sequence of tokens")
GRID2D = Layout("grid2d", ("h", "w"), "C", "a channels-last image or feature map")
GRID3D = Layout("grid3d", ("d", "h", "w"), "C", "a channels-last volume (or frames / bands)")
LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (TOKENS, GRID2D, GRID3D)}
# the first version's ``dims``: still accepted by list_mixers(dims=...) and MixerSpec.dims
DIMS = {"tokens": 1, "grid2d": 2, "grid3d": 3}


def layout(name: str) -> Layout:
    """The layout called ``name``; unknown names raise ``ValueError`` listing the known ones."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


@dataclasses.dataclass(frozen=True)
class Role:
    """What a block does with its inputs.

    Attributes:
        name: ``mixer``, ``fusion``, ``pooling`` (or one added by :func:`register_role`).
        signature: the call in words, e.g. ``"x, context -> x"``.
        context: ``"optional"`` (cross patterns pass it), ``"required"`` or ``"none"``.
        pooled: the output is ``[B, D]`` (one vector per sample) instead of ``x``'s shape.
        patterns: the CAB patterns a block of this role may declare.
        default_patterns: what the registry assumes when a block declares none.
    """

    name: str
    signature: str
    context: str
    pooled: bool
    patterns: tuple[str, ...]
    default_patterns: tuple[str, ...]

    def output_shape(self, x_shape: Sequence[int], width: int) -> tuple[int, ...]:
        """The output shape for an input of ``x_shape`` and a block of width ``width``."""
        return (x_shape[0], width) if self.pooled else tuple(x_shape)


ROLES: dict[str, Role] = {}


def register_role(role: Role) -> Role:
    """Add a role (the next issues' relation, pyramid or memory blocks)."""
    if role.name in ROLES:
        raise ValueError(f"register_role: a role named {role.name!r} is already registered")
    if role.context not in ("optional", "required", "none"):
        raise ValueError(
            f"register_role({role.name!r}): context must be 'optional', 'required' or 'none', "
            f"got {role.context!r}"
        )
    ROLES[role.name] = role
    return role


SELF = ("noncausal-self", "causal-self")
CROSS = ("noncausal-cross", "causal-cross")
register_role(Role("mixer", "x [, context] -> x", "optional", False, PATTERNS, ("noncausal-self",)))
register_role(Role("fusion", "x, context -> x", "required", False, CROSS, ("noncausal-cross",)))
register_role(Role("pooling", "x [, context] -> [B, D]", "optional", True, PATTERNS, SELF[:1]))


def role(name: str) -> Role:
    if name not in ROLES:
        raise ValueError(f"unknown role {name!r}; known: {', '.join(ROLES)}")
    return ROLES[name]


@dataclasses.dataclass(frozen=True)
class Paper:
    title: str
    year: int
    url: str
    code: str = ""


# flops(config, batch, T, S, mask) -> FLOPs of one forward call; T and S count tokens (a grid's
# h*w), S is None for self patterns
FlopsFn = Callable[[Any, int, int, "int | None", Any], int]


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """What a mechanism is and can do. Data, declared once at registration.

    Attributes:
        name: registry name (``build_mixer(name, ...)``).
        family: one of ``FAMILIES`` (``dense``: all pairs, no softmax normaliser, e.g. sigmoid).
        layout: the input layout, a key of ``LAYOUTS``.
        context_layout: the layout of ``context`` (its sizes and width may differ from ``x``'s),
            or ``None`` for a block without cross patterns.
        role: a key of ``ROLES``.
        patterns: subset of the four CAB patterns it supports.
        masks: mask kinds it accepts (``attnzoo.ops.masks.MASK_KINDS``).
        state: ``none`` / ``constant`` / ``growing`` streaming state.
        exact: computes softmax attention exactly.
        attention_maps: ``Mixer.attention_maps(x)`` returns its attention weights.
        complexity: time complexity in words, e.g. ``"O(T·S·K)"``.
        paper: the paper and its official code.
        peer: what the peer/identity test compares against (nobody here wrote it).
        config: the config dataclass.
        low_precision: what it does in bfloat16 and float16 (:class:`LowPrecision`): the
            tolerance against float32 it meets, or why it refuses, per dtype, and the impls
            that refuse both.
        export: whether it exports with ``torch.export`` (static and dynamic sizes) and to ONNX
            (:class:`ExportSupport`): the reason per step that does not work.
    """

    name: str
    family: str
    layout: str
    context_layout: str | None
    role: str
    patterns: tuple[str, ...]
    masks: tuple[str, ...]
    state: str
    exact: bool
    attention_maps: bool
    complexity: str
    paper: Paper
    peer: str
    config: type
    flops_fn: FlopsFn = dataclasses.field(repr=False, compare=False)
    cls: type = dataclasses.field(repr=False, compare=False, default=object)
    low_precision: LowPrecision = LowPrecision()
    export: ExportSupport = ExportSupport()

    @property
    def dims(self) -> int:
        """The first version's ``dims`` (1 tokens, 2 grid2d, 3 grid3d); prefer :attr:`layout`."""
        return DIMS[self.layout]

    @property
    def input_layout(self) -> Layout:
        return LAYOUTS[self.layout]

    @property
    def role_info(self) -> Role:
        return ROLES[self.role]

    @property
    def impls(self) -> tuple[str, ...]:
        """The ``impl`` values the config accepts (``auto`` first when present); every block has
        ``reference`` and at least one fast path."""
        import typing

        tp = typing.get_type_hints(self.config).get("impl")
        if tp is None or typing.get_origin(tp) is not typing.Literal:
            return ()
        return tuple(typing.get_args(tp))

    @property
    def fast_impls(self) -> tuple[str, ...]:
        """The paths that are checked against ``reference`` (every impl but it and ``auto``)."""
        return tuple(i for i in self.impls if i not in ("auto", "reference"))

    def masks_for(self, pattern: str) -> tuple[str, ...]:
        """The mask kinds a call in ``pattern`` can use (``()`` for a pattern the block does not
        support), in the order of :attr:`masks`.

        ``Mixer.check_mask`` takes a mask whose kinds (``attnzoo.Mask.kinds``) are all declared
        and whose ``causal`` is the block's. A non-causal mask is ``full``, a window (with
        ``global`` tokens or not), documents or both; a causal one is ``causal`` (with a window,
        global tokens, documents), ``prefix-lm`` or ``block-causal`` (either with documents),
        ``shared-question`` or ``causal-blockwise``. ``qk-sparse`` and ``hash-sparse`` filter any
        of them. So ``full`` is never usable in a causal pattern and ``causal`` never in a
        non-causal one."""
        if pattern not in self.patterns:
            return ()
        declared = set(self.masks)
        filters = declared & {"qk-sparse", "hash-sparse"}
        if pattern.startswith("causal"):
            bases = declared & {"causal", "prefix-lm", "block-causal", "shared-question",
                                "causal-blockwise"}  # fmt: skip
            usable = set(bases)
            if "causal" in bases and "sliding-window" in declared:
                usable.add("sliding-window")
                usable |= declared & {"global"}
            if bases & {"causal", "prefix-lm", "block-causal"} and "document" in declared:
                usable.add("document")
            if bases:
                usable |= filters
        else:
            usable = declared & {"full", "sliding-window", "document"} | filters
            if "sliding-window" in declared:
                usable |= declared & {"global"}
        return tuple(k for k in self.masks if k in usable)

    def flops(self, config: Any, batch: int, T: int, S: int | None = None, mask: Any = None) -> int:
        """Analytic FLOPs (2 per multiply-add) of one forward call with this config."""
        return int(self.flops_fn(config, batch, T, S, mask))

    def low_precision_refusal(self, dtype: str, impl: str | None = None) -> str | None:
        """The ``TypeError`` message of a call in ``torch.<dtype>`` (``"bfloat16"`` or
        ``"float16"``) with ``impl``, or ``None`` when :attr:`low_precision` says it runs."""
        lp = self.low_precision
        entry = lp.entry(dtype)
        if isinstance(entry, str):
            others = [f"torch.{d}" for d in LOW_DTYPES if d != dtype and lp.runs(d)]
            supported = ", ".join(["torch.float32", "torch.float64", *others])
            refused = f"{self.name} does not run in torch.{dtype}: {entry}"
            return f"{refused}; supported dtypes: {supported}"
        if impl in lp.refused_impls:
            ok = ", ".join(repr(i) for i in self.impls if i not in lp.refused_impls)
            return (
                f"{self.name}: impl={impl!r} takes torch.float32 or torch.float64, got "
                f"torch.{dtype}; impls that run in torch.{dtype}: {ok}"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "layout": self.layout,
            "context_layout": self.context_layout,
            "role": self.role,
            "dims": self.dims,
            "patterns": list(self.patterns),
            "masks": list(self.masks),
            "state": self.state,
            "exact": self.exact,
            "attention_maps": self.attention_maps,
            "impls": list(self.impls),
            "complexity": self.complexity,
            "paper": dataclasses.asdict(self.paper),
            "peer": self.peer,
            "config_keys": [f.name for f in dataclasses.fields(self.config)],
            "low_precision": self.low_precision.to_dict(),
            "export": self.export.to_dict(),
        }


def stored_layout(spec: dict[str, Any]) -> str:
    """The layout of a stored spec dict (runs recorded before layouts only say ``dims``)."""
    if spec.get("layout"):
        return str(spec["layout"])
    by_dims = {v: k for k, v in DIMS.items()}
    return by_dims.get(int(spec.get("dims", 1)), "tokens")
