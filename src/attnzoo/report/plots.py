"""Plots rendered to inline SVG with matplotlib (Agg; no files, no network): log-log lines for
the speed sections, multi-panel lines with error bars for the quality section."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter  # noqa: E402

Series = tuple[str, Sequence[tuple[float, float]]]  # (label, [(x, y), ...])
Point = tuple[float, float, float | None]  # (x, y, half-height of the error bar or None)
PointSeries = tuple[str, Sequence[Point]]  # (label, [(x, y, err), ...])
Panel = tuple[str, Sequence[PointSeries]]  # (panel title, its series)
X_SCALES = ("linear", "log", "log2")
Y_SCALES = ("linear", "log")
PANELS_PER_ROW = 3

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
    return _to_svg(fig, title)


def panels_svg(
    title: str,
    xlabel: str,
    ylabel: str,
    panels: Sequence[Panel],
    *,
    xscale: str = "linear",
    yscale: str = "linear",
    ylim: tuple[float, float] | None = None,
    connect: bool = True,
    label_points: bool = False,
    slots: Mapping[str, int] | None = None,
    dashes: Mapping[str, str] | None = None,
) -> str:
    """An SVG ``<svg>`` element: one axes per panel (up to three a row) and one shared legend.

    A label keeps its colour and marker in every panel, so a mechanism reads the same across
    panels. Points with an error (not ``None``) get an error bar of that half-height.

    Args:
        title: the figure's title (also its accessible label and the salt of its SVG ids).
        xlabel: x-axis label. ylabel: y-axis label (of every panel).
        panels: ``(panel title, [(label, [(x, y, err), ...]), ...])`` per panel.
        xscale: ``linear``, ``log`` (base 10) or ``log2`` (ticks at the measured x values,
            written as plain numbers: model widths, sequence lengths).
        yscale: ``linear`` or ``log``. Points that a log axis cannot show (<= 0) are dropped.
        ylim: fixed y limits (e.g. ``(0, 1.02)`` for accuracies), else matplotlib's.
        connect: join a series' points with a line (else markers only).
        label_points: write each series' label next to its last point.
        slots: a label's colour and marker slot (so several figures colour a mechanism alike);
            labels not in it take the next free slots in order of first appearance.
        dashes: a label's matplotlib line style (e.g. ``"--"``), else solid.

    Shapes:
        panels: ``P`` panels of ``N_p`` series of ``M`` points each -> one figure, ``P`` axes.
    """
    if xscale not in X_SCALES:
        raise ValueError(f"panels_svg: xscale must be one of {X_SCALES}, got {xscale!r}")
    if yscale not in Y_SCALES:
        raise ValueError(f"panels_svg: yscale must be one of {Y_SCALES}, got {yscale!r}")
    if not panels:
        raise ValueError(f"panels_svg: panels must hold at least one panel, got {panels!r}")
    index = dict(slots or {})  # label -> colour/marker slot
    for _, series in panels:
        for label, _ in series:
            index.setdefault(label, max(index.values(), default=-1) + 1)
    shown = {label for _, series in panels for label, _ in series}
    ncols = min(PANELS_PER_ROW, len(panels))
    nrows = -(-len(panels) // ncols)
    legend_cols = max(1, -(-len(shown) // LEGEND_ROWS))
    legend_w = 1.9 * legend_cols if shown else 0.0
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.1 * ncols + legend_w, 3.3 * nrows + 0.4), dpi=100, squeeze=False
    )
    handles: dict[str, Any] = {}
    for ax, (panel_title, series) in zip(axes.flat, panels, strict=False):
        xs_seen: set[float] = set()
        for label, pts in series:
            kept = sorted(p for p in pts if _showable(p, xscale, yscale))
            if not kept:
                continue
            i = index[label]
            xs = [p[0] for p in kept]
            ys = [p[1] for p in kept]
            errs = [0.0 if p[2] is None else p[2] for p in kept]
            xs_seen.update(xs)
            style = {
                "color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)],
                "markersize": 4, "linewidth": 1.5,
                "linestyle": (dashes or {}).get(label, "-" if i < len(COLORS) else "--")
                if connect
                else "none",
            }  # fmt: skip
            if any(p[2] is not None for p in kept):
                line = ax.errorbar(xs, ys, yerr=errs, capsize=3, **style)
            else:
                line = ax.plot(xs, ys, **style)[0]
            handles.setdefault(label, line)
            if label_points:
                ax.annotate(label, (xs[-1], ys[-1]), xytext=(4, 3), textcoords="offset points",
                            fontsize=7, color=style["color"])  # fmt: skip
        _scale_axes(ax, xscale, yscale, sorted(xs_seen))
        if label_points:  # room for the labels right of the last points
            ax.margins(x=0.18)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if not xs_seen:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel_title or title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.35)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if len(panels) > 1 or panels[0][0]:
        fig.suptitle(title, fontsize=10)
    right = 1.0 - legend_w / fig.get_figwidth()
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="upper left",
                   bbox_to_anchor=(right + 0.005, 0.95), frameon=False, ncol=legend_cols)  # fmt: skip
    fig.tight_layout(rect=(0.0, 0.0, right, 1.0))
    return _to_svg(fig, title)


def _showable(p: Point, xscale: str, yscale: str) -> bool:
    x, y, _ = p
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    return (xscale == "linear" or x > 0) and (yscale == "linear" or y > 0)


def _scale_axes(ax: Any, xscale: str, yscale: str, xs: list[float]) -> None:
    if xscale == "log2":
        ax.set_xscale("log", base=2)
        if xs:  # ticks at the measured values, written as plain numbers
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            if len(xs) == 1:  # a lone width: keep it off the frame
                ax.set_xlim(xs[0] / 1.5, xs[0] * 1.5)
    elif xscale == "log":
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if yscale == "log":
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _to_svg(fig: Any, title: str) -> str:
    """The figure as an inline ``<svg>`` element (closed afterwards)."""
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
