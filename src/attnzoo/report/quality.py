"""The report's quality section: every quality suite's latest run, task by task (issue 6).

Per task: a table (best learning rate of each group, mean ± std over seeds, the task point's
settings such as MQAR's ``L`` and ``kv``, extra evaluations as extra columns), Zoology's plot
(best-of-sweep metric vs model width, one panel per task point), the metric vs recurrent state
size, the learning curves of the best-lr runs, and the metric vs forward latency taken from a
speed run at the sequence length closest to the task's.

The report reads the store only (DESIGN §2): what it knows of a task (metric, direction, speed
patterns, tokens per layer, the keys naming a task point) is what the bench stored with the run.
Curve points and extra evaluations belong to the model row of the same (task point, mechanism,
width, lr, seed). Stores before schema v4 did not record the task point with them: when several
points of one task share the rest of that key, a curve point goes to the first model row
recorded at or after it (the runner trains one model at a time and writes its row last) and an
evaluation to the row recorded nearest to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from attnzoo.report.cells import timing_cell
from attnzoo.report.common import esc as _e
from attnzoo.report.common import mean_std_cell as _ms
from attnzoo.report.common import num as _num
from attnzoo.report.common import table as _table
from attnzoo.report.common import td as _td
from attnzoo.report.common import when as _when
from attnzoo.report.palette import Palette
from attnzoo.report.plots import Point, PointSeries, panels_svg
from attnzoo.report.quality_rows import (
    UNKNOWN_TASK,
    Row,
    TaskInfo,
    closest_speed,
    pick_best,
    point_label,
    task_infos,
)
from attnzoo.store import Store

DASHES = ("-", "--", ":", "-.")  # line styles of the widths in the learning curves


def quality_section(store: Store, speed_run: int | None, palette: Palette | None = None) -> str:
    """The quality section's HTML: an overview of every suite's latest quality run, then one
    subsection per (suite, run), task by task.

    Args:
        store: the results store (read only).
        speed_run: the speed run whose forward latencies the accuracy-vs-latency plots use, or
            ``None`` (no such plots; the latency tables say "no speed row").
        palette: the report's colour and marker of each mechanism (default: one over the
            mechanisms this section shows).

    Shapes:
        one overview table, then per run an ``<h3>``, per task an ``<h4>``, tables and figures.
    """
    if speed_run is not None and (kind := store.run(speed_run)["kind"]) != "speed":
        raise ValueError(f"speed_run: run {speed_run} is a {kind} run, expected a speed run")
    shown = shown_runs(store)
    if palette is None:
        palette = Palette(r["mixer"] for run in shown for r in store.quality([run["run_id"]]))
    if not shown:
        return (
            "<p>No quality runs in this store: <code>attnzoo bench quality --suite quick</code> "
            "trains some.</p>"
        )
    speed = store.speed([speed_run], mode="fwd") if speed_run is not None else []
    where = f"speed run {speed_run}" if speed_run is not None else "no speed run (none stored)"
    intro = (
        '<p class="muted">The latest run of every quality suite (and older runs of a suite that '
        "trained task points, mechanisms or widths no newer run did). Each model is trained once per "
        "learning rate; a table row is the best learning rate of its (task point, mechanism, "
        "width, seed) group in the metric's direction, as mean ± sample std over seeds, measured "
        "on fixed held-out batches; the best mechanism of each (task point, width) is in green. "
        "State floats: the streaming state of all layers after one sequence (a KV cache for "
        f"attention). Latencies: forward, from {_e(where)}. A model whose training raised or "
        "whose worker died has status failed and no metric; its run's notes say why.</p>"
    )
    overview, parts = [], []
    for run in shown:
        suite = run["suite"] or "(unnamed)"
        rid, rows = run["run_id"], store.quality([run["run_id"]])
        overview.append(
            [_td(suite), f'<td><a href="#quality-run-{rid}">{rid}</a></td>',
             _td(run["status"], "ok" if run["status"] == "complete" else "bad"),
             _td(_when(run["started_at"])), _td(_trained(rows), "bad" if _failed(rows) else "")]
            + [_td(", ".join(_sorted_str(rows, c))) for c in ("task", "mixer", "d_model", "seed", "lr")]
        )  # fmt: skip
        parts.append(_run_block(store, run, rows, speed, palette))
    head = ["suite", "run", "status", "started", "models trained", "tasks", "mechanisms",
            "widths", "seeds", "lrs"]  # fmt: skip
    return intro + _table(head, overview, "quality-table") + "\n".join(parts)


def shown_runs(store: Store) -> list[Row]:
    """The runs to show, oldest first: per suite, the newest run with rows, and each older run
    that trained a (task point, mechanism, width) no newer shown run of its suite covers (a
    suite run in parts, e.g. one grid point or one mechanism at a time); a suite without any
    rows shows its newest run."""
    covered: dict[str, set[tuple]] = defaultdict(set)
    shown: list[Row] = []
    empty: dict[str, Row] = {}
    for run in reversed(store.runs("quality")):  # newest first
        suite = run["suite"] or "(unnamed)"
        rows = store.quality([run["run_id"]])
        if not rows:
            empty.setdefault(suite, run)
            continue
        keys = {(r["task"], r["task_config"], r["mixer"], r["d_model"]) for r in rows}
        if keys - covered[suite]:
            shown.append(run)
            covered[suite] |= keys
    shown += [run for suite, run in empty.items() if suite not in covered]
    return sorted(shown, key=lambda r: r["run_id"])


def _run_block(store: Store, run: Row, rows: list[Row], speed: list[Row], palette: Palette) -> str:
    rid = run["run_id"]
    status = run["status"] + (f" ({run['note']})" if run.get("note") else "")
    out = (
        f'<h3 id="quality-run-{rid}">suite {_e(run["suite"] or "(unnamed)")}: run {rid}, '
        f"{_e(status)}, started {_when(run['started_at'])}, finished "
        f"{_when(run['finished_at'])}</h3>"
    )
    if not rows:
        return out + "<p>No trained models recorded in this run yet.</p>"
    curves = _attach(store.curves([rid]), rows, nearest=False)
    extra = _attach(store.quality_evals([rid]), rows, nearest=True)
    infos = task_infos(store.tasks([rid]))
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        points = {r["task_config"]: infos.get((rid, task, r["task_config"])) for r in mine}
        info = next((i for i in points.values() if i is not None), UNKNOWN_TASK)
        tokens = {p: (i.tokens if i is not None else None) for p, i in points.items()}
        view = _view(rid, task, info, mine, extra, tokens, palette)
        latency_figs, latency_table = view.latency(speed)
        figs = view.figures(curves) + latency_figs
        out += (
            f'<h4 id="{view.sid}">task {_e(task)}: {_e(info.axis)}</h4>{view.table()}'
            f'{view.sweep()}<div class="grid">{"".join(figs)}</div>{latency_table}'
        )
    return out


MeanStd = tuple[float | None, float | None]


@dataclasses.dataclass(frozen=True)
class _Cell:
    """One (task point, mechanism, width): its best-lr model per seed, lowest seed first."""

    point: str
    mixer: str
    d_model: int
    rows: list[Row]
    metric: MeanStd
    evals: dict[str, MeanStd]


@dataclasses.dataclass(frozen=True)
class _TaskView:
    """One task of one run: its points (task configs), sweep rows and best-of-sweep cells."""

    rid: int
    task: str
    info: TaskInfo
    rows: list[Row]
    configs: dict[str, dict[str, Any]]  # task_config JSON -> parsed
    tokens: dict[str, int | None]  # task_config JSON -> tokens per layer (stored by the bench)
    keys: list[str]  # the config keys that tell the points apart
    points: list[str]  # task_config JSONs, ordered
    cells: list[_Cell]
    names: list[str]  # extra evaluations
    palette: Palette  # the report's colour and marker of each mechanism

    @property
    def sid(self) -> str:
        return f"quality-{self.rid}-{re.sub(r'[^a-z0-9]+', '-', self.task.lower())}"

    def label(self, point: str) -> str:
        label = point_label(self.configs[point], self.keys, dict(self.info.point_keys))
        return label or self.task

    def panel(self, point: str) -> str:
        """A plot panel's title: the point's settings (none for a task run at one setting)."""
        return self.label(point) if self.keys else ""

    def at(self, point: str) -> list[_Cell]:
        return [c for c in self.cells if c.point == point]

    def style(self, per_width: bool = False) -> dict[str, Any]:
        """``panels_svg`` keywords: each mechanism's colour and marker (the same in every figure
        of the report) and, for per-width series (``"softmax d=64"``), one line style per width."""
        if not per_width:
            return {"styles": {c.mixer: self.palette.style(c.mixer) for c in self.cells}}
        widths = sorted({c.d_model for c in self.cells})
        cells = {f"{c.mixer} d={c.d_model}": c for c in self.cells}
        return {"styles": {k: self.palette.style(c.mixer) for k, c in cells.items()},
                "dashes": {k: DASHES[widths.index(c.d_model) % len(DASHES)] for k, c in cells.items()}}  # fmt: skip

    def fig(self, svg: str, caption: str) -> str:
        """A figure; several panels (task points) span the grid's full width."""
        wide = ' style="grid-column:1/-1"' if len(self.points) > 1 else ""
        return f"<figure{wide}>{svg}<figcaption>{_e(caption)}</figcaption></figure>"

    def series(self, point: str, x: Callable[[_Cell], float | None]) -> list[PointSeries]:
        """Per mechanism, ``(x(cell), mean, std)`` over its widths (cells with no x left out)."""
        out: dict[str, list[Point]] = defaultdict(list)
        for c in self.at(point):
            if (xv := x(c)) is not None and c.metric[0] is not None:
                out[c.mixer].append((xv, c.metric[0], c.metric[1]))
        return sorted(out.items())

    def table(self) -> str:
        sign, fmt = (1.0 if self.info.maximize else -1.0), self.info.fmt
        top: dict[tuple[str, int], float] = {}
        for c in self.cells:
            if c.metric[0] is not None:
                k = (c.point, c.d_model)
                top[k] = max(top.get(k, -math.inf), sign * c.metric[0])
        body = []
        for c in self.cells:
            r0, m = c.rows[0], c.metric[0]
            best = m is not None and sign * m == top[(c.point, c.d_model)]
            body.append(
                [_td(self.configs[c.point].get(k)) for k in self.keys]
                + [_td(c.mixer), _td(c.d_model), _td(r0["num_layers"]), _td(", ".join(_sorted_str(c.rows, "lr"))),
                   _td(len(c.rows)), _ms(c.metric, fmt, "ok" if best else ""),
                   _ms(_mean_std([r["final_metric"] for r in c.rows]), fmt)]
                + [_ms(c.evals[n], fmt) for n in self.names]
                + [_td(", ".join(_sorted_str(c.rows, "steps_run"))),
                   _td(", ".join(_sorted_str(c.rows, "status")), "bad" if _failed(c.rows) else ""),
                   _td(r0["params"]), _td("-" if r0["state_size"] is None else r0["state_size"]),
                   _ms(_mean_std([r["seconds"] for r in c.rows]), ".1f")]
            )  # fmt: skip
        metric = self.info.metric
        short = dict(self.info.point_keys)
        head = [*(short.get(k, k) for k in self.keys), "mechanism", "d_model", "layers", "best lr",
                "seeds", f"best {metric}", f"final {metric}", *self.names, "steps", "status",
                "params", "state floats", "seconds"]  # fmt: skip
        return _table(head, body, f"{self.sid}-table")

    def sweep(self) -> str:
        """Every trained model of the task (each lr and seed), the chosen ones marked."""
        chosen = {id(r) for c in self.cells for r in c.rows}
        body = []
        for r in sorted(self.rows, key=lambda r: (self.points.index(r["task_config"]), r["mixer"],
                                                  r["d_model"], r["seed"], r["lr"])):  # fmt: skip
            mine = id(r) in chosen
            differs = " (stored flag differs)" if bool(r["best_of_sweep"]) != mine else ""
            body.append(
                [_td(self.label(r["task_config"])), _td(r["mixer"]), _td(r["d_model"]), _td(f"{r['lr']:g}"),
                 _td(r["seed"]), _num(r["best_metric"], self.info.fmt), _num(r["final_metric"], self.info.fmt),
                 _td(r["steps_run"]), _td(r["status"], "bad" if _failed([r]) else ""),
                 _td(("best" if mine else "") + differs, "ok" if mine else "")]
            )  # fmt: skip
        head = ["task point", "mechanism", "d_model", "lr", "seed", f"best {self.info.metric}",
                f"final {self.info.metric}", "steps", "status", "best of sweep"]  # fmt: skip
        return (
            f"<details><summary>every trained model ({len(self.rows)}: each learning rate and "
            f"seed)</summary>{_table(head, body, f'{self.sid}-sweep')}</details>"
        )

    def figures(self, curves: dict[int, list[Row]]) -> list[str]:
        """Zoology's width plot, the metric vs state size, the best-lr learning curves."""
        info, tag = self.info, f"run {self.rid} {self.task}"
        width = [(self.panel(p), self.series(p, lambda c: c.d_model)) for p in self.points]
        state = [(self.panel(p), self.series(p, lambda c: c.rows[0]["state_size"]))
                 for p in self.points]  # fmt: skip
        steps = [
            (self.panel(p), [(f"{c.mixer} d={c.d_model}", [(x["step"], x["metric"], None) for x in pts])
                             for c in self.at(p) if (pts := curves.get(id(c.rows[0])))])
            for p in self.points
        ]  # fmt: skip
        figs = [self.fig(
            panels_svg(f"{tag}: best-of-sweep {info.metric} vs model width", "model width d_model",
                       info.axis, width, xscale="log2", **info.y, **self.style()),
            "Zoology's plot: the best learning rate's metric per mechanism and width, one panel "
            "per task point; error bars: sample std over seeds (when more than one)",
        )]  # fmt: skip
        if any(s for _, s in state):
            figs.append(self.fig(
                panels_svg(f"{tag}: {info.metric} vs recurrent state size",
                           "state floats after one sequence (all layers)", info.axis, state,
                           xscale="log", **info.y, label_points=True, **self.style()),
                "one point per width, joined per mechanism; a KV cache is the growing state "
                "after one sequence; mechanisms without a causal state are left out",
            ))  # fmt: skip
        if any(s for _, s in steps):
            figs.append(self.fig(
                panels_svg(f"{tag}: learning curves of the best-lr runs", "training step",
                           info.axis, steps, **info.y, **self.style(per_width=True)),
                "held-out metric vs step of each (mechanism, width)'s best learning rate "
                "(its lowest seed)",
            ))  # fmt: skip
        return figs

    def latency(self, speed: list[Row]) -> tuple[list[str], str]:
        """The metric vs the forward latency at the speed run's T closest to the task's: the
        figure (if any mechanism was measured) and the table saying which T and impl."""
        panels, body = [], []
        for p in self.points:
            length = self.tokens.get(p)
            ms: dict[str, float] = {}
            for m in sorted({c.mixer for c in self.at(p)}):
                r = closest_speed(speed, m, length, self.info.patterns) if length else None
                per_width = "; ".join(f"d={c.d_model}: {format(c.metric[0], self.info.fmt)}"
                                      for c in self.at(p) if c.mixer == m and c.metric[0] is not None)  # fmt: skip
                if r is None:
                    why = "no speed row" if length else "task length unknown"
                    body.append([_td(self.label(p)), _td(m), _td(length or "-"), _td(why, "na"),
                                 _td("-"), _td("-"), _td("-"), _td(per_width)])  # fmt: skip
                    continue
                ms[m] = r["median_s"] * 1e3
                body.append([_td(self.label(p)), _td(m), _td(length), _td(r["seq_len"]), _td(r["impl"]),
                             _td(r["pattern"]), timing_cell(r), _td(per_width)])  # fmt: skip
            panels.append((self.panel(p), self.series(p, lambda c, ms=ms: ms.get(c.mixer))))
        head = ["task point", "mechanism", "task T", "speed T", "impl", "pattern", "forward ms",
                f"best {self.info.metric} per width"]  # fmt: skip
        table = _table(head, body, f"{self.sid}-latency")
        if not any(s for _, s in panels):
            return [], table
        svg = panels_svg(
            f"run {self.rid} {self.task}: {self.info.metric} vs forward latency",
            "forward latency (ms)", self.info.axis, panels, xscale="log",
            connect=False, label_points=True, **self.info.y, **self.style(),
        )  # fmt: skip
        cap = ("one point per width at the mechanism's forward latency (its fastest impl, at the "
               "speed run's d_model and the T closest to the task's: the table below says which)")  # fmt: skip
        return [self.fig(svg, cap)], table


