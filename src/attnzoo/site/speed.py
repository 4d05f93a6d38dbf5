"""The measured-speed section of a mechanism's page, from the newest speed run that measured it.

The headline cell is the README's (:func:`attnzoo.readme_table.speed_cell`: causal-self with the
causal mask for a causal token block, else its first pattern with the full mask), forward: a
latency plot (one line per impl), the table of T (or grid) x impl with each median's quartiles,
repeats and trust marks as the report shows them, and the scaling exponents where the lengths
support one. Every other (pattern, mask, mode) the run measured follows, folded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from attnzoo.readme_table import speed_cell
from attnzoo.report.cells import exponent_cell, timing_cell
from attnzoo.report.common import esc, table, td, trust_legend, when
from attnzoo.report.palette import COLORS, MARKERS, Style
from attnzoo.report.plots import Line, loglog_svg
from attnzoo.report.scaling import scaling_exponent, worst_trust
from attnzoo.report.speed import MODES, speed_mark
from attnzoo.report.trust import run_warnings, trusted
from attnzoo.site.common import not_measured, slug
from attnzoo.site.measured import SpeedRun
from attnzoo.spec import LAYOUTS, PATTERNS, MixerSpec

Row = dict[str, Any]
Group = tuple[str, str, str]  # (pattern, mask, mode)


def speed_section(spec: MixerSpec, data: SpeedRun | None) -> str:
    """The section's HTML (its ``<h2>`` is the caller's)."""
    if data is None or not data.rows:
        return not_measured("speed run measured this mechanism",
                            f"attnzoo bench speed --mixers {spec.name}")  # fmt: skip
    run = data.run
    groups: dict[Group, list[Row]] = defaultdict(list)
    for r in data.rows:
        groups[(r["pattern"], r["mask"], r["mode"])].append(r)
    order = sorted(groups, key=lambda g: _order(spec, g))
    pattern, mask, _, _ = speed_cell(spec)
    head = (pattern, mask, "fwd") if (pattern, mask, "fwd") in groups else order[0]
    n_bad = sum(not trusted(r) for r in data.rows)
    warnings = "".join(f'<p class="warn">{esc(w)}</p>' for w in run_warnings(run, data.notes))
    intro = (
        f'<p class="muted">From run {run["run_id"]} ({esc(run["status"])}, suite '
        f"{esc(run.get('suite') or '-')}, started {esc(when(run['started_at']))}), the newest "
        f"speed run that measured <code>{esc(spec.name)}</code>: {len(data.rows)} measurements, "
        f"{n_bad} not trusted. Times are medians after warm-up on a shared machine; compare "
        "ratios within a run.</p>"
    )
    parts = [warnings, intro, trust_legend(), _group_html(spec, head, groups[head], plot=True)]
    others = [g for g in order if g != head]
    if others:
        inner = "".join(_group_html(spec, g, groups[g], plot=False) for g in others)
        parts.append(
            f"<details><summary>every other pattern, mask and mode measured ({len(others)})"
            f"</summary>{inner}</details>"
        )
    parts.append(_checks_html(data))
    return "\n".join(parts)


def _order(spec: MixerSpec, g: Group) -> tuple[int, int, int]:
    pattern, mask, mode = g
    p = PATTERNS.index(pattern) if pattern in PATTERNS else len(PATTERNS)
    m = spec.masks.index(mask) if mask in spec.masks else len(spec.masks)
    modes = list(MODES)
    return p, m, modes.index(mode) if mode in modes else len(modes)


def impl_order(spec: MixerSpec, rows: Sequence[Row]) -> list[str]:
    """The impls of ``rows`` in the config's order (others, e.g. retired ones, last)."""
    seen = {r["impl"] for r in rows}
    known = [i for i in spec.impls if i in seen]
    return known + sorted(seen - set(known))


