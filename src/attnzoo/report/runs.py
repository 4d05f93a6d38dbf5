"""The report's runs page (runs, their machine load and notes, harness calibration, skipped and
failed work) and capability page (mechanism x pattern x mask, verified / failed / unsupported)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from attnzoo.report.common import esc, num, table, td, when
from attnzoo.report.palette import Palette
from attnzoo.report.trust import machine_summary, run_busy
from attnzoo.spec import PATTERNS, stored_layout

Row = dict[str, Any]


def runs_section(runs: list[Row], notes: list[Row]) -> str:
    head = ["run", "status", "suite", "started", "finished", "git", "CPU", "threads", "GPU",
            "torch", "GEMM GFLOP/s", "machine", "command"]  # fmt: skip
    rows = []
    for r in runs:
        env = r["env"]
        sha = r["git_sha"] or ""
        status = r["status"] + (f" ({r['note']})" if r.get("note") else "")
        machine = machine_summary(r, notes)
        rows.append(
            [td(r["run_id"]), td(status, "ok" if r["status"] == "complete" else "bad"),
             td(r["suite"]), td(when(r["started_at"])), td(when(r["finished_at"])),
             td((sha or "-")[:12] + ("-dirty" if sha.endswith("dirty") else "")),
             td(env.get("cpu")), td(env.get("torch_threads")), td(env.get("gpu") or "none"),
             td(env.get("versions", {}).get("torch")), num(r["gemm_gflops"], ".1f"),
             td(machine, "bad" if run_busy(r, notes) else ""), td(r["command"])]
        )  # fmt: skip
    out = table(head, rows, "runs-table")
    mine = [n for n in notes if n["run_id"] in {r["run_id"] for r in runs}]
    if mine:
        body = [[td(n["run_id"]), td(n["kind"]), td(when(n.get("recorded_at"))), td(n["text"])]
                for n in mine]  # fmt: skip
        out += "<h3>Notes the runs made</h3>" + table(["run", "kind", "when", "note"], body,
                                                      "notes-table")  # fmt: skip
    out += _calibration(runs)
    out += (
        "<details><summary>full environment and machine state (JSON)</summary>"
        + "".join(
            f"<pre>{esc(json.dumps({'env': r['env'], 'machine': r.get('machine') or {}}, indent=1, sort_keys=True, default=str))}</pre>"
            for r in runs
        )
        + "</details>"
    )  # fmt: skip
    return out


def _calibration(runs: list[Row]) -> str:
    rows = []
    for r in runs:
        h = r["env"].get("harness")
        if not h:
            continue
        rows.append(
            [td(r["run_id"]), td(h["T"]), num(h["noop_s"] * 1e9, ".0f"), num(h["noop_fraction"] * 100, ".4f"),
             num(h["sdpa_harness_s"] * 1e3, ".3f"), num(h["sdpa_timeit_s"] * 1e3, ".3f"),
             num(h["harness_vs_timeit"], ".3f"), num(h["sdpa_op_s"] * 1e3, ".3f")]
        )  # fmt: skip
    if not rows:
        return ""
    head = ["run", "T", "empty-op ns/call", "empty op % of SDPA", "SDPA harness ms",
            "SDPA timeit ms", "harness / timeit", "softmax_attention(sdpa) ms"]  # fmt: skip
    return (
        '<h3>Harness calibration</h3><p class="muted">The harness\'s own cost on an empty op, '
        "and raw causal SDPA timed by the harness vs a hand-written <code>timeit</code> in the "
        "same run.</p>" + table(head, rows, "harness-table")
    )


def skips_section(skips: list[Row]) -> str:
    if not skips:
        return '<p class="ok">Nothing was skipped and nothing failed.</p>'
    head = ["run", "kind", "mechanism", "impl", "pattern", "mask", "mode", "T", "reason",
            "evidence"]  # fmt: skip
    body = [
        [td(s["run_id"]), td(s["kind"], "bad" if s["kind"] == "failed" else "na"), td(s["mixer"]),
         td(s["impl"]), td(s["pattern"]), td(s["mask"]), td(s["mode"]), td(s["seq_len"]),
         td(s["reason"]), _evidence(s.get("evidence"))]
        for s in skips
    ]  # fmt: skip
    return table(head, body, "skips-table")


def _evidence(evidence: str | None) -> str:
    if not evidence:
        return td("-", "na")
    try:
        text = json.dumps(json.loads(evidence), indent=1, sort_keys=True)
    except ValueError:
        text = evidence
    return f"<td><details><summary>evidence</summary><pre>{esc(text)}</pre></details></td>"


def capabilities_section(specs: dict[str, Row], checks: list[Row], palette: Palette) -> str:
    verdict: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for c in checks:
        verdict[(c["mixer"], c["pattern"])].append(bool(c["ok"]))
    mask_kinds = sorted({m for s in specs.values() for m in s["masks"]})
    head = ["mechanism", "family", "layout", "role", *PATTERNS, *mask_kinds, "state", "exact",
            "maps", "complexity", "verified against", "paper"]  # fmt: skip
    rows = []
    for name, s in sorted(specs.items()):
        cells = [f"<td>{palette.swatch(name)}{esc(name)}</td>", td(s["family"]),
                 td(stored_layout(s)), td(s.get("role", "mixer"))]  # fmt: skip
        for p in PATTERNS:
            if p not in s["patterns"]:
                cells.append(td("unsupported", "na"))
            elif not verdict.get((name, p)):
                cells.append(td("not checked", "na"))
            elif all(verdict[(name, p)]):
                cells.append(td("verified", "ok"))
            else:
                cells.append(td("FAILED check", "bad"))
        cells += [td("yes", "ok") if m in s["masks"] else td("-", "na") for m in mask_kinds]
        paper = s["paper"]
        cells += [
            td(s["state"]), td("yes" if s["exact"] else "no"),
            td("yes" if s.get("attention_maps") else "no"), td(s["complexity"]), td(s["peer"]),
            f'<td>{esc(paper["title"])} ({esc(paper["year"])})<br><span class="muted">{esc(paper["url"])}</span></td>',
        ]  # fmt: skip
        rows.append(cells)
    note = (
        '<p class="muted">"verified": every implementation of the mechanism passed this run\'s '
        "correctness gate on that pattern (fast paths vs the reference, forward and backward). "
        '"maps": the block returns its attention weights (<code>attention_maps()</code>). Runs '
        "recorded before layouts show the layout their dims meant. The square before a name is "
        "its colour in every plot.</p>"
    )
    return note + table(head, rows, "capability-table")
