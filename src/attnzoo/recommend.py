"""``attnzoo recommend``: which measured mechanism to use for a length, pattern, memory budget and
task, with the evidence every rank stands on. Torch-free: the CLI and the report share it.

The rules:

- **Runs.** Every speed run of the store whose status is complete or interrupted (a dead
  'running' run reads as interrupted), and with a task every such quality run. ``run_ids`` names
  the runs instead (speed or quality runs, any status); of a kind it names none of, the default
  runs are read.
- **Rows.** Speed rows of the requested pattern, its base mask (``causal`` for causal patterns,
  else ``full``) and mode (``fwdbwd`` with ``train``, else ``fwd``), of mechanisms whose spec
  stored with the run has the requested layout (a mechanism whose spec the run did not store
  counts as ``tokens``). Per (mechanism, impl) the newest run holding rows or skips of it wins,
  with all its lengths and skips; lengths of different runs are never mixed.
- **Length.** The shortest measured length at or above the request. The time there bounds the
  time at the request from above (cost grows with length); the note says how far above. With
  none: an extrapolation, flagged, a power law (:func:`attnzoo.stats.fit_power_law`) of the
  median time (and of the peak memory) over the longest measured lengths that support an
  exponent (:func:`attnzoo.stats.supports_exponent`), at most :data:`MAX_EXTRAPOLATION` times
  beyond the longest; otherwise the impl has no estimate and is excluded with the reason.
- **Skips** of the store at or below the requested length: a ``failed`` one excludes the impl
  with its reason; a ``skipped`` one (predicted over the bench's budget) flags it in the note.
- **Memory.** The peak at the length used (or extrapolated) against ``memory``: above it at the
  requested length itself, or extrapolated above it, excludes the impl with the reason. Above it
  at a longer length, the peak at the request is interpolated (log-log) from the measured length
  below it; with none below, whether it fits is unknown (``fits_memory`` None, kept, flagged).
- **Trust.** :func:`attnzoo.stats.row_trust` of the row; of an extrapolation, the worst of the
  fitted rows. A measurement is *near and trustworthy* when it is measured (not extrapolated),
  its trust is ``"ok"`` and its length is at most :data:`NEAR` times the request. When no
  ranked mechanism has one, the warnings say so plainly; ``suggestion`` is the ``attnzoo bench
  speed`` command that would measure every mechanism lacking one.
- **Impl.** Per mechanism its best impl by the time ranking; a mechanism all of whose impls are
  excluded is listed in ``excluded`` with every impl's reason.
- **Time ranking.** Trusted before untrusted, measured before extrapolated, known to fit the
  budget before unknown (with a budget only), then the median time.
- **Task ranking.** The mechanisms with a result first, by quality in the task's direction
  (``Store.tasks``' ``maximize``; higher is better, with a warning, where the store does not
  describe the task), then by the time ranking; those without a result after them, by time.
  Quality: of the task point (``task_config``) whose ``tokens`` is nearest the requested length
  on a log scale (unknown tokens last; ties: more mechanisms, then the newer run), per mechanism
  the newest quality run holding it there; per (width, seed) its best-of-sweep row (the flagged
  one, else the best ``final_metric``); ``final_metric`` averaged over seeds per width; the best
  width's mean.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from attnzoo.spec import LAYOUTS, PATTERNS, stored_layout
from attnzoo.stats import (
    MIN_REPEATS,
    NOISY_SPREAD,
    fit_power_law,
    relative_spread,
    row_trust,
    supports_exponent,
    trust,
)
from attnzoo.store import Store
from attnzoo.text import fmt_bytes, suggest

Row = dict[str, Any]

NEAR = 2.0  # a measurement at most this many times the requested length is near it
MAX_EXTRAPOLATION = 16.0  # no extrapolation beyond this many times the longest measured length
SUGGESTED_REPEATS = 5  # repeats the suggested command asks for (more where rows were noisy)
RUN_STATUSES = ("complete", "interrupted")  # runs read by default
TRUST_ORDER = ("ok", "noisy", "few repeats")  # best to worst


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One mechanism's best impl at the request, and the evidence it stands on.

    ``seq_len`` is the measured length used (for an extrapolation, the longest fitted length);
    ``median_s`` and ``peak_bytes`` are at that length, or extrapolated to ``requested_len``.
    """

    mixer: str
    impl: str
    pattern: str
    mask: str
    mode: str
    seq_len: int
    requested_len: int
    median_s: float
    q1_s: float | None
    q3_s: float | None
    repeats: int
    spread: float | None
    trust: str
    peak_bytes: int | None
    run_id: int
    fits_memory: bool | None
    memory_note: str
    quality: float | None
    quality_note: str
    extrapolated: bool
    note: str

    @property
    def near_and_trusted(self) -> bool:
        return (
            not self.extrapolated
            and self.trust == "ok"
            and self.seq_len <= NEAR * self.requested_len
        )


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The ranking for one request (best first), the mechanisms left out with the reason, what
    the evidence cannot support, and the command that would measure what is missing."""

    request: dict[str, Any]
    ranked: list[Candidate]
    excluded: list[tuple[str, str]]
    warnings: list[str]
    suggestion: str | None

    def table_rows(self) -> list[dict[str, Any]]:
        """One dict per ranked mechanism, best first: ``rank`` and the evidence, raw values."""
        return [{"rank": i, **dataclasses.asdict(c)} for i, c in enumerate(self.ranked, 1)]


@dataclasses.dataclass(frozen=True)
class _Out:
    """Why an impl has no candidate; ``remeasure``: measuring at the request could give one."""

    reason: str
    remeasure: bool


@dataclasses.dataclass(frozen=True)
class _Series:
    """The rows (one per length, shortest first) and skips of one (mechanism, impl) in the run
    that measured it last."""

    mixer: str
    impl: str
    run_id: int
    rows: list[Row]
    skips: list[Row]


def recommend(
    store: Store,
    *,
    seq_len: int,
    pattern: str,
    memory: int | None = None,
    task: str | None = None,
    train: bool = False,
    layout: str = "tokens",
    run_ids: Sequence[int] | None = None,
) -> Recommendation:
    """Rank the mechanisms measured in ``store`` for ``seq_len`` tokens of ``pattern`` within
    ``memory`` bytes of peak memory (None: no budget), by quality on ``task`` if given, else by
    time; see the module docstring for the rules."""
    _validate(seq_len, pattern, memory, layout)
    mode = "fwdbwd" if train else "fwd"
    mask = "causal" if pattern.startswith("causal") else "full"
    speed_runs, quality_runs, warnings = _runs(store, run_ids, task is not None)
    request = {"seq_len": seq_len, "pattern": pattern, "mask": mask, "mode": mode,
               "layout": layout, "memory": memory, "task": task, "train": train,
               "speed_runs": speed_runs, "quality_runs": quality_runs}  # fmt: skip
    series, other_modes = _series(store, speed_runs, pattern, mask, mode, layout)
    ranked, excluded, need = [], [], set()
    for mixer in sorted({s.mixer for s in series} | set(other_modes)):
        mine = [s for s in series if s.mixer == mixer]
        if not mine:
            excluded.append((mixer, f"measured only in {', '.join(sorted(other_modes[mixer]))} "
                                    f"mode; {mode} not measured"))  # fmt: skip
            need.add(mixer)
            continue
        found = {s.impl: _estimate(s, seq_len, memory) for s in mine}
        cands = [c for c in found.values() if isinstance(c, Candidate)]
        if cands:
            ranked.append(min(cands, key=lambda c: _time_key(c, memory)))
            continue
        excluded.append((mixer, "; ".join(f"{i}: {why.reason}" for i, why in found.items())))
        if any(why.remeasure for why in found.values() if isinstance(why, _Out)):
            need.add(mixer)
    if task is not None:
        ranked, more = _rank_by_task(store, task, quality_runs, ranked, seq_len, pattern, memory)
        warnings += more.warnings
        for mixer in sorted(
            set(more.results) - {c.mixer for c in ranked} - {m for m, _ in excluded}
        ):
            excluded.append((mixer, f"{task} results but no {pattern} {mode} speed measurement"))
            need.add(mixer)
    else:
        ranked.sort(key=lambda c: _time_key(c, memory))
    need |= {c.mixer for c in ranked if not c.near_and_trusted}
    warnings += _warnings(ranked, request, bool(series))
    nothing = not series and not other_modes  # then measure every mechanism
    suggestion = _command(store, sorted(need), ranked, request) if need or nothing else None
    return Recommendation(request, ranked, excluded, warnings, suggestion)


# ---- inputs and rows ----------------------------------------------------------------------
def _validate(seq_len: int, pattern: str, memory: int | None, layout: str) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"recommend: seq_len must be a positive number of tokens, got {seq_len!r}")
    if pattern not in PATTERNS:
        raise ValueError(
            f"recommend: pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}"
            f"{suggest(str(pattern), PATTERNS)}"
        )
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0):  # fmt: skip
        raise ValueError(
            f"recommend: memory must be a positive number of bytes (or None for no budget), "
            f"got {memory!r}"
        )
    if layout not in LAYOUTS:
        raise ValueError(
            f"recommend: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}"
            f"{suggest(str(layout), LAYOUTS)}"
        )


def _runs(
    store: Store, run_ids: Sequence[int] | None, with_task: bool
) -> tuple[list[int], list[int], list[str]]:
    """The speed and quality runs to read, and warnings about them."""
    runs = store.runs()
    by_id = {r["run_id"]: r for r in runs}
    warnings = []
    for rid in run_ids or ():
        if rid not in by_id:
            raise ValueError(
                f"recommend: run_ids: no run {rid!r} in {store.path}; runs: {sorted(by_id) or 'none'}"
            )
        r = by_id[rid]
        if r["kind"] not in ("speed", "quality"):
            raise ValueError(
                f"recommend: run_ids: run {rid} is a {r['kind']} run; recommend reads speed and "
                "quality runs"
            )
        if r["status"] not in RUN_STATUSES:
            warnings.append(f"run {rid} is {r['status']}: its measurements may be incomplete")

    def pick(kind: str) -> list[int]:
        named = [rid for rid in dict.fromkeys(run_ids or ()) if by_id[rid]["kind"] == kind]
        if named:
            return named
        live = [r["run_id"] for r in runs if r["kind"] == kind and r["status"] == "running"]
        if live:
            warnings.append(f"{kind} run(s) {', '.join(map(str, live))} still running: left out")
        return [r["run_id"] for r in runs if r["kind"] == kind and r["status"] in RUN_STATUSES]

    return pick("speed"), pick("quality") if with_task else [], warnings


def _series(
    store: Store, runs: list[int], pattern: str, mask: str, mode: str, layout: str
) -> tuple[list[_Series], dict[str, set[str]]]:
    """Per (mechanism, impl) of ``layout`` its rows and skips in ``mode`` of the newest run
    holding any, and the other modes of mechanisms measured on ``pattern``."""
    layouts = {(rid, s["name"]): stored_layout(s) for rid in runs for s in store.specs(rid)}

    def mine(r: Row) -> bool:
        return (
            r["pattern"] == pattern
            and r["mask"] == mask
            and layouts.get((r["run_id"], r["mixer"]), "tokens") == layout
        )

    rows = [r for r in store.speed(runs, pattern=pattern, mask=mask) if mine(r)]
    skips = [s for s in store.skips(runs) if mine(s)]
    newest: dict[tuple[str, str], int] = {}
    modes: dict[str, set[str]] = {}
    for r in rows + skips:
        modes.setdefault(r["mixer"], set()).add(r["mode"])
        if r["mode"] == mode:
            key = (r["mixer"], r["impl"])
            newest[key] = max(newest.get(key, r["run_id"]), r["run_id"])
    out = []
    for (mixer, impl), rid in sorted(newest.items()):

        def of(r: Row, mixer: str = mixer, impl: str = impl, rid: int = rid) -> bool:
            return (r["mixer"], r["impl"], r["mode"], r["run_id"]) == (mixer, impl, mode, rid)

        by_len = {r["seq_len"]: r for r in rows if of(r)}  # the last recorded per length
        out.append(_Series(mixer, impl, rid, [by_len[t] for t in sorted(by_len)],
                           sorted((s for s in skips if of(s)), key=lambda s: s["seq_len"])))  # fmt: skip
    other = {m: ms - {mode} for m, ms in modes.items() if mode not in ms}
    return out, other


# ---- one impl's estimate ------------------------------------------------------------------
def _estimate(s: _Series, T: int, memory: int | None) -> Candidate | _Out:
    """The candidate of one (mechanism, impl) at ``T`` tokens, or why there is none."""
    below = [k for k in s.skips if k["seq_len"] <= T]
    failed = [k for k in below if k["kind"] == "failed"]
    if failed:
        k = failed[0]
        return _Out(f"failed at T={k['seq_len']} in run {s.run_id}: {k['reason']}", False)
    above = [r for r in s.rows if r["seq_len"] >= T]
    c = _measured(s, above[0], T, memory) if above else _extrapolated(s, T, memory)
    if isinstance(c, _Out) or not below:
        return c
    k = below[0]
    skipped = f"the bench skipped T={k['seq_len']} in run {s.run_id}: {k['reason']}"
    return dataclasses.replace(c, note="; ".join(filter(None, (c.note, skipped))))


def _measured(s: _Series, row: Row, T: int, memory: int | None) -> Candidate | _Out:
    t = row["seq_len"]
    spread = relative_spread(row["repeats"], row["median_s"], row.get("q1_s"), row.get("q3_s"))
    note = ""
    if t > T:
        near = "" if t <= NEAR * T else f", more than {NEAR:g}x: not near"
        note = f"measured at T={t}, {t / T:.3g}x the request{near}: the time is an upper bound"
    fits, mem_note = _measured_memory(s.rows, row, T, memory)
    if fits is False:
        return _Out(mem_note, False)
    return Candidate(
        s.mixer, s.impl, row["pattern"], row["mask"], row["mode"], t, T, row["median_s"],
        row.get("q1_s"), row.get("q3_s"), row["repeats"], spread, trust(row["repeats"], spread),
        row["peak_bytes"], s.run_id, fits, mem_note, None, "", False, note,
    )  # fmt: skip


def _measured_memory(
    rows: list[Row], row: Row, T: int, memory: int | None
) -> tuple[bool | None, str]:
    t, peak = row["seq_len"], row["peak_bytes"]
    if peak is None:
        return None, "peak memory not recorded"
    at = f"peak {fmt_bytes(peak)} at T={t}"
    if memory is None:
        return None, at
    if peak <= memory:
        return True, f"{at} <= budget {fmt_bytes(memory)}"
    if t == T:
        return False, f"{at} > budget {fmt_bytes(memory)}"
    lower = [r for r in rows if r["seq_len"] < T and r["peak_bytes"]]
    if not lower:
        return None, f"{at} > budget {fmt_bytes(memory)}; at T={T} unknown (nothing measured below)"
    lo = lower[-1]
    est = fit_power_law([(lo["seq_len"], lo["peak_bytes"]), (t, peak)]).at(T)
    fits = est <= memory
    return fits, (
        f"peak ~{fmt_bytes(est)} at T={T} interpolated from T={lo['seq_len']} and T={t} "
        f"{'<=' if fits else '>'} budget {fmt_bytes(memory)}"
    )


def _fit_rows(rows: list[Row]) -> list[Row] | str:
    """The longest lengths that support an exponent, or why the lengths cannot."""
    for i in range(len(rows) - 1, -1, -1):
        if supports_exponent([r["seq_len"] for r in rows[i:]]) is None:
            return rows[i:]
    return supports_exponent([r["seq_len"] for r in rows]) or "no lengths"


def _extrapolated(s: _Series, T: int, memory: int | None) -> Candidate | _Out:
    if not s.rows:
        return _Out(f"nothing measured in run {s.run_id}", True)
    longest = s.rows[-1]["seq_len"]
    pts = _fit_rows(s.rows)
    if isinstance(pts, str):
        return _Out(f"measured only up to T={longest}, below the request, and cannot "
                    f"extrapolate ({pts})", True)  # fmt: skip
    if T > MAX_EXTRAPOLATION * longest:
        return _Out(f"measured only up to T={longest}, {T / longest:.3g}x below the request; "
                    f"no extrapolation beyond {MAX_EXTRAPOLATION:g}x", True)  # fmt: skip
    time_fit = fit_power_law([(r["seq_len"], r["median_s"]) for r in pts])
    spreads = [relative_spread(r["repeats"], r["median_s"], r.get("q1_s"), r.get("q3_s")) for r in pts]  # fmt: skip
    worst = max((row_trust(r) for r in pts), key=TRUST_ORDER.index)
    note = f"extrapolated {T / longest:.3g}x beyond T={longest}: time ~ {time_fit.describe()}"
    peaks = [(r["seq_len"], r["peak_bytes"]) for r in pts]
    peak, fits, mem_note = None, None, "peak memory not recorded"
    if all(p is not None and p > 0 for _, p in peaks):
        peak_fit = fit_power_law(peaks)
        peak = int(peak_fit.at(T))
        mem_note = f"extrapolated peak ~{fmt_bytes(peak)} at T={T} ({peak_fit.describe()})"
        if memory is not None:
            fits = peak <= memory
            mem_note += f" {'<=' if fits else '>'} budget {fmt_bytes(memory)}"
            if not fits:
                return _Out(mem_note, False)
    return Candidate(
        s.mixer, s.impl, pts[-1]["pattern"], pts[-1]["mask"], pts[-1]["mode"], longest, T,
        time_fit.at(T), None, None, min(r["repeats"] for r in pts),
        None if None in spreads else max(spreads), worst, peak, s.run_id, fits, mem_note, None,
        "", True, note,
    )  # fmt: skip


def _time_key(c: Candidate, memory: int | None) -> tuple[bool, bool, bool, float]:
    return (c.trust != "ok", c.extrapolated, memory is not None and c.fits_memory is None,
            c.median_s)  # fmt: skip


# ---- quality ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _TaskResults:
    results: dict[str, tuple[float | None, str]]  # mixer -> (quality, note)
    warnings: list[str]


def _rank_by_task(
    store: Store, task: str, runs: list[int], ranked: list[Candidate], T: int, pattern: str,
    memory: int | None,
) -> tuple[list[Candidate], _TaskResults]:  # fmt: skip
    rows = store.quality(runs) if runs else []
    if task not in {r["task"] for r in rows}:
        known = sorted({r["task"] for r in rows})
        where = f"runs {', '.join(map(str, runs))} of {store.path}" if runs else f"{store.path}"
        raise ValueError(
            f"recommend: task {task!r} has no quality results in {where}"
            f"{suggest(task, known)}; tasks there: {', '.join(known) or 'none'} "
            f"(measure one with `attnzoo bench quality --task NAME`)"
        )
    rows = [r for r in rows if r["task"] == task]
    info = {d["task_config"]: d for d in store.tasks(runs) if d["task"] == task}
    points: dict[str, list[Row]] = {}
    for r in rows:
        points.setdefault(r["task_config"], []).append(r)

    def nearness(cfg: str) -> tuple[float, int, int]:
        tokens = info.get(cfg, {}).get("tokens")
        far = abs(math.log(tokens / T)) if tokens else math.inf
        pts = points[cfg]
        return far, -len({r["mixer"] for r in pts}), -max(r["run_id"] for r in pts)

    cfg = min(points, key=nearness)
    warnings = []
    if cfg in info:
        d = info[cfg]
        maximize, metric, fmt = bool(d["maximize"]), d["metric"], d["fmt"]
        if pattern not in d["patterns"]:
            warnings.append(f"{task} runs its mechanisms as {' or '.join(d['patterns'])}; the "
                            f"times here are {pattern}")  # fmt: skip
    else:
        maximize, metric, fmt = True, "metric", ".3g"
        warnings.append(f"the store does not describe {task}; assuming higher is better")
    label = _point_label(cfg, info.get(cfg))
    results = {m: _mixer_quality(points[cfg], m, maximize, metric, fmt, task, label)
               for m in sorted({r["mixer"] for r in points[cfg]})}  # fmt: skip
    out = []
    for c in ranked:
        q, note = results.get(c.mixer, (None, f"no {task} result at {label}"))
        out.append(dataclasses.replace(c, quality=q, quality_note=note))
    sign = -1.0 if maximize else 1.0
    out.sort(key=lambda c: (c.quality is None, sign * (c.quality or 0.0), *_time_key(c, memory)))
    missing = [c.mixer for c in out if c.quality is None]
    if missing:
        warnings.append(f"no {task} result at {label} for {', '.join(missing)}: ranked after "
                        f"those with one, by time")  # fmt: skip
    return out, _TaskResults(results, warnings)


def _point_label(cfg: str, described: Row | None) -> str:
    """``"point L=64, kv=4"`` from the task's point keys; else its tokens; else the config."""
    try:
        values = json.loads(cfg)
    except json.JSONDecodeError:
        values = {}
    keys = (described or {}).get("point_keys") or []
    if keys and isinstance(values, dict):
        return "point " + ", ".join(f"{short or key}={values.get(key)}" for key, short in keys)
    tokens = (described or {}).get("tokens")
    return f"point with {tokens} tokens" if tokens else f"point {cfg}"


