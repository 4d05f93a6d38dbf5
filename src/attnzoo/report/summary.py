"""The report's first screen: how far its numbers can be trusted (timings ok / noisy / of few
repeats per run, figures withheld, machine load, interrupted runs, notes) and which mechanism
to use, per layout and pattern measured, from :func:`attnzoo.recommend.recommend` at the
longest and shortest lengths measured (and for training at the longest, where measured)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from attnzoo.report.common import badge, esc
from attnzoo.report.palette import Palette
from attnzoo.report.scaling import derived_table
from attnzoo.report.speed import page_file, split
from attnzoo.report.trust import (
    FEW,
    NOISY,
    OK,
    UNRECORDED,
    UNRELIABLE,
    gemm_error,
    peer_trust,
    run_warnings,
    timing_trust,
)
from attnzoo.store import Store

Row = dict[str, Any]
TOP = 3  # candidates shown per question


def trust_overview(runs: Sequence[Row], rows: list[Row], peers: list[Row], peers_busy: bool,
                   notes: list[Row], baseline: str | None) -> str:  # fmt: skip
    """A short box: per speed run how many timings are ok, noisy or of few repeats; derived
    figures withheld; peer ratios unreliable; then every warning of the runs shown."""
    lines = []
    for run in runs:
        if run["kind"] != "speed":
            continue
        mine = [r for r in rows if r["run_id"] == run["run_id"]]
        c = Counter(timing_trust(r) for r in mine)
        lines.append(
            f"Speed run {run['run_id']}: {len(mine)} timings: <b>{c[OK]} ok</b>, "
            f"{c[NOISY]} {badge(NOISY)}, {c[FEW]} {badge(FEW)}"
            + (f", {c[UNRECORDED]} {badge(UNRECORDED)}" if c[UNRECORDED] else "") + "."
        )  # fmt: skip
    if rows:
        derived = derived_table(rows, baseline)
        given = sum(d["time"].fit is not None for d in derived)
        errors = sum(gemm_error(r["gemm_fraction"]) is not None for r in rows)
        withheld = len(derived) - given
        lines.append(
            f"Scaling exponents (time): {given} of {len(derived)} given"
            + (f", {withheld} withheld (too few lengths or too short a range)" if withheld else "")
            + f". GEMM fractions flagged as measurement errors: {errors}."
        )
    if peers:
        labels = [peer_trust(r, peers_busy)[0] for r in peers]
        lines.append(f"Peer ratios: {labels.count(OK)} of {len(peers)} reliable, "
                     f"{labels.count(UNRELIABLE)} {badge(UNRELIABLE)}.")  # fmt: skip
    warnings = [w for run in runs for w in run_warnings(run, notes)]
    items = "".join(f"<li>{line}</li>" for line in lines)
    items += "".join(f'<li class="warn">{esc(w)}</li>' for w in warnings)
    if not warnings:
        items += '<li class="ok">No run was interrupted and no run noted a busy machine.</li>'
    return f'<div class="overview" id="trust"><ul>{items}</ul></div>'


Recommend = Callable[..., Any]


QUESTIONS = ("inference, longest T", "inference, shortest T", "training, longest T")


def recommendations(store: Store, rows: list[Row], layouts: dict[str, str],
                    run_ids: Sequence[int], palette: Palette,
                    recommend: Recommend | None = None) -> str:  # fmt: skip
    """The table answering "which mechanism should I use": a row per layout and pattern
    measured, a column per question (inference at the longest and shortest forward lengths,
    training at the longest), each cell the top candidates with their evidence and, folded, the
    recommendation's caveats."""
    if recommend is None:
        from attnzoo.recommend import recommend
    if not rows:
        return "<p>No speed measurements: nothing to recommend.</p>"
    body = []
    for (layout, pattern), mine in split(rows, layouts).items():
        asked = _questions(mine)
        cells = []
        for question in QUESTIONS:
            if question not in asked:
                cells.append('<td class="na">not measured</td>')
                continue
            T, train = asked[question]
            try:
                rec = recommend(store, seq_len=T, pattern=pattern, layout=layout, train=train,
                                run_ids=list(run_ids))  # fmt: skip
            except ValueError as e:
                cells.append(
                    f'<td><div class="q">T = {T}</div><span class="na">{esc(e)}</span></td>'
                )
            else:
                cells.append(_answer(T, rec, palette))
        link = f'<a href="{page_file(layout, pattern)}">{esc(layout)} · {esc(pattern)}</a>'
        body.append(f"<tr><td>{link}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("inputs", *QUESTIONS))
    return (
        '<p class="muted">The fastest mechanisms measured for each kind of input, from '
        "<code>attnzoo recommend</code>: median [q1–q3] over n timed calls and peak memory, a "
        "badge where the timing is not trusted; each answer's caveats (what the evidence cannot "
        "support, what was excluded, the command that would measure it) are folded below it. "
        "Follow a row's link for its plots and tables.</p>"
        f'<div class="scroll"><table id="summary-table"><thead><tr>{head}</tr></thead><tbody>'
        + "\n".join(body) + "</tbody></table></div>"
    )  # fmt: skip


def _questions(rows: list[Row]) -> dict[str, tuple[int, bool]]:
    fwd = sorted({r["seq_len"] for r in rows if r["mode"] == "fwd"})
    bwd = sorted({r["seq_len"] for r in rows if r["mode"] == "fwdbwd"})
    out = {QUESTIONS[0]: (fwd[-1], False)} if fwd else {}
    if len(fwd) > 1:
        out[QUESTIONS[1]] = (fwd[0], False)
    if bwd:
        out[QUESTIONS[2]] = (bwd[-1], True)
    return out


def _answer(T: int, rec: Any, palette: Palette) -> str:
    top = "".join(_candidate(c, palette) for c in rec.ranked[:TOP]) or "<li>none ranked</li>"
    caveats = list(rec.warnings)
    caveats += [f"excluded {m}: {why}" for m, why in rec.excluded]
    caveats += [f"{c.mixer}/{c.impl}: {n}" for c in rec.ranked[:TOP]
                for n in (c.memory_note, c.quality_note, c.note) if n]  # fmt: skip
    if rec.suggestion:
        caveats.append(f"to measure it: {rec.suggestion}")
    fold = ""
    if caveats:
        what = f"{len(rec.warnings)} warning(s), {len(rec.excluded)} excluded"
        items = "".join(f"<li>{esc(c)}</li>" for c in caveats)
        fold = f'<details class="caveat"><summary>{what}</summary><ul>{items}</ul></details>'
    return f'<td><div class="q">T = {T}</div><ol class="top">{top}</ol>{fold}</td>'


def _candidate(c: Any, palette: Palette) -> str:
    ms = f"{c.median_s * 1e3:.3g} ms"
    if c.q1_s is not None and c.q3_s is not None:
        ms += f" [{c.q1_s * 1e3:.3g}–{c.q3_s * 1e3:.3g}]"
    ms += f" n={c.repeats}"
    if c.peak_bytes is not None:
        ms += f", {c.peak_bytes / 2**20:.3g} MiB"
    if c.seq_len != c.requested_len:
        ms += f" at T = {c.seq_len}"
    why = f"{c.repeats} repeats" + ("" if c.spread is None else f", spread {c.spread:.0%}")
    flags = badge(c.trust, why) if c.trust != OK else ""
    if c.extrapolated:
        flags += badge("extrapolated", "predicted beyond the lengths measured")
    return (
        f"<li>{palette.swatch(c.mixer)}<b>{esc(c.mixer)}</b>/{esc(c.impl)} "
        f'<span class="range">{esc(ms)}</span>{flags}</li>'
    )
