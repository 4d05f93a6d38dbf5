"""``attnzoo report``: one self-contained offline HTML page from the store (no torch, no CDN).

Sections: runs and their environment, harness calibration, capability matrix (mechanism x
pattern x mask, verified / failed / unsupported), latency and memory vs T (log-log, per pattern
and mode), scaling exponents and efficiency lengths, fraction of the GEMM limit, mask axis,
skips and failures. With several runs, lines are labelled by run and a comparison table shows
latency ratios between the first run and each later one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnzoo.report.common import esc as _e
from attnzoo.report.common import num as _num
from attnzoo.report.common import table as _table
from attnzoo.report.common import td as _td
from attnzoo.report.common import when as _when
from attnzoo.report.cp import cp_section
from attnzoo.report.plots import loglog_svg
from attnzoo.report.quality import quality_section
from attnzoo.report.scaling import derived_table
from attnzoo.spec import PATTERNS, stored_layout
from attnzoo.store import Store

MODES = {
    "fwd": "forward",
    "fwdbwd": "forward + backward",
    "step": "one streaming step at position T",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:1rem 2rem;color:#1b1b1b;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #ccc}
h3{margin-bottom:.3rem} nav a{margin-right:.9rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #d0d0d0;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#0a6b2f;font-weight:600} .bad{color:#b00020;font-weight:600} .na{color:#888}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1rem}
figure{margin:0} figcaption{font-size:.8rem;color:#555}
svg{max-width:100%;height:auto} .muted{color:#666;font-size:.85rem} .scroll{overflow-x:auto}
"""


def _label(r: dict[str, Any], multi: bool) -> str:
    base = f"{r['mixer']}/{r['impl']}"
    return f"run {r['run_id']}: {base}" if multi else base


def build_report(store: Store, run_ids: Sequence[int] | None = None) -> str:
    """The report page as a string. ``run_ids`` defaults to the latest speed run."""
    if not run_ids:
        latest = store.latest_run_id("speed")
        others = ("quality", "cp", "peers")
        if latest is None and all(store.latest_run_id(k) is None for k in others):
            raise ValueError(
                f"store {store.path} has no speed runs yet; run `attnzoo bench speed` first "
                "(or `attnzoo bench quality`, `bench cp`, `bench peers`)"
            )
        run_ids = [] if latest is None else [latest]  # a quality-only store: no speed sections
    runs = [store.run(r) for r in run_ids]
    rows = store.speed(run_ids)
    skips = store.skips(run_ids)
    checks = store.checks(run_ids)
    specs = {s["name"]: s for r in run_ids for s in store.specs(r)}
    multi = len(run_ids) > 1
    if not run_ids:  # a store with quality runs only
        note = (
            "<p>No speed runs in this store: <code>attnzoo bench speed</code> measures the "
            "latency, memory and capability sections.</p>"
        )
        sections = [("speed", "Speed", note), ("skips", "Skipped and failed work", _skips([]))]
    else:
        sections = [
            ("runs", "Runs and environment", _runs(runs)),
            ("capabilities", "Capability matrix", _capabilities(specs, checks)),
            (
                "latency",
                "Latency vs sequence length",
                _plots(rows, "median_s", 1e3, "latency (ms)", multi),
            ),
            (
                "memory",
                "Peak memory vs sequence length",
                _plots(rows, "peak_bytes", 2**-20, "peak memory (MiB)", multi),
            ),
            (
                "scaling",
                "Scaling exponents and efficiency lengths",
                _scaling(rows, baseline_of(runs)),
            ),
            ("gemm", "Fraction of the GEMM limit", _gemm(rows, runs)),
            ("masks", "Mask axis (self patterns)", _masks(rows)),
            ("skips", "Skipped and failed work", _skips(skips)),
        ]
    # every quality suite's latest run; latencies from the report's (last) speed run
    quality = quality_section(store, run_ids[-1] if run_ids else None)
    sections.insert(-1, ("quality", "Quality (trained on seeded tasks)", quality))
    peer_run = store.latest_run_id("peers")
    if peer_run is not None:
        peer_skips = store.skips([peer_run])
        section = _peers(store.run(peer_run), store.peers([peer_run]), peer_skips)
        sections.insert(-1, ("peers", "Against peers (same math, one run)", section))
    cp = cp_section(store)
    if cp is not None:
        sections.insert(-1, ("cp", "Context parallelism (torch.distributed)", cp))
    if multi:
        sections.insert(2, ("compare", "Run comparison", _compare(rows, run_ids)))
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "\n".join(
        f'<section id="{sid}"><h2>{_e(title)}</h2>\n{content}</section>'
        for sid, title, content in sections
    )
    title = "attnzoo speed report: run " + ", ".join(str(r) for r in run_ids)
    if not run_ids:
        title = "attnzoo report (no speed runs)"
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
        f'<h1>{_e(title)}</h1><p class="muted">generated {stamp} from {_e(store.path.name)}; '
        f"{len(rows)} measurements, {len(skips)} skipped or failed, {len(specs)} mechanisms. "
        f"Times are medians after warm-up on a shared machine: compare ratios within a run.</p>"
        f"<nav>{nav}</nav>\n{body}\n</body></html>\n"
    )


