"""Frozen, validated, JSON-round-trippable mixer configurations.

Every mixer has one config dataclass derived from :class:`MixerConfig`. Constructing it checks
each field's type against its annotation (``bool`` is not accepted where an ``int`` is meant),
then the limits each field declares with :func:`limit` (``chunk_size: int = limit(64, ge=1)``),
then every ``validate()`` along the class hierarchy, base classes first, for constraints that
relate fields (each class checks what it adds; none calls ``super().validate()``). Unknown keys
are rejected with the closest valid names suggested.

Every field is described in the ``Attributes:`` section of the docstring of its class or of a
subclass (``name: text``, continuation lines indented further; ``a, b: text`` describes two);
:meth:`MixerConfig.describe` reads them for ``attnzoo info`` and a test requires one per field.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from attnzoo.text import suggest

__all__ = ["FieldInfo", "MixerConfig", "limit", "suggest"]

C = TypeVar("C", bound="MixerConfig")
MISSING: Any = dataclasses.MISSING


def limit(
    default: Any = MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    odd: bool = False,
    finite: bool = False,
) -> Any:
    """A config field with declared value limits, checked on construction (``None`` passes when
    the annotation allows it). Errors read ``"<mixer>: <field> must be >= 1, got 0"``.

    Args:
        default: the field's default.
        ge, gt, le: the value must be ``>= ge``, ``> gt``, ``<= le``.
        odd: the value must be odd (kernels with same-size padding).
        finite: the value must be a finite number.
    """
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    if odd:
        limits["odd"] = True
    if finite:
        limits["finite"] = True
    return dataclasses.field(default=default, metadata={"limits": limits})


def _limit_error(
    owner: str, name: str, value: Any, limits: dict[str, Any], optional: bool
) -> str | None:
    bounds = [
        (op, limits[key]) for key, op in (("ge", ">="), ("gt", ">"), ("le", "<=")) if key in limits
    ]
    ok = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b}
    finite = "finite" not in limits or math.isfinite(value)
    fine = (
        finite
        and all(ok[op](value, b) for op, b in bounds)
        and ("odd" not in limits or value % 2 == 1)
    )
    if fine:
        return None
    text = " and ".join(f"{op} {b}" for op, b in bounds)
    if "odd" in limits:
        positive = ("ge", 1) in limits.items()
        text = "a positive odd int (same-size padding)" if positive else f"an odd int {text}"
    elif "finite" in limits:
        text = "a finite float" + (f" {text}" if text else "") + (" or None" if optional else "")
    return f"{owner}: {name} must be {text.strip()}, got {value!r}"


def limit_text(limits: dict[str, Any]) -> str:
    """``">= 1"``, ``"> 0, finite"``, ``"odd"``: a field's declared limits in words."""
    words = [
        f"{op} {limits[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<=")) if k in limits
    ]
    words += [k for k in ("odd", "finite") if k in limits]
    return ", ".join(words)


_ENTRY = re.compile(r"(\w+(?:\s*,\s*\w+)*)\s*:\s*(.*)")
_ROLE = re.compile(r":\w+:`~?([^`]+)`")  # :func:`~a.b` -> a.b


def plain(text: str) -> str:
    """Docstring text for a terminal: ``code`` and :role:`target` lose their markup."""
    return _ROLE.sub(r"\1", text).replace("``", "")


