"""The speed pages: one per (layout, pattern) measured, e.g. tokens/causal-self or
grid2d/noncausal-self, so that a plot holds only mechanisms of one kind of input.

Per mode (forward, forward + backward, streaming step): latency and peak memory vs T with one
line per mechanism at its fastest impl at each length (the legend right of the plot), and every
impl of each mechanism in small panels. Then the scaling exponents and efficiency lengths, the
fraction of the GEMM limit, the mask axis and every measurement, each number with its evidence.
With several runs, a mechanism keeps its colour and each run gets a line style.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from attnzoo.report.common import Page, esc, trust_legend
from attnzoo.report.palette import Palette
from attnzoo.report.plots import Line, Mark, loglog_svg, panels_svg
from attnzoo.report.scaling import best_rows
from attnzoo.report.speed_tables import (
    compare_table,
    gemm_table,
    mask_table,
    measurements_table,
    scaling_table,
)
from attnzoo.report.trust import trusted
from attnzoo.spec import LAYOUTS, PATTERNS

Row = dict[str, Any]
MODES = {
    "fwd": "forward",
    "fwdbwd": "forward + backward",
    "step": "one streaming step at position T",
}
RUN_STYLES = ("-", "--", ":", "-.")
IMPL_STYLES = ("-", "--", ":", "-.")
X_LABEL = {"tokens": "sequence length T (tokens)"}


def page_file(layout: str, pattern: str) -> str:
    return f"speed-{layout}-{pattern}.html"


def base_mask(pattern: str) -> str:
    return "causal" if pattern.startswith("causal") else "full"


def split(rows: list[Row], layouts: dict[str, str]) -> dict[tuple[str, str], list[Row]]:
    """Rows by (layout of their mechanism, pattern), layouts then patterns in their order."""
    out: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        out[(layouts.get(r["mixer"], "tokens"), r["pattern"])].append(r)
    order = {name: i for i, name in enumerate(LAYOUTS)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0][0], 99), PATTERNS.index(kv[0][1])
                                                   if kv[0][1] in PATTERNS else 99)))  # fmt: skip


def speed_pages(rows: list[Row], runs: list[Row], layouts: dict[str, str], baseline: str | None,
                palette: Palette) -> list[Page]:  # fmt: skip
    """One page per (layout, pattern) of ``rows`` (speed rows of ``runs``)."""
    run_ids = [r["run_id"] for r in runs]
    pages = []
    for (layout, pattern), mine in split(rows, layouts).items():
        tag = f"{layout}-{pattern}"
        mixers = sorted({r["mixer"] for r in mine})
        lengths = sorted({r["seq_len"] for r in mine})
        intro = (
            f'<p class="muted">{len(mixers)} mechanisms on {esc(layout)} inputs, pattern '
            f"{esc(pattern)}, at T = {esc(', '.join(map(str, lengths)))} tokens"
            + (" (a grid of about T cells)" if layout != "tokens" else "")
            + f"; {len(mine)} measurements. Times are medians after warm-up.</p>"
        )  # fmt: skip
        figs = "\n".join(_mode_figures(mine, run_ids, layout, pattern, mode, palette)
                         for mode in MODES if any(r["mode"] == mode for r in mine))  # fmt: skip
        parts = [
            intro, trust_legend(), figs,
            f"<h2 id=\"scaling-{tag}\">Scaling exponents and efficiency lengths</h2>",
            scaling_table(mine, baseline, palette, len(run_ids) > 1, f"scaling-{tag}"),
            f"<h2 id=\"gemm-{tag}\">Fraction of the GEMM limit</h2>",
            gemm_table(mine, runs, palette, len(run_ids) > 1, f"gemm-{tag}"),
        ]  # fmt: skip
        masks = mask_table(mine, palette, f"masks-{tag}") if pattern.endswith("self") else ""
        if masks:
            parts += [f'<h2 id="masks-{tag}">Mask axis</h2>', masks]
        if len(run_ids) > 1:
            parts += [f'<h2 id="compare-{tag}">Run comparison</h2>',
                      compare_table(mine, run_ids, f"compare-{tag}")]  # fmt: skip
        parts += [
            f'<h2 id="all-{tag}">Measurements</h2>',
            measurements_table(mine, palette, f"all-{tag}"),
        ]
        pages.append(Page(page_file(layout, pattern), f"{layout} · {pattern}",
                          f"latency, memory, scaling and GEMM fraction of {len(mixers)} "
                          f"mechanisms at T = {lengths[0]}..{lengths[-1]}", "\n".join(parts)))  # fmt: skip
    return pages


def _mode_figures(rows: list[Row], run_ids: Sequence[int], layout: str, pattern: str, mode: str,
                  palette: Palette) -> str:  # fmt: skip
    mask = base_mask(pattern)
    mine = [r for r in rows if r["mode"] == mode and r["mask"] == mask]
    if not mine:
        return ""
    xlabel = X_LABEL.get(layout, "tokens T (grid cells)")
    title = f"{layout} {pattern}, {MODES[mode]}"
    latency = loglog_svg(f"latency: {title}", xlabel, "latency (ms)",
                         _lines(mine, run_ids, palette, "median_s", 1e3), _keys(run_ids))  # fmt: skip
    memory = loglog_svg(f"peak memory: {title}", xlabel, "peak memory (MiB)",
                        _lines(mine, run_ids, palette, "peak_bytes", 2**-20), _keys(run_ids))  # fmt: skip
    caption = (f"{esc(title)}, mask {mask}: one line per mechanism at its fastest impl at each "
               "length" + ("; line style: run" if len(run_ids) > 1 else ""))  # fmt: skip
    out = (
        f'<h2 id="{mode}-{layout}-{pattern}">{esc(MODES[mode].capitalize())}</h2>'
        f'<div class="grid"><figure>{latency}<figcaption>{caption}</figcaption></figure>'
        f"<figure>{memory}<figcaption>{caption}</figcaption></figure></div>"
    )
    impls = _impl_panels(mine, run_ids[-1], palette, f"every impl: {title}", xlabel)
    if impls:
        out += (
            f"<details><summary>every impl of each mechanism ({esc(MODES[mode])}, run "
            f"{run_ids[-1]})</summary><figure>{impls}<figcaption>latency of each impl, one panel "
            "per mechanism with more than one, in the mechanism's colour; line ends name the "
            "impl</figcaption></figure></details>"
        )
    return out


def _keys(run_ids: Sequence[int]) -> list[tuple[str, str]]:
    if len(run_ids) < 2:
        return []
    return [(f"run {r}", RUN_STYLES[i % len(RUN_STYLES)]) for i, r in enumerate(run_ids)]


def _lines(rows: list[Row], run_ids: Sequence[int], palette: Palette, key: str,
           scale: float) -> list[Line]:  # fmt: skip
    """Per (run, mechanism): the best impl's value at each length; times with their quartiles
    and trust (peak memory is one deterministic number)."""
    groups: dict[tuple[int, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["run_id"], r["mixer"])].append(r)
    lines = []
    for (run, mixer), rs in sorted(groups.items()):
        marks = [speed_mark(r, key, scale) for _, r in sorted(best_rows(rs, key).items())]
        style = RUN_STYLES[list(run_ids).index(run) % len(RUN_STYLES)] if run in run_ids else "-"
        lines.append(Line(mixer, marks, palette.style(mixer), style))
    return lines


def speed_mark(r: Row, key: str, scale: float) -> Mark:
    """A speed row as a plot mark: ``key`` times ``scale``; the median carries its quartiles
    and its trust (hollow when not trusted)."""
    if key != "median_s":
        return Mark(r["seq_len"], r[key] * scale)
    q1, q3 = r.get("q1_s"), r.get("q3_s")
    lo = q1 * scale if q1 is not None else None
    hi = q3 * scale if q3 is not None else None
    return Mark(r["seq_len"], r["median_s"] * scale, lo, hi, trusted(r))


def _impl_panels(rows: list[Row], run: int, palette: Palette, title: str, xlabel: str) -> str:
    by_mixer: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["run_id"] == run:
            by_mixer[r["mixer"]][r["impl"]].append(r)
    panels, styles, dashes, names = [], {}, {}, {}
    for mixer, impls in sorted(by_mixer.items()):
        if len(impls) < 2:
            continue
        series = []
        for i, (impl, rs) in enumerate(sorted(impls.items())):
            label = f"{mixer}/{impl}"
            styles[label], names[label] = palette.style(mixer), impl
            dashes[label] = IMPL_STYLES[i % len(IMPL_STYLES)]
            series.append((label, [speed_mark(r, "median_s", 1e3) for r in rs]))
        panels.append((mixer, series))
    if not panels:
        return ""
    return panels_svg(title, xlabel, "latency (ms)", panels, xscale="log2", yscale="log",
                      label_points=True, styles=styles, dashes=dashes, names=names,
                      legend=False)  # fmt: skip
