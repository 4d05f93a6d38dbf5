"""``attnzoo report``: a self-contained offline HTML report from the store (no torch, no CDN),
written as linked pages that share one navigation bar:

- ``index.html``: how far the numbers can be trusted (timings ok / noisy / of few repeats,
  figures withheld, machine load, interrupted runs), which mechanism to use per layout and
  pattern (:mod:`attnzoo.report.summary`), and the contents;
- ``speed-<layout>-<pattern>.html``: one per kind of input measured (:mod:`.speed`);
- ``capabilities.html``, ``quality.html``, ``peers.html`` and ``cp.html`` (the latter two when
  the store has such runs), ``runs.html`` (runs, machine load, notes, calibration, skips).

Each mechanism has one colour and marker in every plot of every page (:mod:`.palette`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnzoo.report.common import Page, esc
from attnzoo.report.cp import cp_section
from attnzoo.report.palette import Palette
from attnzoo.report.peers import peers_section
from attnzoo.report.quality import quality_section, shown_runs
from attnzoo.report.runs import capabilities_section, runs_section, skips_section
from attnzoo.report.speed import speed_pages
from attnzoo.report.summary import Recommend, recommendations, trust_overview
from attnzoo.report.trust import run_busy
from attnzoo.spec import stored_layout
from attnzoo.store import Store

INDEX = "index.html"
FIXED = ("runs.html", "capabilities.html", "quality.html", "peers.html", "cp.html")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:.5rem 2rem 2rem;color:#1b1b1b;line-height:1.4}
h1{font-size:1.5rem;margin:.6rem 0 .2rem} h2{margin-top:1.8rem;border-bottom:1px solid #ccc}
h3{margin-bottom:.3rem}
nav{font-size:.85rem;padding:.4rem 0;border-bottom:1px solid #ddd;display:flex;flex-wrap:wrap;gap:.2rem .9rem}
nav a[aria-current]{font-weight:700;color:#1b1b1b;text-decoration:none}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #d0d0d0;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#0a6b2f;font-weight:600} .bad{color:#b00020;font-weight:600} .na{color:#888}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1rem}
figure{margin:0} figcaption{font-size:.8rem;color:#555}
svg{max-width:100%;height:auto} .muted{color:#666;font-size:.85rem} .scroll{overflow-x:auto}
.badge{display:inline-block;font-size:.7rem;font-weight:600;border-radius:.6rem;padding:0 .4rem;
margin-left:.3rem;white-space:nowrap;border:1px solid}
.badge.noisy{color:#8a4b00;background:#fff1dc;border-color:#e0a050}
.badge.few{color:#555;background:#f0f0f0;border-color:#aaa}
.badge.bad{color:#fff;background:#b00020;border-color:#b00020}
.swatch{display:inline-block;width:.7rem;height:.7rem;margin-right:.3rem;border-radius:2px;
vertical-align:baseline}
.range{color:#666;font-size:.78rem} .warn{color:#8a4b00}
.caveat{font-size:.78rem;color:#555;max-width:26rem} .caveat ul{margin:.2rem 0;padding-left:1rem}
ol.top{margin:.1rem 0;padding-left:1.3rem} .q{font-size:.78rem;color:#555}
.overview{background:#f7f7f4;border:1px solid #ddd;padding:.3rem .8rem;font-size:.88rem}
.overview ul{margin:.3rem 0;padding-left:1.2rem}
.legend{font-size:.8rem;color:#444;background:#fafafa;border-left:3px solid #ccc;padding:.3rem .6rem}
"""


@dataclasses.dataclass(frozen=True)
class Report:
    """The report's pages as HTML by file name, the index first; ``text in report`` searches
    every page."""

    html: dict[str, str]

    def __contains__(self, text: object) -> bool:
        return any(str(text) in page for page in self.html.values())

    def page(self, file: str) -> str:
        if file not in self.html:
            raise KeyError(f"report has no page {file!r}; pages: {', '.join(self.html)}")
        return self.html[file]