def attributes(klass: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``klass``'s own docstring: ``{field: one-line text}``."""
    lines = inspect.cleandoc(vars(klass).get("__doc__") or "").splitlines()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line.strip() != "Attributes:":
            continue
        indent, names = None, []
        for entry in lines[i + 1 :]:
            if not entry.strip():
                break
            depth = len(entry) - len(entry.lstrip())
            indent = depth if indent is None else indent
            if depth < indent:
                break
            if depth > indent and names:  # a continuation line
                for n in names:
                    out[n] += " " + entry.strip()
                continue
            match = _ENTRY.fullmatch(entry.strip())
            if match is None:
                break
            names = [n.strip() for n in match.group(1).split(",")]
            for n in names:
                out[n] = match.group(2).strip()
    return out


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One config key as ``attnzoo info`` shows it.

    Attributes:
        name: the key.
        type: its annotation in words (``int | None``, ``'auto' | 'reference'``).
        default: ``repr`` of the default, or ``"required"``.
        limits: the declared limits in words (``">= 1"``), or ``""``.
        description: one line from the ``Attributes:`` sections without reST markup, or
            ``""`` when none has it.
    """

    name: str
    type: str
    default: str
    limits: str
    description: str


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        return f"tuple[{_type_name(args[0])}, ...]" if args else "tuple"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    """True when ``value`` is an instance of the (simple) annotation ``tp``."""
    if tp is Any:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(
            _matches(v, a) for v, a in zip(value, args, strict=True)
        )
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _coerce(value: Any, tp: Any) -> Any:
    """Normalise JSON-ish values: lists become tuples, ints become floats for float fields."""
    if isinstance(value, list):
        value = tuple(value)
    if _matches(value, float) and not isinstance(value, float):
        float_allowed = tp is float or (
            get_origin(tp) in (Union, types.UnionType)
            and float in get_args(tp)
            and int not in get_args(tp)
        )
        if float_allowed:
            return float(value)
    return value


@dataclasses.dataclass(frozen=True)
class MixerConfig:
    """Base of every mixer config.

    Attributes:
        d_model: model width (1-D mixers) or channel count ``C`` (2-D mixers).
        causal: selects the causal patterns (``causal-self`` / ``causal-cross``).
    """

    d_model: int = limit(ge=1)
    causal: bool = False

    mixer_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            tp = hints[f.name]
            value = _coerce(getattr(self, f.name), tp)
            object.__setattr__(self, f.name, value)
            if not _matches(value, tp):
                raise TypeError(
                    f"{self._owner()}: config '{f.name}' must be {_type_name(tp)}, "
                    f"got {value!r} ({type(value).__name__})"
                )
            limits = f.metadata.get("limits")
            if limits and value is not None:
                error = _limit_error(self._owner(), f.name, value, limits, _matches(None, tp))
                if error:
                    raise ValueError(error)
        for klass in reversed(type(self).__mro__):
            own = vars(klass).get("validate")
            if own is not None:
                own(self)

    def _owner(self) -> str:
        return self.mixer_name or type(self).__name__

    def validate(self) -> None:
        """Checks that relate fields (declared limits are checked before). Each class checks
        the fields it adds and raises ``ValueError``; the base classes' run first, so an
        override does not call ``super().validate()``."""

    @classmethod
    def limits(cls) -> dict[str, dict[str, Any]]:
        """The declared limits per field (``{"chunk_size": {"ge": 1}}``)."""
        return {
            f.name: dict(f.metadata["limits"])
            for f in dataclasses.fields(cls)
            if f.metadata.get("limits")
        }

    @classmethod
    def describe(cls) -> list[FieldInfo]:
        """Every field with its type, default, limits and description; the description comes
        from the ``Attributes:`` section of the nearest class along the MRO that has one for it
        (a subclass may describe an inherited field again, as it may change its default)."""
        hints = get_type_hints(cls)
        sections = [attributes(klass) for klass in cls.__mro__]
        out = []
        for f in dataclasses.fields(cls):
            text = plain(next((sec[f.name] for sec in sections if sec.get(f.name)), ""))
            if f.default is not MISSING:
                default = repr(f.default)
            elif f.default_factory is not MISSING:
                default = repr(f.default_factory())
            else:
                default = "required"
            limits = limit_text(f.metadata.get("limits", {}))
            out.append(FieldInfo(f.name, _type_name(hints[f.name]), default, limits, text))
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls: type[C], **kwargs: Any) -> C:
        """Build from keyword arguments, rejecting unknown keys with a suggestion."""
        names = cls.field_names()
        for key in kwargs:
            if key not in names:
                owner = cls.mixer_name or cls.__name__
                raise TypeError(
                    f"{owner}: unknown config key '{key}'{suggest(key, names)}; "
                    f"valid keys: {', '.join(names)}"
                )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        """JSON text ``{"mixer": name, "config": {...}}``; see :func:`attnzoo.mixer_from_json`."""
        return json.dumps({"mixer": self.mixer_name, "config": self.to_dict()}, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        data = json.loads(text)
        if not isinstance(data, dict) or "config" not in data:
            raise ValueError(f"config JSON must be an object with a 'config' key, got {text!r}")
        if cls.mixer_name and data.get("mixer") != cls.mixer_name:
            raise ValueError(
                f"config JSON is for mixer {data.get('mixer')!r}, not {cls.mixer_name!r}"
            )
        return cls.from_kwargs(**data["config"])

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_kwargs(**{**self.to_dict(), **changes})
