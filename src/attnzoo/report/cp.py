"""The report's context-parallel section: the latest ``attnzoo bench cp`` run.

One table row per (strategy, mask, T, mode, world size) with its ranks folded: latency of the
slowest rank, the largest per-rank peak memory and its ratio to the same case at world size 1,
bytes sent per rank (counted) and whether every rank's count equals the strategy's analytic
formula, the spread of per-rank CPU time (compute balance) and of attended pairs, and the
exactness check against one process. A plot shows per-rank peak memory against world size.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from attnzoo.report.common import esc, num, table, td, when
from attnzoo.report.palette import Palette
from attnzoo.report.plots import Line, Mark, loglog_svg
from attnzoo.store import Store

Row = dict[str, Any]
KEY = ("strategy", "mask", "seq_len", "mode")


def cp_section(store: Store) -> str | None:
    """HTML of the latest cp run, or ``None`` when the store has none."""
    run_id = store.latest_run_id("cp")
    if run_id is None:
        return None
    run = store.run(run_id)
    rows, skips = store.cp([run_id]), store.cp_skips([run_id])
    cases = group_cases(rows)
    env, config = run.get("env") or {}, run.get("config") or {}
    launch = env.get("cp_launch", "spawned gloo workers on this machine")
    cpus = env.get("cpu_count")
    shape = (f"B={config.get('batch', '?')}, H={config.get('heads', '?')}, "
             f"K=V={config.get('head_dim', '?')}, fp32")  # fmt: skip
    note = (
        f'<p class="muted">Run {run["run_id"]} ({esc(run["status"])}, {esc(when(run["started_at"]))}'
        f"), {esc(launch)}. Every rank holds its shard of one global sequence; "
        "outputs (and with fwd+bwd the input gradients) are gathered and compared with the "
        f"single-process op ({esc(shape)}). Latency: median over repeats of the slowest rank. CPU time per rank "
        "is its compute (a rank blocked in a receive uses none): max/min across ranks is the "
        "load balance. Bytes: counted by the communicator over one call, per rank. "
        f"<b>Wall time on this machine ({esc(cpus or '?')} cores) does not scale past that many "
        "workers: more processes share the same cores.</b></p>"
    )
    head = ["strategy", "mask", "T", "mode", "world", "sharding", "latency ms", "peak MiB/rank",
            "memory vs world 1", "sent KiB/rank", "= analytic", "CPU max/min", "pairs max/min",
            "max abs err", "exact"]  # fmt: skip
    body = [_row(key, rs, cases) for key, rs in sorted(cases.items(), key=_order)]
    tab = table(head, body, "cp-table") if body else "<p>No context-parallel rows recorded.</p>"
    grouped: dict[tuple, list[Row]] = defaultdict(list)
    for s_ in skips:  # one line per (strategy, mask, reason): the same skip at every T and world
        grouped[(s_["strategy"], s_["mask"], s_["reason"])].append(s_)
    missing = "".join(
        f"<li>{esc(name)}, {esc(mask)} mask: {esc(reason)} (skipped at world "
        f"{_values(rs, 'world_size')}, T = {_values(rs, 'seq_len')}, {_values(rs, 'mode')})</li>"
        for (name, mask, reason), rs in grouped.items()
    )
    return note + tab + _memory_plot(cases) + (f"<ul>{missing}</ul>" if missing else "")


def _values(rows: list[Row], key: str) -> str:
    return ", ".join(esc(v) for v in sorted({r[key] for r in rows}))


def _order(item: tuple[tuple, list[Row]]) -> tuple:
    (strategy, mask, T, mode, world), _ = item
    return strategy, mask, mode, T, world


def group_cases(rows: list[Row]) -> dict[tuple, list[Row]]:
    """cp rows by case ``(strategy, mask, T, mode, world size)``, ranks together."""
    cases: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        cases[(*(r[k] for k in KEY), r["world_size"])].append(r)
    return cases


def summarise(rs: list[Row]) -> dict[str, Any]:
    """One case's ranks folded: latency (slowest rank), the largest peak and bytes sent, whether
    every rank's count equals the analytic one, max/min of CPU time and of pairs, rank 0's error
    and whether the case is exact (``None`` where not defined)."""
    cpu = [r["rank_cpu_s"] for r in rs]
    pairs = [r["pairs"] for r in rs if r["pairs"] is not None]
    errs = [r["max_abs_err"] for r in rs if r["max_abs_err"] is not None]
    exact = [r["exact"] for r in rs if r["exact"] is not None]
    return {
        "latency_s": rs[0]["latency_s"],
        "peak_bytes": max(r["peak_bytes"] for r in rs),
        "bytes_sent": max(r["bytes_sent"] for r in rs),
        "bytes_equal": all(r["bytes_sent"] == r["bytes_analytic"] for r in rs),
        "cpu_spread": max(cpu) / min(cpu) if min(cpu) > 0 else None,
        "pairs_spread": max(pairs) / min(pairs) if pairs and min(pairs) > 0 else None,
        "max_abs_err": errs[0] if errs else None,
        "exact": bool(exact) and all(exact),
    }


def _row(key: tuple, rs: list[Row], cases: dict[tuple, list[Row]]) -> list[str]:
    strategy, mask, T, mode, world = key
    c = summarise(rs)
    base = cases.get((strategy, mask, T, mode, 1))
    ratio = c["peak_bytes"] / summarise(base)["peak_bytes"] if base else None
    equal, ok = c["bytes_equal"], c["exact"]
    return [
        td(strategy), td(mask), td(T), td(mode), td(world), td(rs[0]["sharding"]),
        num(c["latency_s"] * 1e3, ".1f"), num(c["peak_bytes"] / 2**20, ".2f"),
        num(ratio, ".2f"), num(c["bytes_sent"] / 1024, ".0f"),
        td("yes" if equal else "NO", "ok" if equal else "bad"),
        num(c["cpu_spread"], ".2f"), num(c["pairs_spread"], ".2f"), num(c["max_abs_err"], ".1e"),
        td("yes" if ok else "NO", "ok" if ok else "bad"),
    ]  # fmt: skip


def _memory_plot(cases: dict[tuple, list[Row]]) -> str:
    """Per-rank peak memory vs world size, one line per (strategy, mask) at the largest T."""
    if not cases:
        return ""
    T = max(k[2] for k in cases)
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (strategy, mask, t, mode, world), rs in cases.items():
        if t == T and mode == "fwd":
            series[f"{strategy} {mask}"].append((world, max(r["peak_bytes"] for r in rs) / 2**20))
    if not series or all(len(p) < 2 for p in series.values()):
        return ""
    palette = Palette(series)  # strategies, not mechanisms: their own colours
    lines = [Line(label, [Mark(x, y) for x, y in pts], palette.style(label))
             for label, pts in sorted(series.items())]  # fmt: skip
    svg = loglog_svg(f"Per-rank peak memory, forward, T = {T}", "world size (processes)",
                     "peak MiB per rank", lines)  # fmt: skip
    return (
        f"<figure>{svg}<figcaption>Ideal: 1/world size (a slope of -1); the all-gather variant "
        "keeps all of K/V on every rank.</figcaption></figure>"
    )
