"""The report's peers page: the latest ``attnzoo bench peers`` run, ours against code nobody here
wrote on the same inputs and weights. A ratio is marked unreliable where either side's timing
was noisy, the repeats too few to measure a spread, or the machine busy; rows stored before
the spreads were kept say so."""

from __future__ import annotations

from typing import Any

from attnzoo import stats
from attnzoo.report.common import badge, esc, num, table, td, when
from attnzoo.report.palette import Palette
from attnzoo.report.trust import OK, UNRELIABLE, gemm_error, peer_trust

Row = dict[str, Any]
MIB = 2**-20


def peers_section(run: Row, rows: list[Row], skips: list[Row], busy: bool, palette: Palette) -> str:
    """HTML of one peers run: a note, the table (with each ratio's reliability) and the cases
    that could not run."""
    head = ["case", "mechanism", "peer", "size", "ours ms", "ours spread", "peer ms",
            "peer spread", "repeats", "peer / ours", "reliability", "ours GFLOP/s",
            "fraction of GEMM", "ours peak MiB", "peer peak MiB", "max rel diff", "equal",
            "notes"]  # fmt: skip
    body = [_row(r, busy, palette) for r in rows]
    labels = [peer_trust(r, busy)[0] for r in rows]
    missing = "".join(
        f"<li>{esc(s['impl'])} (n={s['seq_len']}): {esc(s['kind'])}, {esc(s['reason'])}</li>"
        for s in skips
    )
    warn = (
        '<p class="warn">The machine was busy during this run: every ratio is marked '
        "unreliable.</p>"
        if busy
        else ""
    )
    note = (
        f'<p class="muted">Run {run["run_id"]} ({esc(run["status"])}, '
        f"{esc(when(run['started_at']))}): each row builds ours and the peer on the same inputs "
        "and weights, checks the outputs agree (max |ours - peer| / max |peer| within the case's "
        "tolerance), then times both interleaved. Spread: interquartile range over the median "
        f"of each side's calls. A ratio is reliable only with at least {stats.MIN_REPEATS} "
        f"repeats, both spreads at most {stats.NOISY_SPREAD:.0%} and a quiet machine: "
        f"{labels.count(OK)} of {len(rows)} rows are, {labels.count(UNRELIABLE)} are not. Our "
        "FLOPs count the work our path does; the GEMM fraction divides our rate by this "
        "machine's GEMM rate timed round-robin with the two (at the run's start it was "
        f"{run['gemm_gflops'] or 0:.1f} GFLOP/s); above 1 it is a measurement error.</p>"
    )
    tab = table(head, body, "peers-table") if rows else "<p>No peer rows recorded.</p>"
    return warn + note + tab + (f"<ul>{missing}</ul>" if missing else "")


def _row(r: Row, busy: bool, palette: Palette) -> list[str]:
    label, why = peer_trust(r, busy)
    mark = "" if label == OK else "~"
    ratio_cls = "num" if label != OK else ("num ok" if r["ratio"] >= 1 else "num bad")
    frac = r["gemm_fraction"]
    error = gemm_error(frac)
    frac_cell = (f'<td class="bad">{badge("measurement error", error)} not a result</td>'
                 if error else num(frac, ".3f"))  # fmt: skip
    return [
        td(r["case_name"]), f"<td>{palette.swatch(r['mechanism'])}{esc(r['mechanism'])}</td>",
        td(r["peer"]), td(r["size"]), num(r["ours_s"] * 1e3, ".2f"), _spread(r.get("ours_spread")),
        num(r["peer_s"] * 1e3, ".2f"), _spread(r.get("peer_spread")), td(r["repeats"]),
        f'<td class="{ratio_cls}">{mark}{r["ratio"]:.2f}x</td>',
        f"<td>{badge(label, why) if label != OK else 'ok'}</td>",
        num(r["ours_gflops"], ".1f"), frac_cell,
        num(r["ours_peak_bytes"] * MIB if r["ours_peak_bytes"] is not None else None, ".1f"),
        num(r["peer_peak_bytes"] * MIB if r["peer_peak_bytes"] is not None else None, ".1f"),
        num(r["rel_diff"], ".1e"), td("yes" if r["ok"] else "NO", "" if r["ok"] else "bad"),
        td(r["detail"] or ""),
    ]  # fmt: skip


def _spread(spread: float | None) -> str:
    if spread is None:
        return '<td class="na">not recorded</td>'
    cls = "num bad" if spread > stats.NOISY_SPREAD else "num"
    return f'<td class="{cls}">{spread:.0%}</td>'
