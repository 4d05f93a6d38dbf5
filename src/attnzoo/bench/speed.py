"""``attnzoo bench speed``: latency, peak memory and FLOP rate of every (mixer, impl, pattern, mask).

For each mixer the correctness gate runs first (:func:`attnzoo.bench.gate.check_mixer`); a path
that failed it, or was not checked, gets no timing, only a recorded failure. Then, per
(impl, pattern, mask, mode), lengths are measured in increasing order. Before each length the
peak memory and time are predicted from the lengths already measured and from the mechanism's
declared complexity (:mod:`attnzoo.bench.predict`: minimum times, no extrapolation from tiny
lengths or sub-millisecond calls, unrecorded probe lengths when nothing usable is known or
before a skip) and work predicted to exceed ``memory_budget`` or ``time_cap`` is skipped and
recorded with the reason and its evidence (``skips.evidence``); ``no_skip`` measures everything.
A skipped cell stops: its longer lengths are recorded as skipped too (they cost more). A skip
that a later measurement of the same run disproves (a cell that costs at least as much ran
within the limit at that length or longer, :class:`attnzoo.bench.predict.SkipLedger`), and a
measurement that exceeded a limit its prediction said it would keep, are noted in the run
(``run_notes``, kind ``prediction-wrong``). Every speed row records its timings' quantiles.
Every result is committed as it is measured; Ctrl-C marks the run interrupted and keeps what
finished.

FLOPs: ``spec.flops`` of the forward call; forward+backward counts 3x the forward (the usual
convention: the backward pass costs about twice the forward).
"""

from __future__ import annotations

import dataclasses
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from attnzoo.bench.env import environment, gemm_gflops, keep_freed_memory
from attnzoo.bench.gate import check_mixer
from attnzoo.bench.measure import median_seconds, peak_memory_bytes, timings
from attnzoo.bench.predict import (
    PROBE_REPEATS,
    CellKey,
    Declared,
    Limits,
    Point,
    Prediction,
    SkipLedger,
    Verdict,
    decide,
    overshoot,
)
from attnzoo.bench.runs import finishing, progress_bar, start_run
from attnzoo.bench.speed_suites import SpeedSuite, build_mask, masks_for
from attnzoo.mixers.base import Mixer
from attnzoo.ops.masks import Mask
from attnzoo.ops.softmax import softmax_attention
from attnzoo.registry import MixerSpec, build_mixer
from attnzoo.spec import LAYOUTS
from attnzoo.store import Store


@dataclasses.dataclass
class Cell:
    """One measured line: a (mixer, impl, pattern, mask kind, mode) over the suite's lengths."""

    spec: MixerSpec
    impl: str
    pattern: str
    mask: str
    mode: str
    history: list[Point] = dataclasses.field(default_factory=list)  # measured lengths and probes
    stopped: tuple[str, str] | None = None  # (kind, reason) recorded for every remaining length

    @property
    def causal(self) -> bool:
        return self.pattern.startswith("causal")

    @property
    def cross(self) -> bool:
        return self.pattern.endswith("cross")

    @property
    def key(self) -> CellKey:
        return CellKey(self.spec.name, self.impl, self.pattern, self.mask, self.mode,
                       base_mask=self.mask in ("full", "causal"))  # fmt: skip


def _mixer_kwargs(spec: MixerSpec, impl: str, suite: SpeedSuite) -> dict[str, Any]:
    fields = spec.config.field_names()
    kw: dict[str, Any] = {}
    if "num_heads" in fields:
        kw["num_heads"] = suite.heads
    if spec.impls:
        kw["impl"] = impl
    return kw


def _inputs(
    spec: MixerSpec, m: Mixer, T: int, suite: SpeedSuite, cross: bool
) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
    """Seeded inputs of the spec's layouts; returns (x, context, tokens of x, tokens of the
    context). A grid block gets the most even grid with about T tokens (its context too)."""
    g = torch.Generator().manual_seed(T)
    layout = LAYOUTS[spec.layout]
    sizes = layout.sizes_for(T)
    x = layout.example(suite.batch, sizes, suite.d_model, generator=g)
    t_eff = layout.tokens(sizes)
    if not cross:
        return x, None, t_eff, t_eff
    c_layout = LAYOUTS[spec.context_layout or spec.layout]
    c_sizes = c_layout.sizes_for(t_eff)
    ctx = c_layout.example(suite.batch, c_sizes, m.context_dim, generator=g)
    return x, ctx, t_eff, c_layout.tokens(c_sizes)


