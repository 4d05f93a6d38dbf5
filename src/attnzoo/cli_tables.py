"""Terminal tables for the CLI that stay readable from an 80-column terminal up.

rich's default table squeezes every column to fit the terminal and cuts cells with an ellipsis:
at 80 columns ``attnzoo list`` showed two mechanisms as ``dav…`` and ``attnzoo results`` showed
a time of 15.1xx ms as ``15.1…``. Here numbers and names are never cut: right-justified columns
(numbers) keep their full width, text columns fold onto further lines only if they must, and
the box is the compact one (a one-space gap, a rule under the header).

When stdout is not a terminal (a pipe, a file, a test's runner) a table is CSV instead: the title
and caption as ``# `` lines, then the header and the rows with every cell whole, so that ``grep``
and ``cut`` see full rows (a piped table used to split words at 80 columns). Print with
:func:`show` to keep each row on one line however long; ``console.print`` of a :class:`Grid`
gives the same CSV but wraps a row longer than the console's width.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Sequence

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

import attnzoo as az
from attnzoo.registry import MixerSpec


def _width(cell: str) -> int:
    return Text.from_markup(cell).cell_len  # markup such as [green]ok[/] takes no room


def _fits(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """Each column's natural width: its widest header line or cell."""
    return [
        max([*map(len, head.split("\n")), *(_width(r[i]) for r in rows)])
        for i, head in enumerate(header)
    ]


class Grid:
    """A rich table on a terminal, CSV elsewhere (see the module docstring).

    Attributes:
        table: the terminal table.
        header: the CSV's column names (a multi-line name joins its lines).
        rows: the CSV's cells, markup allowed (the CSV has the plain text).
        title, caption: the CSV's first and last line (after ``# ``), if any.
    """

    def __init__(
        self,
        table: Table,
        header: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str | None = None,
        caption: str | None = None,
    ) -> None:
        self.table, self.header, self.rows = table, list(header), [list(r) for r in rows]
        self.title, self.caption = title, caption

    def csv(self) -> str:
        """``# title``, the header, the rows and ``# caption``, one line each."""
        buf = io.StringIO()
        if self.title:
            buf.write(f"# {self.title}\n")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([" ".join(h.split()).replace(" /", "/") for h in self.header])
        w.writerows([[Text.from_markup(c).plain for c in row] for row in self.rows])
        if self.caption:
            buf.write(f"# {self.caption}\n")
        return buf.getvalue()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if console.is_terminal:
            yield self.table
        else:
            yield Text(self.csv().rstrip("\n"))


def show(console: Console, grid_: Grid) -> None:
    """Print ``grid_``: the table on a terminal, else CSV with every row on one line."""
    if console.is_terminal:
        console.print(grid_.table)
    else:
        console.print(grid_.csv(), end="", soft_wrap=True, markup=False, highlight=False)


def grid(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[str] = (),
    center: Collection[str] = (),
    keep: Collection[str] = (),
    caption: str | None = None,
) -> Grid:
    """A table whose ``right`` (number), ``center`` and ``keep`` columns are never cut or wrapped;
    the other columns fold onto further lines when the terminal is too narrow for them (CSV when
    not printed to a terminal: :class:`Grid`)."""
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=0)
    for head, fit in zip(header, _fits(header, rows), strict=True):
        whole = head in right or head in center or head in keep
        justify = "right" if head in right else "center" if head in center else "left"
        table.add_column(
            head, justify=justify, no_wrap=whole, overflow="fold", min_width=fit if whole else None
        )
    for row in rows:
        table.add_row(*row)
    return Grid(table, header, rows, title=title, caption=caption)


def mechanism_table(specs: Sequence[MixerSpec], *, width: int) -> Grid:
    """The ``list`` table: names, marks and years whole; the paper title takes what width is
    left (cut with an ellipsis, or left out when under 20 columns are left: ``attnzoo info NAME``
    shows it). The CSV always has the whole title."""
    marks = [p.replace("noncausal-", "").replace("-", "\n") for p in az.PATTERNS]
    # the role only when the listed blocks do not all share one (80 columns are tight)
    roles = len({s.role for s in specs}) > 1
    header = ["name", "family", "layout", *["role"] * roles, *marks, "state", "exact", "year"]
    rows = [
        [s.name, s.family, s.layout, *[s.role] * roles]
        + ["yes" if p in s.patterns else "-" for p in az.PATTERNS]
        + [s.state, "yes" if s.exact else "no", str(s.paper.year)]
        for s in specs
    ]
    paper_width = width - sum(_fits(header, rows)) - len(header) - 2  # gaps and the two edges
    with_paper = paper_width >= 20
    title = (
        f"attnzoo mechanisms ({len(specs)}"
        + ("" if roles or not specs else f", role {specs[0].role}")
        + ")"
    )
    caption = "yes = supported; self and cross are non-causal"
    table = grid(
        title,
        header + ["paper"] * with_paper,
        [row + [s.paper.title] * with_paper for s, row in zip(specs, rows, strict=True)],
        center=marks,
        keep=header,
        caption=caption + ("" if with_paper else "; paper: attnzoo info NAME"),
    ).table
    table.columns[0].style = "bold"
    if with_paper:
        paper = table.columns[-1]
        paper.no_wrap, paper.overflow, paper.max_width = True, "ellipsis", paper_width
    whole = [row + [s.paper.title] for s, row in zip(specs, rows, strict=True)]
    return Grid(table, header + ["paper"], whole, title=title, caption=caption)