def _view(rid: int, task: str, info: TaskInfo, rows: list[Row], evals: dict[int, list[Row]],
          tokens: dict[str, int | None], palette: Palette) -> _TaskView:  # fmt: skip
    """Group one task's rows: points, then the best lr per (point, mechanism, width, seed)."""
    configs = {r["task_config"]: json.loads(r["task_config"]) for r in rows}
    keys = [k for k, _ in info.point_keys]
    for k in sorted({k for c in configs.values() for k in c}):
        if k not in keys and len({json.dumps(c.get(k)) for c in configs.values()}) > 1:
            keys.append(k)
    points = sorted(configs, key=lambda c: [str(configs[c].get(k)).zfill(12) for k in keys])
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["task_config"], r["mixer"], r["d_model"], r["seed"])].append(r)
    chosen: dict[tuple, list[Row]] = defaultdict(list)
    for (point, mixer, d, _), g in sorted(groups.items(), key=lambda kv: kv[0][3]):  # by seed
        chosen[(point, mixer, d)].append(pick_best(g, info.maximize))
    names = sorted({e["name"] for r in rows for e in evals.get(id(r), [])})
    cells = [
        _Cell(point, mixer, d, best, _mean_std([r["best_metric"] for r in best]),
              {n: _mean_std([e["value"] for r in best for e in evals.get(id(r), []) if e["name"] == n])
               for n in names})
        for (point, mixer, d), best in chosen.items()
    ]  # fmt: skip
    sign = 1.0 if info.maximize else -1.0
    cells.sort(
        key=lambda c: (points.index(c.point), c.d_model, -sign * (c.metric[0] or 0), c.mixer)
    )
    return _TaskView(rid, task, info, rows, configs, tokens, keys, points, cells, names, palette)