def _call(
    m: Mixer, cell: Cell, x: torch.Tensor, ctx: torch.Tensor | None, mask: Mask | None
) -> Callable[[], Any]:
    kwargs: dict[str, Any] = {}
    if ctx is not None:
        kwargs["context"] = ctx
    if mask is not None:
        kwargs["mask"] = mask
    if cell.mode == "step":
        return _step_call(m, x)
    if cell.mode == "fwd":

        def fwd() -> Any:
            with torch.no_grad():
                return m(x, **kwargs)

        return fwd
    out_shape = m.spec.role_info.output_shape(tuple(x.shape), m.d_model)  # [B, D] for pooling
    gy = torch.randn(out_shape, generator=torch.Generator().manual_seed(7))
    params = list(m.parameters())

    def fwdbwd() -> None:
        for p in params:
            p.grad = None
        m(x, **kwargs).backward(gy)

    return fwdbwd


def _step_call(m: Mixer, x: torch.Tensor) -> Callable[[], Any]:
    """One streaming step at position T: the state is built by T untimed steps over ``x``."""
    with torch.no_grad():
        state = m.init_state(batch_size=x.shape[0])
        for t in range(x.shape[1]):
            _, state = m.step(x[:, t], state)
    x_next = torch.randn(x.shape[0], x.shape[-1], generator=torch.Generator().manual_seed(11))

    def step() -> Any:
        with torch.no_grad():
            return m.step(x_next, state)

    return step


def measure(
    cell: Cell, T: int, suite: SpeedSuite, *, repeats: int | None = None, warmup: int | None = None
) -> dict[str, Any]:
    """Time (the quantiles of ``repeats`` calls after ``warmup``: min, q1, median, q3, max) and
    peak memory of one (cell, T); returns a row for the ``speed`` table."""
    spec = cell.spec
    m = build_mixer(
        spec.name,
        d_model=suite.d_model,
        causal=cell.causal,
        **_mixer_kwargs(spec, cell.impl, suite),
    )
    x, ctx, t_eff, s_eff = _inputs(spec, m, T, suite, cell.cross)
    mask = (
        None
        if cell.mask in ("full", "causal")
        else build_mask(cell.mask, cell.causal, t_eff, suite)
    )
    fn = _call(m, cell, x, ctx, mask)
    reps = suite.repeats if repeats is None else repeats
    stats = timings(fn, repeats=reps, warmup=suite.warmup if warmup is None else warmup)
    peak = peak_memory_bytes(fn)
    full_mask = mask if mask is not None else Mask(causal=cell.causal)
    flops: int | None = spec.flops(
        m.cfg, suite.batch, t_eff, s_eff if cell.cross else None, full_mask
    )
    if cell.mode == "fwdbwd":
        flops *= 3
    elif cell.mode == "step":
        flops = None  # one token's cost depends on the state kind; not defined by spec.flops
    return {
        "mixer": spec.name, "impl": cell.impl, "pattern": cell.pattern, "mask": full_mask.name,
        "mode": cell.mode, "batch": suite.batch, "seq_len": t_eff, "ctx_len": s_eff,
        "d_model": suite.d_model, "heads": suite.heads if "num_heads" in spec.config.field_names() else None,
        "head_dim": suite.head_dim if "num_heads" in spec.config.field_names() else None,
        "repeats": reps, **stats.as_row(), "peak_bytes": peak, "flops": flops,
    }  # fmt: skip


class ProbeFailed(Exception):
    """A probe length's measurement raised; the message names the length and the error."""


def _limits(cell: Cell, suite: SpeedSuite) -> Limits:
    """The budget and cap of one measurement: warm-up + repeats + the profiled call."""
    return Limits(suite.memory_budget, suite.time_cap, suite.warmup + suite.repeats + 1, cell.mode)