def build_report(store: Store, run_ids: Sequence[int] | None = None, *,
                 recommend: Recommend | None = None) -> Report:  # fmt: skip
    """The report's pages. ``run_ids`` (speed runs) defaults to the latest speed run;
    ``recommend`` defaults to :func:`attnzoo.recommend.recommend`."""
    if not run_ids:
        latest = store.latest_run_id("speed")
        others = ("quality", "cp", "peers")
        if latest is None and all(store.latest_run_id(k) is None for k in others):
            raise ValueError(
                f"store {store.path} has no speed runs yet; run `attnzoo bench speed` first "
                "(or `attnzoo bench quality`, `bench cp`, `bench peers`)"
            )
        run_ids = [] if latest is None else [latest]  # a store without speed runs
    speed_runs = [store.run(r) for r in run_ids]
    rows = store.speed(run_ids)
    specs = {s["name"]: s for r in run_ids for s in store.specs(r)}
    layouts = {name: stored_layout(s) for name, s in specs.items()}
    baseline = baseline_of(speed_runs)
    names, groups = _names(store, rows)
    palette = Palette(names, groups)
    peer_id, cp_id = store.latest_run_id("peers"), store.latest_run_id("cp")
    quality_runs = shown_runs(store)
    extra = [store.run(r) for r in (peer_id, cp_id) if r is not None] + quality_runs
    runs = sorted({r["run_id"]: r for r in speed_runs + extra}.values(), key=lambda r: r["run_id"])
    notes = store.notes([r["run_id"] for r in runs])
    peer_rows = store.peers([peer_id]) if peer_id is not None else []
    peer_busy = peer_id is not None and run_busy(store.run(peer_id), notes)

    pages = speed_pages(rows, speed_runs, layouts, baseline, palette)
    fixed = [
        Page("capabilities.html", "capabilities", "which mechanism supports which pattern and "
             "mask, and passed its correctness check",
             capabilities_section(specs, store.checks(run_ids), palette)),
        Page("quality.html", "quality", "accuracy on seeded tasks vs width, state and latency",
             quality_section(store, run_ids[-1] if run_ids else None, palette)),
    ]  # fmt: skip
    if peer_id is not None:
        section = peers_section(store.run(peer_id), peer_rows, store.skips([peer_id]), peer_busy,
                                palette)  # fmt: skip
        fixed.append(Page("peers.html", "peers", "ours against code nobody here wrote, same "
                          "inputs and weights", section))  # fmt: skip
    cp = cp_section(store)
    if cp is not None:
        fixed.append(Page("cp.html", "context parallelism", "torch.distributed strategies: "
                          "latency, memory and bytes per rank", cp))  # fmt: skip
    skips = store.skips(run_ids)
    fixed.append(Page("runs.html", "runs", "runs, machine load, notes, harness calibration, "
                      f"skipped and failed work ({len(skips)})",
                      runs_section(runs, notes) + "<h2 id=\"skips\">Skipped and failed work</h2>"
                      + skips_section(skips)))  # fmt: skip
    pages += fixed
    glance = trust_overview(runs, rows, peer_rows, peer_busy, notes, baseline)
    if run_ids:
        advice = recommendations(store, rows, layouts, run_ids, palette, recommend)
    else:
        advice = (
            "<p>No speed runs in this store: <code>attnzoo bench speed</code> measures the "
            "latency, memory and capability pages, and the recommendations here.</p>"
        )
    contents = "".join(f'<li><a href="{p.file}">{esc(p.title)}</a>: {esc(p.blurb)}</li>'
                       for p in pages)  # fmt: skip
    title = ("attnzoo report: speed run " + ", ".join(map(str, run_ids))) if run_ids else (
        "attnzoo report (no speed runs)")  # fmt: skip
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    index_body = (
        f'<p class="muted">generated {stamp} from {esc(store.path.name)}; {len(rows)} '
        f"measurements, {len(skips)} skipped or failed, {len(specs)} mechanisms. Times are "
        "medians after warm-up on a shared machine: compare ratios within a run.</p>"
        f'<h2 id="glance">At a glance: how far to trust these numbers</h2>{glance}'
        f'<h2 id="advice">Which mechanism should I use?</h2>{advice}'
        f'<h2 id="contents">Contents</h2><ul>{contents}</ul>'
    )
    index = Page(INDEX, "summary", "", index_body)
    every = [index, *pages]
    return Report({p.file: _render(p, every, title) for p in every})


def _render(page: Page, pages: Sequence[Page], report_title: str) -> str:
    nav = "".join(
        f'<a href="{p.file}"' + (' aria-current="page"' if p.file == page.file else "")
        + f">{esc(p.title)}</a>"
        for p in pages
    )  # fmt: skip
    heading = report_title if page.file == INDEX else f"{page.title}: {report_title}"
    sid = Path(page.file).stem
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(heading)}</title><style>{CSS}</style></head><body>\n"
        f"<nav>{nav}</nav>\n<h1>{esc(heading)}</h1>\n"
        f'<section id="{sid}">\n{page.body}\n</section>\n</body></html>\n'
    )


def write_report(store: Store, out_dir: Path, run_ids: Sequence[int] | None = None) -> Path:
    """Write every page into ``out_dir`` (pages of an earlier report this one no longer has are
    removed) and return the index's path."""
    report = build_report(store, run_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in report.html.items():
        path = out_dir / name
        tmp = path.with_suffix(".html.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # readers never see a half-written page
    for old in [*out_dir.glob("speed-*.html"), *(out_dir / f for f in FIXED)]:
        if old.name not in report.html and old.exists():
            old.unlink()
    return out_dir / INDEX


def baseline_of(runs: Sequence[dict[str, Any]]) -> str | None:
    """The baseline mechanism the first of ``runs`` (speed runs) compared against."""
    for run in runs:
        config = run.get("config")
        config = json.loads(config) if isinstance(config, str) else (config or {})
        if config.get("baseline"):
            return str(config["baseline"])
    return None


def _names(store: Store, rows: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    """Every mechanism name the store knows (specs of every speed run, measured, trained or
    peer-compared) and the layout of those with a stored spec: the palette's slots, so a colour
    does not depend on the runs shown."""
    names = {r["mixer"] for r in rows}
    layouts: dict[str, str] = {}
    for run in store.runs("speed"):
        for spec in store.specs(run["run_id"]):
            layouts[spec["name"]] = stored_layout(spec)
    names |= set(layouts)
    names |= {r["mixer"] for r in store.quality()}
    names |= {r["mechanism"] for r in store.peers()}
    return names, layouts
