"""HTML pieces shared by the report's sections (escaping, table cells, tables, times)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

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
