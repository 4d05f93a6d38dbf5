"""The tables of a speed page (one layout and pattern): scaling exponents and efficiency
lengths, fraction of the GEMM limit, the mask axis, every measurement and the run comparison.
Every number carries its evidence (:mod:`attnzoo.report.cells`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from attnzoo import stats
from attnzoo.report.cells import efficiency_cell, exponent_cell, gemm_cell, timing_cell
from attnzoo.report.common import badge, esc, num, table, td
from attnzoo.report.palette import Palette
from attnzoo.report.scaling import derived_table
from attnzoo.report.trust import timing_spread, timing_trust, trusted

Row = dict[str, Any]


def _name(palette: Palette, mixer: str) -> str:
    return f"<td>{palette.swatch(mixer)}{esc(mixer)}</td>"


def _run(r: Row, multi: bool) -> list[str]:
    return [td(r["run_id"])] if multi else []


def scaling_table(rows: list[Row], baseline: str | None, palette: Palette, multi: bool,
                  table_id: str) -> str:  # fmt: skip
    derived = derived_table(rows, baseline)
    head = [*(["run"] if multi else []), "mechanism", "impl", "mask", "mode", "lengths", "repeats",
            "time exponent", "memory exponent", "efficiency length (time)",
            "efficiency length (memory)"]  # fmt: skip
    body = [
        _run(d, multi)
        + [_name(palette, d["mixer"]), td(d["impl"]), td(d["mask"]), td(d["mode"]),
           td(", ".join(map(str, d["lengths"]))), td(", ".join(map(str, d["repeats"]))),
           exponent_cell(d["time"], d["trust"]), exponent_cell(d["memory"], "ok"),
           efficiency_cell(d["efficiency_time"], baseline, d["mixer"] == baseline),
           efficiency_cell(d["efficiency_memory"], baseline, d["mixer"] == baseline)]
        for d in derived
    ]  # fmt: skip
    note = (
        '<p class="muted">Exponent p of a least-squares fit y ~ T^p in log-log space, with its '
        f"95% confidence interval and R²; given only over at least {stats.MIN_LENGTHS} lengths "
        f"spanning at least {stats.MIN_RANGE:g}x (else the cell says why not). Efficiency length "
        "(CAB): the measured T from which the mechanism (best impl at each length) stays below "
        f"the run's baseline <code>{esc(baseline or '(none recorded)')}</code> (best impl) on "
        "the same pattern, mask and mode; given only where the curves cross once, with two "
        "lengths on each side or trusted timings on both sides of the crossing.</p>"
    )
    return note + table(head, body, table_id)


def gemm_table(rows: list[Row], runs: list[Row], palette: Palette, multi: bool,
               table_id: str) -> str:  # fmt: skip
    longest: dict[tuple, Row] = {}
    for r in rows:
        k = (r["run_id"], r["mixer"], r["impl"], r["mask"], r["mode"])
        if k not in longest or r["seq_len"] > longest[k]["seq_len"]:
            longest[k] = r
    head = [*(["run"] if multi else []), "mechanism", "impl", "mask", "mode", "T", "GFLOP",
            "GFLOP/s", "fraction of GEMM [q1–q3]"]  # fmt: skip
    body = [
        _run(r, multi)
        + [_name(palette, r["mixer"]), td(r["impl"]), td(r["mask"]), td(r["mode"]), td(r["seq_len"]),
           num(r["flops"] / 1e9 if r["flops"] else None, ".2f"), _rate(r), gemm_cell(r["gemm_fraction"], r)]
        for _, r in sorted(longest.items())
    ]  # fmt: skip
    rates = ", ".join(
        f"run {r['run_id']}: {r['gemm_gflops']:.1f} GFLOP/s" for r in runs if r["gemm_gflops"]
    )
    note = (
        '<p class="muted">Analytic FLOPs (2 per multiply-add over the attended pairs; '
        "forward+backward = 3x forward) divided by the median time, at the longest measured T, "
        "against this machine's fp32 GEMM rate measured in the same run "
        f"({esc(rates or 'not recorded')}). The range comes from the timing's quartiles. A "
        "fraction above 1 is impossible and flagged as a measurement error, not shown as a "
        "result.</p>"
    )
    return note + table(head, body, table_id)


def _rate(r: Row) -> str:
    if r["gflops_per_s"] is None:
        return num(None, ".1f")
    if r["gemm_fraction"] is not None and r["gemm_fraction"] > 1:
        return f'<td class="num bad">({r["gflops_per_s"]:.1f})</td>'
    return num(r["gflops_per_s"], ".1f")


def mask_table(rows: list[Row], palette: Palette, table_id: str) -> str:
    masks = sorted({r["mask"] for r in rows})
    longest_t = max((r["seq_len"] for r in rows), default=None)
    if longest_t is None or len(masks) < 2:
        return ""  # one mask: no axis
    cell: dict[tuple, Row] = {}
    for r in rows:
        if r["seq_len"] == longest_t:
            cell[(r["run_id"], r["mixer"], r["impl"], r["mode"], r["mask"])] = r
    keys = sorted({k[:4] for k in cell})
    body = [
        [td(run), _name(palette, m), td(i), td(mode)]
        + [timing_cell(cell[(run, m, i, mode, mk)]) if (run, m, i, mode, mk) in cell
           else td("-", "na") for mk in masks]
        for run, m, i, mode in keys
    ]  # fmt: skip
    return (
        f'<p class="muted">Median latency (ms) at T = {longest_t} per mask (SYS-LCA\'s kernel x '
        "mask axis).</p>" + table(["run", "mechanism", "impl", "mode", *masks], body, table_id)
    )


def measurements_table(rows: list[Row], palette: Palette, table_id: str) -> str:
    """Every stored timing of the page with its quartiles, extremes, repeats and trust."""
    body = []
    for r in sorted(rows, key=lambda r: (r["run_id"], r["mixer"], r["impl"], r["mask"],
                                         r["mode"], r["seq_len"])):  # fmt: skip
        spread = timing_spread(r)
        lo, hi = r.get("min_s"), r.get("max_s")
        label = timing_trust(r)
        body.append(
            [td(r["run_id"]), _name(palette, r["mixer"]), td(r["impl"]), td(r["mask"]), td(r["mode"]),
             td(r["seq_len"]), timing_cell(r),
             td("-" if lo is None or hi is None else f"{lo * 1e3:.3f}–{hi * 1e3:.3f}"),
             num(None if spread is None else spread * 100, ".0f"),
             f"<td>{badge(label) or 'ok'}</td>",
             num(r["peak_bytes"] / 2**20 if r["peak_bytes"] is not None else None, ".2f")]
        )  # fmt: skip
    head = ["run", "mechanism", "impl", "mask", "mode", "T", "median ms [q1–q3] n", "min–max ms",
            "spread %", "trust", "peak MiB"]  # fmt: skip
    n_bad = sum(not trusted(r) for r in rows)
    return (
        f"<details><summary>every measurement ({len(rows)}, {n_bad} not trusted)</summary>"
        f"{table(head, body, table_id)}</details>"
    )


def compare_table(rows: list[Row], run_ids: Sequence[int], table_id: str) -> str:
    first = run_ids[0]
    by_key: dict[tuple, dict[int, Row]] = defaultdict(dict)
    for r in rows:
        by_key[(r["mixer"], r["impl"], r["mask"], r["mode"], r["seq_len"])][r["run_id"]] = r
    head = ["mechanism", "impl", "mask", "mode", "T", f"run {first} ms"] + [
        f"run {r} / run {first}" for r in run_ids[1:]
    ]
    body = []
    for k, v in sorted(by_key.items()):
        if first not in v:
            continue
        cells = [td(x) for x in k] + [timing_cell(v[first])]
        for r in run_ids[1:]:
            if r not in v:
                cells.append(td("-", "na"))
                continue
            ratio = v[r]["median_s"] / v[first]["median_s"]
            ok = trusted(v[r]) and trusted(v[first])
            mark = "" if ok else badge("noisy" if "noisy" in {timing_trust(v[r]), timing_trust(v[first])} else "few repeats")  # fmt: skip
            cells.append(f'<td class="num">{"" if ok else "~"}{ratio:.3f}{mark}</td>')
        body.append(cells)
    return (
        '<p class="muted">Latency ratio of each later run to the first, for matching '
        "measurements (~: either timing untrusted).</p>" + table(head, body, table_id)
    )