def _mixer_quality(
    rows: list[Row], mixer: str, maximize: bool, metric: str, fmt: str, task: str, label: str
) -> tuple[float | None, str]:
    mine = [r for r in rows if r["mixer"] == mixer]
    rid = max(r["run_id"] for r in mine)
    sign = 1.0 if maximize else -1.0
    groups: dict[tuple[int, int], list[Row]] = {}
    for r in mine:
        if r["run_id"] == rid:
            groups.setdefault((r["d_model"], r["seed"]), []).append(r)
    per_width: dict[int, list[float]] = {}
    for (width, _), g in groups.items():
        flagged = [r for r in g if r["best_of_sweep"]]
        finite = [r for r in g if _finite(r["final_metric"])]
        best = flagged[-1] if flagged else max(finite, key=lambda r: sign * r["final_metric"], default=None)  # fmt: skip
        if best is not None and _finite(best["final_metric"]):
            per_width.setdefault(width, []).append(best["final_metric"])
    if not per_width:
        return None, f"no finite final {metric} in run {rid} at {label}"
    means = {w: sum(v) / len(v) for w, v in per_width.items()}
    width = max(means, key=lambda w: sign * means[w])
    n = len(per_width[width])
    of = f" (best of {len(means)} widths)" if len(means) > 1 else ""
    return means[width], (
        f"final {metric} {means[width]:{fmt}}: mean of {n} seed(s) at d_model {width}{of}, "
        f"run {rid}, {task} {label}"
    )


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# ---- what the evidence cannot support -----------------------------------------------------
def _warnings(ranked: list[Candidate], req: dict[str, Any], measured: bool) -> list[str]:
    T, what = req["seq_len"], f"{req['pattern']} {req['mode']} ({req['mask']} mask)"
    if not measured:
        return [f"the store has no {what} speed measurement of a {req['layout']} mechanism in "
                f"runs {req['speed_runs'] or 'none'}: nothing to rank"]  # fmt: skip
    if not ranked:
        return [f"no mechanism measured on {what} can be ranked at T={T}: every one is excluded"]
    out = []
    if not any(c.near_and_trusted for c in ranked):
        out.append(
            f"no trustworthy measurement near T={T}: no ranked mechanism has a timing measured at "
            f"T={T}..{int(NEAR * T)} with at least {MIN_REPEATS} repeats and a spread of at most "
            f"{NOISY_SPREAD:.0%}; this ranking is a guess"
        )
    untrusted = [c for c in ranked if c.trust != "ok"]
    if untrusted:
        out.append(f"{len(untrusted)} of {len(ranked)} ranked mechanism(s) rest on noisy or "
                   f"few-repeat timings: {', '.join(c.mixer for c in untrusted)}; ranked after "
                   f"the trusted ones")  # fmt: skip
    extra = [c.mixer for c in ranked if c.extrapolated]
    if extra:
        out.append(f"{len(extra)} time(s) extrapolated beyond the longest measured length, not "
                   f"measured: {', '.join(extra)}")  # fmt: skip
    if req["memory"] is not None:
        unknown = [c.mixer for c in ranked if c.fits_memory is None]
        if unknown:
            out.append(f"whether {', '.join(unknown)} fit(s) {fmt_bytes(req['memory'])} at T={T} "
                       f"is unknown; ranked after those known to fit")  # fmt: skip
    runs = sorted({c.run_id for c in ranked})
    if len(runs) > 1:
        out.append(f"the times come from runs {', '.join(map(str, runs))}: different runs may "
                   f"differ in machine load and settings (batch, width); pass the runs of one "
                   f"to compare like with like")  # fmt: skip
    return out


def _command(store: Store, mixers: list[str], ranked: list[Candidate], req: dict[str, Any]) -> str:
    """The ``attnzoo bench speed`` command that would measure ``mixers`` at the request."""
    T, lay = req["seq_len"], LAYOUTS[req["layout"]]
    noisy = [c.repeats for c in ranked if c.mixer in mixers and c.trust == "noisy"]
    repeats = max([SUGGESTED_REPEATS, *(2 * r for r in noisy if r >= SUGGESTED_REPEATS)])
    if req["layout"] == "tokens":
        lengths = f"--seq-lens {T}"
    else:  # the smallest square (cube) grid with at least T tokens
        side = math.ceil(T ** (1 / len(lay.axes)) - 1e-9)
        lengths = f"--image-sizes {side}"
    who = f"--mixers {','.join(mixers)} " if mixers else ""
    return (f"attnzoo bench speed {who}{lengths} --patterns {req['pattern']} --mode {req['mode']} "
            f"--repeats {repeats} --db {store.path}")  # fmt: skip