def size_label(layout: str, tokens: int) -> str:
    """``"1024"`` for tokens; ``"32×32 (1024)"`` for a grid measured at its most even size."""
    if layout == "tokens" or layout not in LAYOUTS:
        return str(tokens)
    lay = LAYOUTS[layout]
    sizes = lay.sizes_for(tokens)
    if lay.tokens(sizes) != tokens:
        return f"{tokens} cells"
    return "×".join(map(str, sizes)) + f" ({tokens})"


def _group_html(spec: MixerSpec, g: Group, rows: list[Row], *, plot: bool) -> str:
    pattern, mask, mode = g
    tag = slug(f"{pattern}-{mask}-{mode}")
    impls = impl_order(spec, rows)
    what = f"{pattern}, mask {mask}, {MODES.get(mode, mode)}"
    cell: dict[tuple[int, str], Row] = {(r["seq_len"], r["impl"]): r for r in rows}
    lengths = sorted({r["seq_len"] for r in rows})
    unit = "T" if spec.layout == "tokens" else "grid (cells)"
    body = [
        [td(size_label(spec.layout, t))]
        + [timing_cell(cell[(t, i)]) if (t, i) in cell else td("-", "num na") for i in impls]
        for t in lengths
    ]
    out = f'<h3 id="speed-{tag}">{esc(what)}</h3>'
    if plot:
        out += _plot(spec, what, rows, impls)
    out += '<p class="muted">Median latency in ms per call.</p>'
    out += table([unit, *(f"{i} (ms)" for i in impls)], body, f"speed-table-{tag}")
    return out + _exponents(impls, rows, f"exponents-{tag}")


def _plot(spec: MixerSpec, what: str, rows: list[Row], impls: list[str]) -> str:
    lines = []
    for k, impl in enumerate(impls):
        mine = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["seq_len"])
        marks = [speed_mark(r, "median_s", 1e3) for r in mine]
        style = Style(COLORS[k % len(COLORS)], MARKERS[k % len(MARKERS)])
        lines.append(Line(impl, marks, style))
    xlabel = "sequence length T (tokens)" if spec.layout == "tokens" else "grid cells h·w"
    svg = loglog_svg(f"{spec.name}: latency, {what}", xlabel, "latency (ms)", lines)
    return (
        f'<figure class="plot">{svg}<figcaption>latency of each impl (log-log); bars: the '
        "interquartile range of the timed calls; hollow: not trusted</figcaption></figure>"
    )


def _exponents(impls: list[str], rows: list[Row], table_id: str) -> str:
    body = []
    for impl in impls:
        mine = [r for r in rows if r["impl"] == impl]
        time = scaling_exponent([(r["seq_len"], r["median_s"]) for r in mine])
        memory = scaling_exponent([(r["seq_len"], r["peak_bytes"]) for r in mine])
        body.append([td(impl), td(", ".join(str(t) for t in sorted({r["seq_len"] for r in mine}))),
                     exponent_cell(time, worst_trust(mine)), exponent_cell(memory, "ok")])  # fmt: skip
    return (
        '<p class="muted">Scaling exponent p of time (and peak memory) ~ T^p, a least-squares '
        "fit in log-log space with its 95% interval and R², given only where the lengths "
        "support one (else the cell says why not).</p>"
        + table(["impl", "lengths", "time exponent", "memory exponent"], body, table_id)
    )


def _checks_html(data: SpeedRun) -> str:
    if not data.checks:
        return (
            f'<p class="muted">No correctness checks recorded for it in run '
            f"{data.run['run_id']}.</p>"
        )
    body = [
        [td(c["impl"]), td(c["pattern"]),
         td("-" if c["max_abs_err"] is None else f"{c['max_abs_err']:.1e}", "num"),
         td("ok" if c["ok"] else "FAILED", "ok" if c["ok"] else "bad"), td(c.get("detail") or "")]
        for c in data.checks
    ]  # fmt: skip
    return (
        f'<p class="muted">Correctness checks of run {data.run["run_id"]} (each fast path against '
        "<code>reference</code> before timing it; a failed check means no timing).</p>"
        + table(["impl", "pattern", "max |err|", "check", "detail"], body, "speed-checks")
    )
