"""Plots rendered to inline SVG with matplotlib (Agg; no files, no network): log-log lines for
the speed pages, multi-panel lines with error bars for the quality section.

Every mechanism is drawn in its :class:`~attnzoo.report.palette.Palette` colour and marker in
every figure. A point that is not trusted (noisy, or fewer repeats than a spread needs) is drawn
hollow, and a point with a measured range gets a bar over it; the legend says so when a figure
has either.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from attnzoo.report.palette import COLORS, MARKERS, Style  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Mark:
    """One plotted point: ``y`` at ``x``, an optional range ``lo..hi`` (a bar) and whether the
    measurement is trusted (else drawn hollow)."""

    x: float
    y: float
    lo: float | None = None
    hi: float | None = None
    trusted: bool = True


@dataclasses.dataclass(frozen=True)
class Line:
    """One series: its legend label (``None``: not in the legend), points, style, line style."""

    label: str | None
    marks: Sequence[Mark]
    style: Style
    linestyle: str = "-"


Point = tuple[float, float, float | None]  # (x, y, half-height of the error bar or None)
PointSeries = tuple[str, Sequence[Point | Mark]]  # (label, points)
Panel = tuple[str, Sequence[PointSeries]]  # (panel title, its series)
Key = tuple[str, str]  # an extra legend entry: (label, line style), drawn in grey
X_SCALES = ("linear", "log", "log2")
Y_SCALES = ("linear", "log")
PANELS_PER_ROW = 3
LEGEND_ROWS = 20  # legend entries per column that fit the figure's height (7 pt)
HOLLOW = "hollow: noisy or few repeats"
BARS = "bar: q1..q3 of the calls"


def loglog_svg(
    title: str, xlabel: str, ylabel: str, lines: Sequence[Line], keys: Sequence[Key] = ()
) -> str:
    """An SVG ``<svg>`` element: the lines on log-log axes (x base 2, ticks at the measured
    values), the legend right of the axes: each label once, then ``keys`` (e.g. one line style
    per run) and the marks' meaning (hollow, bars) where the figure has them."""
    shown = [(ln, _kept(ln.marks, "log2", "log")) for ln in lines]
    shown = [(ln, ms) for ln, ms in shown if ms]
    labels = {ln.label for ln, _ in shown if ln.label}
    hollow = any(not m.trusted for _, ms in shown for m in ms)
    bars = any(m.lo is not None for _, ms in shown for m in ms)
    n = len(labels) + len(keys) + hollow + bars
    ncol = max(1, -(-n // LEGEND_ROWS))
    fig, ax = plt.subplots(figsize=(7.4 + 2.2 * (ncol - 1), 3.9), dpi=100)
    handles: dict[str, Any] = {}
    for ln, marks in shown:
        handle = _draw(ax, marks, ln.style, ln.linestyle)
        if ln.label:
            handles.setdefault(ln.label, handle)
    for label, linestyle in keys:
        handles[label] = Line2D([], [], color="#555555", linestyle=linestyle, linewidth=1.5)
    _trust_keys(handles, hollow, bars)
    measured = {m.x for _, ms in shown for m in ms}
    xs_all: list[float] = []
    for x in sorted(measured, reverse=True):
        # 2-D grids give near-duplicate lengths (2025 next to 2048): label the rounder, larger one
        if not xs_all or x * 1.1 < xs_all[-1]:
            xs_all.append(x)
    _scale_axes(ax, "log2", "log", sorted(xs_all))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    if shown:
        ax.legend(list(handles.values()), list(handles), fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False, ncol=ncol)  # fmt: skip
    else:
        ax.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _to_svg(fig, title)


def _draw(ax: Any, marks: Sequence[Mark], style: Style, linestyle: str) -> Any:
    """A series: the line, filled markers where trusted, hollow ones where not, and a bar over
    every point with a range. Returns the legend handle."""
    xs, ys = [m.x for m in marks], [m.y for m in marks]
    if linestyle != "none":
        ax.plot(xs, ys, color=style.color, linestyle=linestyle, linewidth=1.5)
    ranged = [m for m in marks if m.lo is not None and m.hi is not None]
    if ranged:
        below = [max(m.y - min(m.lo, m.y), 0.0) for m in ranged]  # type: ignore[type-var]
        above = [max(max(m.hi, m.y) - m.y, 0.0) for m in ranged]  # type: ignore[type-var]
        ax.errorbar([m.x for m in ranged], [m.y for m in ranged], yerr=[below, above], fmt="none",
                    color=style.color, ecolor=style.color, elinewidth=0.9, capsize=2.5)  # fmt: skip
    for ok in (True, False):
        pts = [m for m in marks if m.trusted is ok]
        if pts:
            ax.plot([m.x for m in pts], [m.y for m in pts], linestyle="none", marker=style.marker,
                    markersize=5, color=style.color, markeredgecolor=style.color,
                    markerfacecolor=style.color if ok else "white")  # fmt: skip
    return Line2D([], [], color=style.color, marker=style.marker, markersize=5,
                  linestyle=linestyle if linestyle != "none" else "none", linewidth=1.5)  # fmt: skip


def _trust_keys(handles: dict[str, Any], hollow: bool, bars: bool) -> None:
    if hollow:
        handles[HOLLOW] = Line2D([], [], color="#555555", marker="o", markersize=5,
                                 markerfacecolor="white", linestyle="none")  # fmt: skip
    if bars:
        handles[BARS] = Line2D([], [], color="#555555", marker="|", markersize=9,
                               linestyle="none")  # fmt: skip


def _as_mark(p: Point | Mark) -> Mark:
    if isinstance(p, Mark):
        return p
    x, y, err = p
    return Mark(x, y) if err is None else Mark(x, y, y - err, y + err)


def _kept(points: Sequence[Point | Mark], xscale: str, yscale: str) -> list[Mark]:
    """The points an axis can show (finite; positive on a log axis), sorted by x."""
    marks = [_as_mark(p) for p in points]
    return sorted((m for m in marks if _showable(m, xscale, yscale)), key=lambda m: (m.x, m.y))


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
    styles: Mapping[str, Style] | None = None,
    dashes: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
    legend: bool = True,
) -> str:
    """An SVG ``<svg>`` element: one axes per panel (up to three a row) and one shared legend.

    A label keeps its colour and marker in every panel, so a mechanism reads the same across
    panels. A point with an error or a range gets a bar; an untrusted :class:`Mark` is hollow.

    Args:
        title: the figure's title (also its accessible label and the salt of its SVG ids).
        xlabel: x-axis label. ylabel: y-axis label (of every panel).
        panels: ``(panel title, [(label, [(x, y, err) or Mark, ...]), ...])`` per panel.
        xscale: ``linear``, ``log`` (base 10) or ``log2`` (ticks at the measured x values,
            written as plain numbers: model widths, sequence lengths).
        yscale: ``linear`` or ``log``. Points that a log axis cannot show (<= 0) are dropped.
        ylim: fixed y limits (e.g. ``(0, 1.02)`` for accuracies), else matplotlib's.
        connect: join a series' points with a line (else markers only).
        label_points: write each series' label next to its last point.
        styles: a label's colour and marker (the report's palette: a mechanism looks the same
            in every figure); labels not in it take palette slots in order of first appearance.
        dashes: a label's matplotlib line style (e.g. ``"--"``), else solid.
        names: the text ``label_points`` writes for a label (else the label).
        legend: draw the shared legend (without it, ``label_points`` names the lines).

    Shapes:
        panels: ``P`` panels of ``N_p`` series of ``M`` points each -> one figure, ``P`` axes.
    """
    if xscale not in X_SCALES:
        raise ValueError(f"panels_svg: xscale must be one of {X_SCALES}, got {xscale!r}")
    if yscale not in Y_SCALES:
        raise ValueError(f"panels_svg: yscale must be one of {Y_SCALES}, got {yscale!r}")
    if not panels:
        raise ValueError(f"panels_svg: panels must hold at least one panel, got {panels!r}")
    style = dict(styles or {})
    for _, series in panels:
        for label, _ in series:
            if label not in style:
                i = len(style)
                style[label] = Style(COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)])
    marks = [p for _, series in panels for _, pts in series for p in pts if isinstance(p, Mark)]
    hollow = any(not m.trusted for m in marks)
    bars = any(m.lo is not None for m in marks)  # ranges (a std over seeds is no key entry)
    shown = {label for _, series in panels for label, _ in series} if legend else set()
    entries = len(shown) + hollow + bars
    ncols = min(PANELS_PER_ROW, len(panels))
    nrows = -(-len(panels) // ncols)
    legend_cols = max(1, -(-entries // LEGEND_ROWS))
    legend_w = 1.9 * legend_cols if entries else 0.0
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.1 * ncols + legend_w, 3.3 * nrows + 0.4), dpi=100, squeeze=False
    )
    handles: dict[str, Any] = {}
    for ax, (panel_title, series) in zip(axes.flat, panels, strict=False):
        xs_seen: set[float] = set()
        for label, pts in series:
            kept = _kept(pts, xscale, yscale)
            if not kept:
                continue
            xs_seen.update(m.x for m in kept)
            linestyle = (dashes or {}).get(label, "-") if connect else "none"
            handles.setdefault(label, _draw(ax, kept, style[label], linestyle))
            if label_points:
                ax.annotate((names or {}).get(label, label), (kept[-1].x, kept[-1].y), xytext=(4, 3),
                            textcoords="offset points", fontsize=7, color=style[label].color)  # fmt: skip
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
    if not legend:
        handles = {}
    _trust_keys(handles, hollow, bars)
    right = 1.0 - legend_w / fig.get_figwidth()
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="upper left",
                   bbox_to_anchor=(right + 0.005, 0.95), frameon=False, ncol=legend_cols)  # fmt: skip
    fig.tight_layout(rect=(0.0, 0.0, right, 1.0))
    return _to_svg(fig, title)


def _showable(m: Mark, xscale: str, yscale: str) -> bool:
    if not (math.isfinite(m.x) and math.isfinite(m.y)):
        return False
    return (xscale == "linear" or m.x > 0) and (yscale == "linear" or m.y > 0)


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
