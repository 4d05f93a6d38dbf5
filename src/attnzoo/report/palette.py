"""The one colour and marker of each mechanism in every plot of a report (and its HTML swatch).

A mechanism's slot is its rank among the sorted names the report knows (every mechanism any run
of the store recorded) of its group, its layout: so it is the same in every plot of every page,
does not depend on which mechanisms a plot happens to show, and mechanisms that share plots
(one layout) share no colour while a group has at most 8. Slot ``i`` takes colour ``i mod 8`` and
marker ``i mod 9``: the two counts are coprime, so the first 72 names of a group all get distinct
pairs.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping

# colour-blind-safe (Okabe-Ito, with a darker yellow that reads on white)
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999933")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")


@dataclasses.dataclass(frozen=True)
class Style:
    """How one mechanism is drawn: a matplotlib colour and marker."""

    color: str
    marker: str


class Palette:
    """Styles by name: a name's slot is its rank among the sorted ``names`` of its group
    (``groups[name]``; names without one share a group); a name outside ``names``
    gets the next free slot the first time it is asked for (and keeps it)."""

    def __init__(self, names: Iterable[str], groups: Mapping[str, str] | None = None) -> None:
        by_group: dict[str, list[str]] = defaultdict(list)
        for name in sorted(set(names)):
            by_group[(groups or {}).get(name, "")].append(name)
        self._slots = {name: i for members in by_group.values() for i, name in enumerate(members)}

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def slot(self, name: str) -> int:
        return self._slots.setdefault(name, len(self._slots))

    def style(self, name: str) -> Style:
        i = self.slot(name)
        return Style(COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)])

    def swatch(self, name: str) -> str:
        """A small HTML square in the name's colour (the tables' key to the plots)."""
        color = self.style(name).color
        return f'<span class="swatch" style="background:{color}" aria-hidden="true"></span>'