# ---- helpers ----------------------------------------------------------------------------
def _attach(children: list[Row], parents: list[Row], nearest: bool) -> dict[int, list[Row]]:
    """Children (curve points or extra evals) per parent model row, keyed by ``id(parent)``:
    same (task, mechanism, width, lr, seed) and task point. A child without its point (stores
    before v4) goes, among several such rows, to the first recorded at or after it
    (``nearest=False``) or to the one nearest in time."""
    by_key: dict[tuple, list[Row]] = defaultdict(list)
    for p in parents:
        by_key[(p["task"], p["mixer"], p["d_model"], p["lr"], p["seed"])].append(p)
    out: dict[int, list[Row]] = defaultdict(list)
    for c in children:
        cands = by_key.get((c["task"], c["mixer"], c["d_model"], c["lr"], c["seed"]), [])
        t = c["recorded_at"]
        if c.get("task_config") is not None:
            cands = [p for p in cands if p["task_config"] == c["task_config"]]
        elif not nearest:  # a model's row is written after its curve
            cands = [p for p in cands if p["recorded_at"] >= t]
        if cands:
            parent = min(cands, key=lambda p: abs((p["recorded_at"] - t).total_seconds()))
            out[id(parent)].append(c)
    return out


def _mean_std(values: Sequence[float | None]) -> MeanStd:
    """Mean and sample standard deviation of the finite values (std ``None`` for one value)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None


def _failed(rows: Sequence[Row]) -> int:
    """How many of the models failed (their training raised or their worker died: no metric;
    the run's ``point-failed`` notes say why)."""
    return sum(r["status"] == "failed" for r in rows)


def _trained(rows: Sequence[Row]) -> str:
    """The overview's model count, with the failed ones: ``"12 (2 failed)"``."""
    failed = _failed(rows)
    return f"{len(rows)}" + (f" ({failed} failed)" if failed else "")


def _sorted_str(rows: list[Row], col: str) -> list[str]:
    return [f"{v:g}" if col == "lr" else str(v) for v in sorted({r[col] for r in rows})]
