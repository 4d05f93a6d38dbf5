"""Message helpers shared by every layer (a leaf: it imports nothing from the package)."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping, Sequence

T = typing.TypeVar("T")


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choices, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def pick(registry: Mapping[str, T], names: Sequence[str] | None, arg: str, what: str) -> list[T]:
    """The entries of ``registry`` called ``names`` (every entry when ``None``), in that order; an
    unknown name raises ``ValueError``: ``"<arg>: unknown <what> 'x' (did you mean 'y'?); known:
    ..."``."""
    if names is None:
        return list(registry.values())
    out = []
    for n in names:
        if n not in registry:
            raise ValueError(
                f"{arg}: unknown {what} {n!r}{suggest(n, list(registry))}; known: "
                + ", ".join(registry)
            )
        out.append(registry[n])
    return out


def add(registry: dict[str, T], name: str, entry: T, what: str) -> T:
    """``registry[name] = entry``, refusing a name already there (``"<what>: 'x' is already
    registered"``); returns ``entry``."""
    if name in registry:
        raise ValueError(f"{what}: {name!r} is already registered")
    registry[name] = entry
    return entry


def fmt_bytes(n: float | None) -> str:
    """``16.2 MiB``, ``5.69 GiB``, ``800 B``; ``-`` for unknown."""
    if n is None:
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