def _decide(cell: Cell, T: int, suite: SpeedSuite) -> tuple[Prediction, Verdict | None]:
    """The prediction at T and why it would exceed the suite's limits (``None``: run it),
    measuring unrecorded probes as :func:`attnzoo.bench.predict.decide` needs them."""
    spec = cell.spec
    declared = Declared.of(spec.complexity, LAYOUTS[spec.layout].axes, mode=cell.mode,
                           state=spec.state, impl=cell.impl)  # fmt: skip

    def probe(length: int) -> Point:
        # the fastest of a few calls: a single call on a busy machine can be 100x slow
        try:
            r = measure(cell, length, suite, repeats=PROBE_REPEATS, warmup=1)
        except Exception as e:  # noqa: BLE001  (recorded by the caller; the run goes on)
            raise ProbeFailed(f"failed at probe length {length}: {e!r}") from e
        return Point(length, r["min_s"], r["peak_bytes"], probe=True)

    return decide(cell.history, T, declared, _limits(cell, suite), probe)


def harness_calibration(suite: SpeedSuite, T: int = 1024) -> dict[str, float]:
    """How much the harness itself distorts, measured in this run.

    - ``noop_s``: the harness's per-call cost on an empty op (``noop_fraction`` of the SDPA call);
    - ``sdpa_harness_s`` vs ``sdpa_timeit_s``: raw causal SDPA on the same tensors timed by the
      harness and by a hand-written ``timeit`` (their ratio should be ~1);
    - ``sdpa_op_s``: the same call through ``attnzoo.ops.softmax_attention(impl="sdpa")``.
    """
    noop = median_seconds(lambda: None, repeats=1001, warmup=10)
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(suite.batch, T, suite.heads, suite.head_dim, generator=g) for _ in range(3)
    )
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def raw() -> torch.Tensor:
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

    with torch.no_grad():
        raw()
        by_timeit = statistics.median(timeit.repeat(raw, number=1, repeat=15))
        by_harness = median_seconds(raw, repeats=15, warmup=1)
        op = median_seconds(
            lambda: softmax_attention(q, k, v, mask="causal", impl="sdpa"), repeats=15, warmup=1
        )
    return {
        "T": T, "noop_s": noop, "noop_fraction": noop / by_harness, "sdpa_harness_s": by_harness,
        "sdpa_timeit_s": by_timeit, "harness_vs_timeit": by_harness / by_timeit, "sdpa_op_s": op,
    }  # fmt: skip


def plan(suite: SpeedSuite) -> list[Cell]:
    cells = []
    for spec in suite.specs():
        # a block that declares no impl has no reference: its one cell records the gate's failure
        impls = [i for i in spec.impls if i != "auto"] or ["reference"]
        # a mechanism with a single path is always timed, even if it is its reference
        impls = [i for i in impls if i not in suite.skip_impls] or impls[:1]
        for impl in impls:
            for pattern in spec.patterns:
                if pattern not in suite.patterns:
                    continue
                for mask in masks_for(suite, spec, pattern):
                    for mode in suite.modes:
                        streamable = (
                            spec.state != "none"
                            and pattern == "causal-self"
                            and spec.layout == "tokens"
                        )
                        if mode == "step" and not (streamable and mask == "causal"):
                            continue
                        cells.append(Cell(spec, impl, pattern, mask, mode))
    return cells


def run_speed(
    suite: SpeedSuite,
    store: Store,
    *,
    command: str,
    console: Console | None = None,
    progress: bool = True,
    allow_concurrent: bool = False,
) -> int:
    """Run ``suite`` into ``store``; returns the run id. ``allow_concurrent``: start even while
    another run of the store is alive (see :func:`attnzoo.bench.runs.start_run`).

    Ctrl-C marks the run 'interrupted' (everything measured stays) and raises :class:`RunInterrupted`.
    """
    console = console or Console(stderr=True)
    cells = plan(suite)
    specs = suite.specs()
    keep_freed_memory()  # before timing: see its docstring (recorded in env["allocator"])
    env = environment()
    console.print(
        f"measuring this machine's fp32 GEMM rate and the harness overhead ({env['cpu']}) ...",
        soft_wrap=True,
    )
    gemm = gemm_gflops()
    env["harness"] = harness_calibration(suite)
    run_id = start_run(
        store, kind="speed", suite=suite.name, command=command, config=suite.to_dict(), env=env,
        console=console, gemm_gflops=gemm, allow_concurrent=allow_concurrent,
    )  # fmt: skip
    store.add_specs(run_id, [s.to_dict() for s in specs])
    with finishing(store, run_id):
        _run_cells(suite, store, run_id, specs, cells, gemm, console, progress)
    return run_id


