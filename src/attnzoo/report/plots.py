"""Log-log line plots rendered to inline SVG with matplotlib (Agg; no files, no network)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter  # noqa: E402

Series = tuple[str, Sequence[tuple[float, float]]]  # (label, [(x, y), ...])

# distinguishable colours and markers (colour-blind-safe palette first)
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


LEGEND_ROWS = 16  # legend entries per column that fit the figure's height


def loglog_svg(title: str, xlabel: str, ylabel: str, series: Sequence[Series]) -> str:
    """An SVG ``<svg>`` element: one line per series, both axes logarithmic, with a legend."""
    # the legend sits right of the axes: up to ROWS entries per column, a wider figure for more
    n = sum(1 for _, pts in series if any(x and y and x > 0 and y > 0 for x, y in pts))
    ncol = max(1, -(-n // LEGEND_ROWS))
    fig, ax = plt.subplots(figsize=(7.4 + 2.2 * (ncol - 1), 3.9), dpi=100)
    plotted = 0
    for i, (label, pts) in enumerate(series):
        pts = sorted((x, y) for x, y in pts if x and y and x > 0 and y > 0)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(
            xs, ys, label=label, color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)],
            linestyle="-" if i < len(COLORS) else "--", linewidth=1.5, markersize=4,
        )  # fmt: skip
        plotted += 1
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    xs_all: list[float] = []
    measured = {x for _, pts in series for x, y in pts if x and y and x > 0 and y > 0}
    for x in sorted(measured, reverse=True):
        # 2-D grids give near-duplicate lengths (2025 next to 2048): label the rounder, larger one
        if not xs_all or x * 1.1 < xs_all[-1]:
            xs_all.append(x)
    xs_all.reverse()
    if xs_all:  # ticks at the measured lengths, written as plain numbers
        ax.xaxis.set_major_locator(FixedLocator(xs_all))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    if plotted:
        ax.legend(
            fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, ncol=ncol
        )
    else:
        ax.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.StringIO()
    # ids inside each SVG are salted with its title so inlined plots never share an id
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": title}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE (it points at an external DTD)
    # label the figure for assistive technology; titles are the only text a screen reader needs
    return re.sub(r"<svg ", f'<svg role="img" aria-label="{_attr(title)}" ', svg, count=1)


def _short(v: float) -> str:
    v = int(round(v))
    return f"{v // 1024}k" if v >= 1024 and v % 1024 == 0 else str(v)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
