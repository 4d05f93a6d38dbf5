"""The quality and peer sections of a mechanism's page.

- Quality: per task point the mechanism was trained on (any stored run), its best metric (the
  best learning rate, width and seed, in the metric's direction), its rank among every
  mechanism trained on that point, and the best of them; a plot of the best metric vs model
  width per task point when it was trained at several widths.
- Peers: the newest peers run that compared it: ours vs code nobody here wrote, with each
  ratio's reliability as the report judges it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from attnzoo.report import quality_point
from attnzoo.report.common import badge, esc, num, table, td, when
from attnzoo.report.palette import COLORS, MARKERS, Style
from attnzoo.report.plots import Panel, panels_svg
from attnzoo.report.quality_rows import UNKNOWN_TASK, TaskInfo, pick_best, task_infos
from attnzoo.report.trust import OK, gemm_error, peer_trust
from attnzoo.site.common import mechanism_link, not_measured
from attnzoo.site.measured import Measured, PeerRun

Row = dict[str, Any]
Point = tuple[str, str]  # (task, task_config JSON)
GREY = "#9a9a9a"


def quality_section(name: str, measured: Measured | None, known: Sequence[str]) -> str:
    """Best metric per task point, with its rank among the mechanisms trained there."""
    command = f"attnzoo bench quality --mixers {name}"
    mine = measured.quality_of(name) if measured is not None else []
    if measured is None or not mine:
        return not_measured("quality run trained this mechanism", command)
    infos = task_infos(measured.tasks)
    points: dict[Point, list[Row]] = defaultdict(list)
    for r in measured.quality:
        points[(r["task"], r["task_config"] or "")].append(r)
    body: list[list[str]] = []
    panels: list[Panel] = []
    bounded: list[bool] = []
    for point in sorted({(r["task"], r["task_config"] or "") for r in mine}):
        rows = points[point]
        info = _info(rows, infos)
        best = {m: pick_best([r for r in rows if r["mixer"] == m], info.maximize)
                for m in sorted({r["mixer"] for r in rows})}  # fmt: skip
        sign = 1.0 if info.maximize else -1.0
        ranked = sorted((m for m in best if best[m]["best_metric"] is not None),
                        key=lambda m: -sign * best[m]["best_metric"])  # fmt: skip
        own = best[name]
        label = quality_point(own, measured.tasks)
        rank = f"{ranked.index(name) + 1} of {len(ranked)}" if name in ranked else "-"
        top = ranked[0] if ranked else None
        top_cell = (
            f"<td>{mechanism_link(top, known)} "
            f"{esc(format(best[top]['best_metric'], info.fmt))}</td>"
            if top
            else td("-", "na")
        )
        body.append(
            [td(label), td(info.axis), _metric(own, info, top == name), td(own["d_model"]),
             td(f"{own['lr']:g}"), td(own["seed"]), td(own["run_id"]), td(rank), top_cell]
        )  # fmt: skip
        series = [(m, _by_width([r for r in rows if r["mixer"] == m], info)) for m in best]
        if any(len(pts) > 1 for _, pts in series):
            panels.append((label, [(m, pts) for m, pts in series if pts]))
            bounded.append(info.bounded)
    note = (
        '<p class="muted">Per task point (the task and the settings that name it), the best '
        "stored model of this mechanism over learning rates, widths and seeds, in the metric's "
        "direction; rank and best among every mechanism trained on the same point (any run). "
        "Green: this mechanism is the best there.</p>"
    )
    out = note + table(["task point", "metric", "best", "d_model", "lr", "seed", "run",
                        "rank", "best of all mechanisms"], body, "quality-best")  # fmt: skip
    if panels:
        ylim = (0.0, 1.02) if all(bounded) else None
        svg = panels_svg(f"{name}: best metric vs model width", "model width d_model",
                         "best metric", panels, xscale="log2", ylim=ylim,
                         styles=_styles(name, panels))  # fmt: skip
        out += (
            f'<figure class="plot">{svg}<figcaption>the best learning rate and seed at each width '
            f"of <b>{esc(name)}</b> (blue) and of the other mechanisms trained on the same task "
            "point (grey), one panel per task point (the table gives each metric's direction)"
            "</figcaption></figure>"
        )
    return out


def _styles(name: str, panels: Sequence[Panel]) -> dict[str, Style]:
    """This mechanism in the first palette colour, the others grey with their own markers."""
    others = sorted({m for _, series in panels for m, _ in series} - {name})
    styles = {m: Style(GREY, MARKERS[(i + 1) % len(MARKERS)]) for i, m in enumerate(others)}
    styles[name] = Style(COLORS[0], MARKERS[0])
    return styles


def _info(rows: Sequence[Row], infos: dict[tuple[int, str, str], TaskInfo]) -> TaskInfo:
    for r in rows:
        info = infos.get((r["run_id"], r["task"], r["task_config"]))
        if info is not None:
            return info
    return UNKNOWN_TASK


def _metric(row: Row, info: TaskInfo, top: bool) -> str:
    value = row["best_metric"]
    if value is None:
        return td("-", "num na")
    return td(format(value, info.fmt), "num ok" if top else "num")


def _by_width(rows: Sequence[Row], info: TaskInfo) -> list[tuple[float, float, None]]:
    out = []
    for d in sorted({r["d_model"] for r in rows}):
        best = pick_best([r for r in rows if r["d_model"] == d], info.maximize)
        if best["best_metric"] is not None:
            out.append((float(d), float(best["best_metric"]), None))
    return out


def peers_section(data: PeerRun | None) -> str:
    """The newest peers run's rows of this mechanism, each ratio with its reliability."""
    if data is None or not data.rows:
        return not_measured("peers run compared this mechanism", "attnzoo bench peers",
                            " (<code>--list</code> names the cases)")  # fmt: skip
    run = data.run
    body = []
    for r in data.rows:
        label, why = peer_trust(r, data.busy)
        mark = "" if label == OK else "~"
        cls = "num" if label != OK else ("num ok" if r["ratio"] >= 1 else "num bad")
        error = gemm_error(r["gemm_fraction"])
        frac = (f'<td class="bad">{badge("measurement error", error)}</td>' if error
                else num(r["gemm_fraction"], ".3f"))  # fmt: skip
        body.append(
            [td(r["case_name"]), td(r["peer"]), td(r["size"]), num(r["ours_s"] * 1e3, ".3f"),
             num(r["peer_s"] * 1e3, ".3f"), f'<td class="{cls}">{mark}{r["ratio"]:.2f}x</td>',
             f"<td>{badge(label, why) if label != OK else 'ok'}</td>", frac,
             num(r["rel_diff"], ".1e"), td("yes" if r["ok"] else "NO", "" if r["ok"] else "bad")]
        )  # fmt: skip
    busy = (
        '<p class="warn">The machine was busy during this run: every ratio is unreliable.</p>'
        if data.busy
        else ""
    )
    note = (
        f'<p class="muted">Run {run["run_id"]} ({esc(run["status"])}, '
        f"{esc(when(run['started_at']))}), the newest peers run that compared it. Each row builds "
        "ours and the peer on the same inputs and weights, checks the outputs agree, then times "
        "both interleaved. peer / ours above 1: ours is faster. A ratio marked ~ is not reliable "
        "(too few repeats, a noisy side or a busy machine).</p>"
    )
    head = ["case", "peer", "size", "ours ms", "peer ms", "peer / ours", "reliability",
            "fraction of GEMM", "max rel diff", "equal"]  # fmt: skip
    return busy + note + table(head, body, "peers-table")