def _run_cells(
    suite: SpeedSuite, store: Store, run_id: int, specs: list[MixerSpec], cells: list[Cell], gemm: float,
    console: Console, progress: bool,
) -> None:  # fmt: skip
    gate: dict[tuple[str, str, str], str] = {}
    ledger = SkipLedger()
    for spec in specs:
        for r in check_mixer(spec):
            store.add_check(run_id, dataclasses.asdict(r))
            gate[(r.mixer, r.impl, r.pattern)] = (
                ""
                if r.ok
                else f"correctness gate failed: max |err| {r.max_abs_err:.2e} {r.detail}".strip()
            )
    total = sum(len(suite.lengths_for(cell.spec)) for cell in cells)
    with progress_bar(console, progress) as bar:  # fmt: skip
        task = bar.add_task("speed", total=total)
        for cell in cells:
            verdict = gate.get((cell.spec.name, cell.impl, cell.pattern))
            if cell.mode == "step" and verdict == "":
                verdict = gate.get((cell.spec.name, "step", cell.pattern))
            if verdict is None:
                cell.stopped = ("failed", "no correctness check ran for this path in this run")
            elif verdict:
                cell.stopped = ("failed", verdict)
            for T in suite.lengths_for(cell.spec):
                bar.update(
                    task,
                    description=f"{cell.spec.name}/{cell.impl} {cell.pattern} {cell.mask} {cell.mode} T={T}",
                )
                _one(suite, store, run_id, cell, T, gemm, ledger)
                bar.advance(task)


def _one(
    suite: SpeedSuite,
    store: Store,
    run_id: int,
    cell: Cell,
    T: int,
    gemm: float,
    ledger: SkipLedger,
) -> None:
    mask_name = (
        cell.mask
        if cell.mask in ("full", "causal")
        else build_mask(cell.mask, cell.causal, T, suite).name
    )
    base = {"mixer": cell.spec.name, "impl": cell.impl, "pattern": cell.pattern, "mask": mask_name,
            "mode": cell.mode, "seq_len": T}  # fmt: skip
    pred = None
    if cell.stopped is None and not suite.no_skip:
        try:
            pred, found = _decide(cell, T, suite)
        except ProbeFailed as e:  # recorded; the run goes on
            cell.stopped = ("failed", str(e))
        else:
            if found is not None:
                store.add_skip(run_id, {**base, "kind": "skipped", "reason": found.reason,
                                        "evidence": found.evidence})  # fmt: skip
                cell.stopped = ("skipped", f"a shorter length was already skipped: {found.reason}")
                for note in ledger.skipped(cell.key, T, found):
                    store.add_note(run_id, "prediction-wrong", note)
                return
    if cell.stopped is not None:
        store.add_skip(run_id, {**base, "kind": cell.stopped[0], "reason": cell.stopped[1]})
        return
    try:
        row = measure(cell, T, suite)
    except Exception as e:  # noqa: BLE001  (recorded; the run goes on)
        store.add_skip(run_id, {**base, "kind": "failed", "reason": repr(e)})
        cell.stopped = ("failed", f"failed at a shorter length: {e!r}")
        return
    cell.history.append(Point(T, row["min_s"], row["peak_bytes"]))
    rate = row["flops"] / row["median_s"] / 1e9 if row["flops"] and row["median_s"] > 0 else None
    row["gflops_per_s"] = rate
    row["gemm_fraction"] = rate / gemm if rate is not None and gemm > 0 else None
    store.add_speed(run_id, row)
    limits = _limits(cell, suite)
    notes = ledger.measured(cell.key, T, row["min_s"], row["peak_bytes"], limits)
    missed = None if pred is None else overshoot(pred, limits, row["min_s"], row["peak_bytes"])
    if missed:
        notes.append(f"{cell.key}: {missed}")
    for note in notes:
        store.add_note(run_id, "prediction-wrong", note)