def write_report(store: Store, out_dir: Path, run_ids: Sequence[int] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(build_report(store, run_ids), encoding="utf-8")
    tmp.replace(path)  # readers never see a half-written page
    return path


# ---- sections ---------------------------------------------------------------------------
def _runs(runs: list[dict[str, Any]]) -> str:
    head = [
        "run",
        "status",
        "suite",
        "started",
        "finished",
        "git",
        "CPU",
        "threads",
        "GPU",
        "torch",
        "GEMM GFLOP/s",
        "command",
    ]
    rows = []
    for r in runs:
        env = r["env"]
        status_cls = "ok" if r["status"] == "complete" else "bad"
        rows.append(
            [
                _td(r["run_id"]), _td(r["status"] + (f" ({r['note']})" if r.get("note") else ""), status_cls),
                _td(r["suite"]), _td(_when(r["started_at"])), _td(_when(r["finished_at"])), _td((r["git_sha"] or "-")[:12] + ("-dirty" if (r["git_sha"] or "").endswith("dirty") else "")),
                _td(env.get("cpu")), _td(env.get("torch_threads")), _td(env.get("gpu") or "none"),
                _td(env.get("versions", {}).get("torch")), _num(r["gemm_gflops"], ".1f"), _td(r["command"]),
            ]
        )  # fmt: skip
    out = _table(head, rows, "runs-table")
    cal_rows = []
    for r in runs:
        h = r["env"].get("harness")
        if not h:
            continue
        cal_rows.append(
            [
                _td(r["run_id"]), _td(h["T"]), _num(h["noop_s"] * 1e9, ".0f"), _num(h["noop_fraction"] * 100, ".4f"),
                _num(h["sdpa_harness_s"] * 1e3, ".3f"), _num(h["sdpa_timeit_s"] * 1e3, ".3f"),
                _num(h["harness_vs_timeit"], ".3f"), _num(h["sdpa_op_s"] * 1e3, ".3f"),
            ]
        )  # fmt: skip
    if cal_rows:
        out += '<h3>Harness calibration</h3><p class="muted">The harness\'s own cost on an empty op, and raw causal SDPA timed by the harness vs a hand-written <code>timeit</code> in the same run.</p>'
        out += _table(
            ["run", "T", "empty-op ns/call", "empty op % of SDPA", "SDPA harness ms", "SDPA timeit ms", "harness / timeit", "softmax_attention(sdpa) ms"],
            cal_rows, "harness-table",
        )  # fmt: skip
    out += (
        "<details><summary>full environment (JSON)</summary>"
        + "".join(f"<pre>{_e(json.dumps(r['env'], indent=1, sort_keys=True))}</pre>" for r in runs)
        + "</details>"
    )
    return out


def _capabilities(specs: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    verdict: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for c in checks:
        verdict[(c["mixer"], c["pattern"])].append(bool(c["ok"]))
    mask_kinds = sorted({m for s in specs.values() for m in s["masks"]})
    head = [
        "mechanism",
        "family",
        "layout",
        "role",
        *PATTERNS,
        *mask_kinds,
        "state",
        "exact",
        "maps",
        "complexity",
        "verified against",
        "paper",
    ]
    rows = []
    for name, s in sorted(specs.items()):
        cells = [_td(name), _td(s["family"]), _td(stored_layout(s)), _td(s.get("role", "mixer"))]
        for p in PATTERNS:
            if p not in s["patterns"]:
                cells.append(_td("unsupported", "na"))
            elif not verdict.get((name, p)):
                cells.append(_td("not checked", "na"))
            elif all(verdict[(name, p)]):
                cells.append(_td("verified", "ok"))
            else:
                cells.append(_td("FAILED check", "bad"))
        cells += [_td("yes", "ok") if m in s["masks"] else _td("-", "na") for m in mask_kinds]
        paper = s["paper"]
        cells += [
            _td(s["state"]), _td("yes" if s["exact"] else "no"),
            _td("yes" if s.get("attention_maps") else "no"), _td(s["complexity"]), _td(s["peer"]),
            f'<td>{_e(paper["title"])} ({_e(paper["year"])})<br><span class="muted">{_e(paper["url"])}</span></td>',
        ]  # fmt: skip
        rows.append(cells)
    note = (
        '<p class="muted">"verified": every implementation of the mechanism passed this run\'s '
        "correctness gate on that pattern (fast paths vs the reference, forward and backward). "
        '"maps": the block returns its attention weights (<code>attention_maps()</code>). Runs '
        "recorded before layouts show the layout their dims meant.</p>"
    )
    return note + _table(head, rows, "capability-table")


def _plots(rows: list[dict[str, Any]], key: str, scale: float, ylabel: str, multi: bool) -> str:
    figs = []
    for mode in MODES:
        for pattern in PATTERNS:
            base_mask = "causal" if pattern.startswith("causal") else "full"
            series: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for r in rows:
                if (
                    r["mode"] == mode
                    and r["pattern"] == pattern
                    and r["mask"] == base_mask
                    and r[key] is not None
                ):
                    series[_label(r, multi)].append((r["seq_len"], r[key] * scale))
            if not series:
                continue
            title = f"{pattern}, {MODES[mode]}"
            svg = loglog_svg(
                f"{ylabel.split(' (')[0]}: {title}",
                "sequence length T (tokens)",
                ylabel,
                sorted(series.items()),
            )
            figs.append(
                f"<figure>{svg}<figcaption>{_e(title)}, mask {base_mask}; one line per mechanism/impl</figcaption></figure>"
            )
    return '<div class="grid">' + "\n".join(figs) + "</div>" if figs else "<p>No measurements.</p>"


def baseline_of(runs: Sequence[dict[str, Any]]) -> str | None:
    """The baseline mechanism the first of ``runs`` (speed runs) compared against."""
    for run in runs:
        config = run.get("config")
        config = json.loads(config) if isinstance(config, str) else (config or {})
        if config.get("baseline"):
            return str(config["baseline"])
    return None


def _scaling(rows: list[dict[str, Any]], baseline: str | None) -> str:
    table = derived_table(rows, baseline)
    head = ["mechanism", "impl", "pattern", "mask", "mode", "lengths", "time exponent", "memory exponent",
            "efficiency length (time)", "efficiency length (memory)"]  # fmt: skip
    body = [
        [
            _td(d["mixer"]), _td(d["impl"]), _td(d["pattern"]), _td(d["mask"]), _td(d["mode"]),
            _td(", ".join(map(str, d["lengths"]))), _num(d["time_exponent"], ".2f"), _num(d["memory_exponent"], ".2f"),
            _td("baseline" if d["mixer"] == baseline else (d["efficiency_length_time"] or "never (in range)")),
            _td("baseline" if d["mixer"] == baseline else (d["efficiency_length_memory"] or "never (in range)")),
        ]
        for d in table
    ]  # fmt: skip
    note = (
        '<p class="muted">Exponent p of a least-squares fit time ~ T^p (log-log). Efficiency length (CAB): '
        "the smallest measured T from which the mechanism (best impl) stays faster / smaller than the "
        f"run's baseline <code>{_e(baseline or '(none recorded)')}</code> (best impl) on the same "
        "pattern, mask and mode.</p>"
    )
    return note + _table(head, body, "scaling-table")


def _gemm(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    longest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        k = (r["run_id"], r["mixer"], r["impl"], r["pattern"], r["mask"], r["mode"])
        if k not in longest or r["seq_len"] > longest[k]["seq_len"]:
            longest[k] = r
    head = [
        "run",
        "mechanism",
        "impl",
        "pattern",
        "mask",
        "mode",
        "T",
        "GFLOP",
        "GFLOP/s",
        "fraction of GEMM",
    ]
    body = [
        [
            _td(r["run_id"]), _td(r["mixer"]), _td(r["impl"]), _td(r["pattern"]), _td(r["mask"]), _td(r["mode"]),
            _td(r["seq_len"]), _num(r["flops"] / 1e9 if r["flops"] else None, ".2f"), _num(r["gflops_per_s"], ".1f"),
            _num(r["gemm_fraction"], ".3f"),
        ]
        for _, r in sorted(longest.items())
    ]  # fmt: skip
    rates = ", ".join(
        f"run {r['run_id']}: {r['gemm_gflops']:.1f} GFLOP/s" for r in runs if r["gemm_gflops"]
    )
    note = (
        f'<p class="muted">Analytic FLOPs (2 per multiply-add over the attended pairs; forward+backward = 3x forward) '
        f"divided by the median time, at the longest measured T, against this machine's fp32 GEMM rate measured in the same run ({_e(rates)}).</p>"
    )
    return note + _table(head, body, "gemm-table")


def _peers(run: dict[str, Any], rows: list[dict[str, Any]], skips: list[dict[str, Any]]) -> str:
    head = ["case", "mechanism", "peer", "size", "ours ms", "peer ms", "peer / ours",
            "ours GFLOP/s", "fraction of GEMM", "ours peak MiB", "peer peak MiB", "max rel diff",
            "equal", "notes"]  # fmt: skip
    mib = 2**-20
    body = [
        [
            _td(r["case_name"]), _td(r["mechanism"]), _td(r["peer"]), _td(r["size"]),
            _num(r["ours_s"] * 1e3, ".2f"), _num(r["peer_s"] * 1e3, ".2f"),
            _td(f"{r['ratio']:.2f}x", "ok" if r["ratio"] >= 1 else "bad"),
            _num(r["ours_gflops"], ".1f"), _num(r["gemm_fraction"], ".3f"),
            _num(r["ours_peak_bytes"] * mib if r["ours_peak_bytes"] is not None else None, ".1f"),
            _num(r["peer_peak_bytes"] * mib if r["peer_peak_bytes"] is not None else None, ".1f"),
            _num(r["rel_diff"], ".1e"), _td("yes" if r["ok"] else "NO", "" if r["ok"] else "bad"),
            _td(r["detail"] or ""),
        ]
        for r in rows
    ]  # fmt: skip
    missing = "".join(
        f"<li>{_e(s['impl'])} (n={s['seq_len']}): {_e(s['kind'])}, {_e(s['reason'])}</li>"
        for s in skips
    )
    note = (
        f'<p class="muted">Run {run["run_id"]} ({_e(run["status"])}, {_e(_when(run["started_at"]))}): '
        "each row builds ours and the peer on the same inputs and weights, checks the outputs agree "
        "(max |ours - peer| / max |peer| within the case's tolerance), then times both "
        f"interleaved, median of {rows[0]['repeats'] if rows else '-'} calls. Our FLOPs count the "
        "work our path does; the GEMM fraction divides our rate by this machine's GEMM rate "
        "timed round-robin with the two (each row's notes give it; at the run's start it was "
        f"{run['gemm_gflops'] or 0:.1f} GFLOP/s).</p>"
    )
    table = _table(head, body, "peers-table") if rows else "<p>No peer rows recorded.</p>"
    return note + table + (f"<ul>{missing}</ul>" if missing else "")


def _masks(rows: list[dict[str, Any]]) -> str:
    self_rows = [r for r in rows if r["pattern"].endswith("self")]
    masks = sorted({r["mask"] for r in self_rows})
    longest_t = max((r["seq_len"] for r in self_rows), default=None)
    if longest_t is None:
        return "<p>No self-pattern measurements.</p>"
    cell: dict[tuple, float] = {}
    for r in self_rows:
        if r["seq_len"] == longest_t:
            cell[(r["mixer"], r["impl"], r["mode"], r["mask"])] = r["median_s"]
    keys = sorted({k[:3] for k in cell})
    body = [
        [_td(m), _td(i), _td(mode)]
        + [
            _num(cell[(m, i, mode, mk)] * 1e3, ".2f")
            if (m, i, mode, mk) in cell
            else _td("-", "na")
            for mk in masks
        ]
        for m, i, mode in keys
    ]
    return (
        f'<p class="muted">Median latency (ms) at T = {longest_t} per mask (SYS-LCA\'s kernel x mask axis).</p>'
        + _table(["mechanism", "impl", "mode", *masks], body, "mask-table")
    )


def _skips(skips: list[dict[str, Any]]) -> str:
    if not skips:
        return '<p class="ok">Nothing was skipped and nothing failed.</p>'
    head = ["run", "kind", "mechanism", "impl", "pattern", "mask", "mode", "T", "reason"]
    body = [
        [_td(s["run_id"]), _td(s["kind"], "bad" if s["kind"] == "failed" else "na"), _td(s["mixer"]), _td(s["impl"]),
         _td(s["pattern"]), _td(s["mask"]), _td(s["mode"]), _td(s["seq_len"]), _td(s["reason"])]
        for s in skips
    ]  # fmt: skip
    return _table(head, body, "skips-table")


def _compare(rows: list[dict[str, Any]], run_ids: Sequence[int]) -> str:
    first = run_ids[0]
    by_key: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        by_key[(r["mixer"], r["impl"], r["pattern"], r["mask"], r["mode"], r["seq_len"])][
            r["run_id"]
        ] = r["median_s"]
    head = ["mechanism", "impl", "pattern", "mask", "mode", "T", f"run {first} ms"] + [
        f"run {r} / run {first}" for r in run_ids[1:]
    ]
    body = []
    for k, v in sorted(by_key.items()):
        if first not in v:
            continue
        body.append(
            [_td(x) for x in k]
            + [_num(v[first] * 1e3, ".2f")]
            + [_num(v[r] / v[first] if r in v else None, ".3f") for r in run_ids[1:]]
        )
    return (
        '<p class="muted">Latency ratio of each later run to the first, for matching measurements.</p>'
        + _table(head, body, "compare-table")
    )
