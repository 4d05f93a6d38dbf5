"""Table cells of derived figures, each with its evidence: a timing with its interquartile range,
repeats and trust badge; a GEMM fraction (or its measurement error); an exponent or why none."""

from __future__ import annotations

from typing import Any

from attnzoo.report.common import badge, esc
from attnzoo.report.scaling import Efficiency, Exponent
from attnzoo.report.trust import OK, gemm_error, timing_spread, timing_trust

Row = dict[str, Any]


def why(row: Row) -> str:
    """A timing's trust in words (a badge's title)."""
    spread = timing_spread(row)
    n = row.get("repeats")
    return f"{n} timed call(s)" + ("" if spread is None else f", spread {spread:.0%} of the median")


def _cell(text: str, label: str, title: str, extra: str = "", cls: str = "num") -> str:
    prefix = "" if label == OK else "~"
    return f'<td class="{cls}">{esc(prefix + text)}{extra}{badge(label, title)}</td>'


def timing_cell(row: Row, scale: float = 1e3, fmt: str = ".3f") -> str:
    """``1.234 [1.200–1.300] n=5``: the median (x ``scale``), its quartiles and repeats, with
    ``~`` and a badge when the timing is not trusted."""
    label = timing_trust(row)
    q1, q3 = row.get("q1_s"), row.get("q3_s")
    rng = "" if q1 is None or q3 is None else f"[{q1 * scale:{fmt}}–{q3 * scale:{fmt}}] "
    extra = f' <span class="range">{esc(rng)}n={esc(row.get("repeats"))}</span>'
    return _cell(format(row["median_s"] * scale, fmt), label, why(row), extra)


def gemm_cell(fraction: float | None, row: Row) -> str:
    """A fraction of the GEMM limit with the range its timing's quartiles give, or the
    measurement error a fraction above 1 is."""
    if fraction is None:
        return '<td class="num na">-</td>'
    error = gemm_error(fraction)
    if error is not None:
        return (f'<td class="bad">{badge("measurement error", error)} not a result '
                f'<span class="range">({fraction:.2f} &gt; 1)</span></td>')  # fmt: skip
    median, q1, q3 = row.get("median_s"), row.get("q1_s"), row.get("q3_s")
    rng = ""
    if median and q1 and q3:  # a rate scales as 1 / time: the slow quartile gives the low end
        rng = f' <span class="range">[{fraction * median / q3:.3f}–{fraction * median / q1:.3f}]</span>'
    return _cell(f"{fraction:.3f}", timing_trust(row), why(row), rng)


def exponent_cell(exp: Exponent, label: str) -> str:
    """A scaling exponent with its CI and R² (``~`` and a badge when its timings are not
    trusted), or why the lengths cannot support one."""
    if exp.fit is None:
        return f'<td class="na">{esc(exp.text())}</td>'
    return _cell(exp.text(), label, "the fit's timings include untrusted ones", cls="num")


def efficiency_cell(eff: Efficiency | None, baseline: str | None, is_baseline: bool) -> str:
    if is_baseline:
        return '<td class="na">baseline</td>'
    if eff is None:
        text = f"baseline {baseline} not measured here" if baseline else "no baseline recorded"
        return f'<td class="na">{esc(text)}</td>'
    return (
        f"<td>{esc(eff.text)}</td>"
        if eff.length is not None
        else f'<td class="na">{esc(eff.text)}</td>'
    )
