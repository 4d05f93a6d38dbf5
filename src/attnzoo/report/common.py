"""HTML pieces shared by the report's pages (escaping, table cells, tables, times, the badges
of untrusted figures, the page record)."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable, Sequence
from typing import Any

from attnzoo import stats

MeanStd = tuple[float | None, float | None]


def esc(x: Any) -> str:
    return html.escape(str(x))


def td(x: Any, cls: str = "") -> str:
    return f'<td class="{cls}">{esc(x)}</td>' if cls else f"<td>{esc(x)}</td>"


def num(x: float | None, fmt: str) -> str:
    """A right-aligned number cell (``-`` for ``None``)."""
    return mean_std_cell((x, None), fmt)


def mean_std_cell(mean_std: MeanStd, fmt: str, cls: str = "") -> str:
    """``mean ± std`` (just ``mean`` when std is ``None``; ``-`` when mean is)."""
    mean, std = mean_std
    if mean is None:
        return '<td class="num na">-</td>'
    text = format(mean, fmt) + ("" if std is None else f" ± {format(std, fmt)}")
    return f'<td class="{f"num {cls}".strip()}">{esc(text)}</td>'


def table(head: Sequence[str], rows: Iterable[Sequence[str]], table_id: str) -> str:
    """Rows are pre-rendered ``<td>`` strings."""
    body = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{th}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def when(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def attr(x: Any) -> str:
    """Text for an HTML attribute value (quotes escaped)."""
    return html.escape(str(x), quote=True)


BADGES = {"noisy": "noisy", "few repeats": "few", "spread not recorded": "few",
          "unreliable": "noisy", "measurement error": "bad"}  # fmt: skip


def badge(label: str, title: str = "") -> str:
    """A small marker of an untrusted figure (``""`` for ``ok``); ``title`` says why."""
    if label == "ok":
        return ""
    tip = f' title="{attr(title)}"' if title else ""
    return f'<span class="badge {BADGES.get(label, "few")}"{tip}>{esc(label)}</span>'


def trust_legend() -> str:
    """The key to the badges, ``~`` and hollow markers (every page with timings shows it)."""
    return (
        '<p class="legend"><b>Reading the numbers.</b> Times are medians of repeated calls; '
        '<span class="range">[q1–q3]</span> is their interquartile range and n the number of '
        "timed calls. A figure prefixed <b>~</b> is not trusted: "
        f"{badge('noisy')} its interquartile range exceeds {stats.NOISY_SPREAD:.0%} of the "
        f"median; {badge('few repeats')} fewer than {stats.MIN_REPEATS} calls (no spread can "
        f"be measured); {badge('spread not recorded')} a row stored before quantiles were "
        "kept. In plots such points are hollow, and bars show the interquartile range. "
        f"{badge('measurement error')} marks a rate above the machine's own GEMM rate, which "
        "no mechanism can reach: it is not a result.</p>"
    )


@dataclasses.dataclass(frozen=True)
class Page:
    """One HTML page of the report: its file name, title, one line for the contents and body."""

    file: str
    title: str
    blurb: str
    body: str
