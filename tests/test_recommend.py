"""``attnzoo.recommend``: ranking measured mechanisms for a request, from stores built by hand."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from attnzoo.recommend import Candidate, recommend
from attnzoo.store import Store
from attnzoo.text import fmt_bytes

GIB = 1 << 30


def speed(mixer: str, T: int, median: float, *, impl: str = "fast", pattern: str = "causal-self",
          mode: str = "fwd", repeats: int = 5, spread: float = 0.05, peak: int | None = 1 << 20,
          d_model: int = 64) -> dict[str, Any]:  # fmt: skip
    """A speed row whose quartiles give ``spread`` (IQR / median)."""
    mask = "causal" if pattern.startswith("causal") else "full"
    return {"mixer": mixer, "impl": impl, "pattern": pattern, "mask": mask, "mode": mode,
            "batch": 1, "seq_len": T, "ctx_len": T, "d_model": d_model, "heads": 2,
            "head_dim": d_model // 2, "repeats": repeats, "median_s": median, "min_s": median * 0.9,
            "max_s": median * 1.5, "q1_s": median * (1 - spread / 2),
            "q3_s": median * (1 + spread / 2), "peak_bytes": peak, "flops": None,
            "gflops_per_s": None, "gemm_fraction": None}  # fmt: skip


def skip(mixer: str, T: int, kind: str, reason: str, impl: str = "fast") -> dict[str, Any]:
    return {"mixer": mixer, "impl": impl, "pattern": "causal-self", "mask": "causal",
            "mode": "fwd", "seq_len": T, "kind": kind, "reason": reason}  # fmt: skip


def add_run(store: Store, rows: Iterable[dict[str, Any]], skips: Iterable[dict[str, Any]] = (),
            *, status: str | None = "complete", specs: Iterable[dict[str, Any]] = ()) -> int:  # fmt: skip
    run = store.begin_run(kind="speed", suite="t", command="pytest", config={}, env={})
    for r in rows:
        store.add_speed(run, r)
    for s in skips:
        store.add_skip(run, s)
    if specs:
        store.add_specs(run, list(specs))
    if status is not None:
        store.finish_run(run, status)
    return run


def quality(mixer: str, metric: float, *, task: str = "mqar", cfg: str = '{"seq_len": 64}',
            d_model: int = 64, seed: int = 0, lr: float = 1e-3, best: bool = True) -> dict[str, Any]:  # fmt: skip
    return {"task": task, "task_config": cfg, "mixer": mixer, "d_model": d_model, "num_layers": 2,
            "lr": lr, "seed": seed, "params": 1, "state_size": None, "steps_run": 10,
            "status": "complete", "final_metric": metric, "best_metric": metric,
            "best_of_sweep": best, "seconds": 1.0}  # fmt: skip


def task_row(task: str, cfg: str, *, maximize: bool, tokens: int | None) -> dict[str, Any]:
    return {"task": task, "task_config": cfg, "description": "d", "metric": "accuracy",
            "maximize": maximize, "patterns": ["causal-self"], "fmt": ".3f", "bounded": True,
            "tokens": tokens, "point_keys": [["seq_len", "L"]]}  # fmt: skip


def add_quality_run(store: Store, rows: Iterable[dict[str, Any]],
                    tasks: Iterable[dict[str, Any]] = ()) -> int:  # fmt: skip
    run = store.begin_run(kind="quality", suite="t", command="pytest", config={}, env={})
    for r in rows:
        store.add_quality(run, r)
    for t in tasks:
        store.add_task(run, t)
    store.finish_run(run, "complete")
    return run


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s.duckdb")


def names(cands: list[Candidate]) -> list[str]:
    return [c.mixer for c in cands]


def test_ranks_by_time_at_the_nearest_length_at_or_above_the_request(store: Store) -> None:
    old = add_run(store, [speed("beta", 8192, 0.001)])  # superseded by the newer run of beta
    new = add_run(store, [
        speed("alpha", 4096, 0.0001), speed("alpha", 8192, 0.010), speed("alpha", 16384, 0.040),
        speed("alpha", 8192, 0.030, impl="slow"),
        speed("beta", 4096, 0.020), speed("beta", 8192, 0.020),
        speed("gamma", 16384, 0.015),
    ])  # fmt: skip
    rec = recommend(store, seq_len=6000, pattern="causal-self")
    # at 8192 (not alpha's 0.1 ms at 4096, below the request): alpha 10 ms < beta 20 ms; gamma's
    # 15 ms stands on 16384 only and still ranks by that upper bound
    assert names(rec.ranked) == ["alpha", "gamma", "beta"]
    alpha, gamma, beta = rec.ranked
    assert (alpha.impl, alpha.seq_len, alpha.requested_len, alpha.median_s) == ("fast", 8192, 6000, 0.010)  # fmt: skip
    assert (beta.run_id, beta.median_s) == (new, 0.020) and beta.run_id != old
    assert alpha.trust == "ok" and alpha.repeats == 5 and alpha.spread == pytest.approx(0.05)
    assert "upper bound" in alpha.note and "1.37x" in alpha.note
    assert gamma.seq_len == 16384 and "more than 2x: not near" in gamma.note
    assert not any(c.extrapolated for c in rec.ranked)
    rows = rec.table_rows()
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["mixer"] == "alpha"
    assert rows[0]["peak_bytes"] == 1 << 20 and rows[0]["run_id"] == new
    # alpha and beta stand near and trusted: only gamma (16384 > 2 x 6000) needs measuring
    assert rec.suggestion is not None and "--mixers gamma " in rec.suggestion
    assert not any("no trustworthy" in w for w in rec.warnings)
    assert not any(w.startswith("the times come from runs") for w in rec.warnings)  # one run


def test_memory_budget_excludes_with_the_reason(store: Store) -> None:
    add_run(store, [
        speed("alpha", 8192, 0.001, peak=2 * GIB),
        speed("beta", 8192, 0.0025, peak=GIB // 2),
        # gamma: only longer than the request above budget; below it small -> interpolated
        speed("gamma", 4096, 0.001, peak=GIB // 4), speed("gamma", 16384, 0.002, peak=5 * GIB),
        # delta: only a longer length, above budget: unknown, kept and flagged
        speed("delta", 16384, 0.003, peak=3 * GIB),
    ])  # fmt: skip
    rec = recommend(store, seq_len=8192, pattern="causal-self", memory=GIB)
    assert names(rec.ranked) == ["beta", "delta"]
    assert rec.ranked[0].fits_memory is True and rec.ranked[1].fits_memory is None
    excluded = dict(rec.excluded)
    assert set(excluded) == {"alpha", "gamma"}
    assert "peak 2 GiB at T=8192 > budget 1 GiB" in excluded["alpha"]
    assert (
        "peak ~1.12 GiB at T=8192 interpolated from T=4096 and T=16384 > budget"
        in excluded["gamma"]
    )
    assert any("delta" in w and "unknown" in w for w in rec.warnings)
    # a budget over those peaks keeps them all, alpha (fastest) first
    roomy = recommend(store, seq_len=8192, pattern="causal-self", memory=4 * GIB)
    assert names(roomy.ranked) == ["alpha", "gamma", "beta", "delta"] and not roomy.excluded
    # without a budget nothing is judged
    assert all(c.fits_memory is None for c in recommend(store, seq_len=8192, pattern="causal-self").ranked)  # fmt: skip


def test_untrusted_timings_are_flagged_and_ranked_after_trusted_ones(store: Store) -> None:
    add_run(store, [
        speed("noisy", 1024, 0.001, spread=0.6),
        speed("few", 1024, 0.002, repeats=2),
        speed("steady", 1024, 0.009),
        speed("steadier", 1024, 0.008),
    ])  # fmt: skip
    rec = recommend(store, seq_len=1024, pattern="causal-self")
    assert names(rec.ranked) == ["steadier", "steady", "noisy", "few"]
    assert [c.trust for c in rec.ranked] == ["ok", "ok", "noisy", "few repeats"]
    assert rec.ranked[3].spread is None  # two repeats have no measured spread
    assert any(w.startswith("2 of 4 ranked") and "noisy, few" in w for w in rec.warnings)
    assert rec.suggestion is not None and "--mixers few,noisy " in rec.suggestion


def test_no_trustworthy_measurement_near_the_request_is_said_plainly(store: Store) -> None:
    add_run(store, [speed("alpha", 1024, 0.001, spread=0.9, repeats=8),
                    speed("beta", 65536, 0.5)])  # fmt: skip
    rec = recommend(store, seq_len=8192, pattern="causal-self")
    assert names(rec.ranked) == ["beta"]  # alpha: one length below, nothing to extrapolate from
    assert dict(rec.excluded)["alpha"].startswith("fast: measured only up to T=1024")
    assert any(w.startswith("no trustworthy measurement near T=8192") for w in rec.warnings)
    assert rec.suggestion == (
        f"attnzoo bench speed --mixers alpha,beta --seq-lens 8192 --patterns causal-self --mode fwd "
        f"--repeats 5 --db {store.path}"
    )
    # a noisy row measured at the request with many repeats asks for more of them
    add_run(store, [speed("alpha", 8192, 0.01, spread=0.9, repeats=8)])
    rec = recommend(store, seq_len=8192, pattern="causal-self")
    assert names(rec.ranked) == ["beta", "alpha"] and rec.ranked[1].trust == "noisy"
    assert any(w.startswith("no trustworthy measurement near") for w in rec.warnings)
    assert rec.suggestion is not None and "--repeats 16 " in rec.suggestion


def test_an_empty_store_says_so_and_suggests_measuring_every_mechanism(store: Store) -> None:
    rec = recommend(store, seq_len=4096, pattern="noncausal-self", train=True)
    assert rec.ranked == [] and rec.excluded == []
    assert rec.warnings == ["the store has no noncausal-self fwdbwd (full mask) speed measurement "
                            "of a tokens mechanism in runs none: nothing to rank"]  # fmt: skip
    assert rec.suggestion == (
        f"attnzoo bench speed --seq-lens 4096 --patterns noncausal-self --mode fwdbwd --repeats 5 "
        f"--db {store.path}"
    )


def test_extrapolation_is_flagged_and_ranked_after_measurements(store: Store) -> None:
    quadratic = [speed("alpha", T, 1e-3 * (T / 512) ** 2, peak=T * 1000) for T in (512, 1024, 2048)]
    add_run(store, [
        *quadratic,
        speed("beta", 8192, 1.0),  # measured, far slower than alpha's estimate
        speed("gamma", 1024, 1e-4), speed("gamma", 2048, 2e-4),  # two lengths: no exponent
        *(speed("delta", T, 1e-5) for T in (64, 128, 256)),  # 32x below: too far
    ])  # fmt: skip
    rec = recommend(store, seq_len=8192, pattern="causal-self")
    assert names(rec.ranked) == ["beta", "alpha"]
    alpha = rec.ranked[1]
    assert alpha.extrapolated and alpha.seq_len == 2048 and alpha.requested_len == 8192
    assert alpha.median_s == pytest.approx(1e-3 * 16**2)
    assert alpha.peak_bytes == pytest.approx(8192 * 1000, rel=1e-6)
    assert alpha.q1_s is None and alpha.q3_s is None
    assert "extrapolated 4x beyond T=2048: time ~ T^2.00" in alpha.note
    excluded = dict(rec.excluded)
    assert "cannot extrapolate (2 length(s)" in excluded["gamma"]
    assert "32x below the request; no extrapolation beyond 16x" in excluded["delta"]
    assert any("extrapolated" in w and "alpha" in w for w in rec.warnings)
    # the extrapolated peak counts against a budget
    tight = recommend(store, seq_len=8192, pattern="causal-self", memory=4 << 20)
    assert "alpha" in dict(tight.excluded) and "extrapolated peak" in dict(tight.excluded)["alpha"]


def test_skips_at_or_below_the_request_exclude_or_flag(store: Store) -> None:
    add_run(store, [
        speed("alpha", 1024, 0.001), speed("alpha", 1024, 0.0005, impl="broken"),
        speed("beta", 1024, 0.002),
        *(speed("gamma", T, 1e-4 * T / 256) for T in (256, 512, 1024)),
    ], [
        skip("alpha", 1024, "failed", "RuntimeError('boom')", impl="broken"),
        skip("beta", 2048, "failed", "OOM"),  # above the request: irrelevant
        skip("gamma", 2048, "skipped", "predicted peak 9 GiB > budget 8 GiB"),
        skip("delta", 512, "failed", "correctness gate failed"),
    ])  # fmt: skip
    rec = recommend(store, seq_len=1024, pattern="causal-self")
    assert names(rec.ranked) == ["gamma", "alpha", "beta"]  # gamma's skip lies above 1024
    assert rec.ranked[1].impl == "fast"  # the faster 'broken' impl failed at the request
    assert dict(rec.excluded) == {
        "delta": "fast: failed at T=512 in run 1: correctness gate failed"
    }
    assert rec.suggestion is None  # a failure is not fixed by measuring again
    on = recommend(store, seq_len=4096, pattern="causal-self")
    gamma = next(c for c in on.ranked if c.mixer == "gamma")
    assert gamma.extrapolated and "the bench skipped T=2048 in run 1: predicted peak" in gamma.note
    assert "beta" in dict(on.excluded) and "failed at T=2048" in dict(on.excluded)["beta"]


def test_mode_pattern_layout_and_runs_select_the_rows(store: Store) -> None:
    grid_spec = {"name": "image", "layout": "grid2d", "patterns": ["noncausal-self"]}
    first = add_run(store, [
        speed("alpha", 1024, 0.001), speed("alpha", 1024, 0.003, mode="fwdbwd"),
        speed("beta", 1024, 0.002),
        speed("alpha", 1024, 0.0001, pattern="noncausal-self"),
        speed("image", 1024, 0.0001, pattern="noncausal-self"),
    ], specs=[grid_spec])  # fmt: skip
    second = add_run(store, [speed("beta", 1024, 0.0005)])
    live = add_run(store, [speed("alpha", 1024, 1e-9)], status=None)  # still running
    rec = recommend(store, seq_len=1024, pattern="causal-self", train=True)
    assert names(rec.ranked) == ["alpha"] and rec.ranked[0].mode == "fwdbwd"
    assert rec.excluded == [("beta", "measured only in fwd mode; fwdbwd not measured")]
    assert any(f"speed run(s) {live} still running: left out" in w for w in rec.warnings)
    fwd = recommend(store, seq_len=1024, pattern="causal-self")
    assert names(fwd.ranked) == ["beta", "alpha"] and fwd.ranked[0].run_id == second
    assert any(f"runs {first}, {second}" in w for w in fwd.warnings)  # mixed runs are said
    only_first = recommend(store, seq_len=1024, pattern="causal-self", run_ids=[first])
    assert names(only_first.ranked) == ["alpha", "beta"]
    assert only_first.request["speed_runs"] == [first]
    # layouts: the grid block answers only a grid2d request, whose command asks for a grid side
    assert names(recommend(store, seq_len=1024, pattern="noncausal-self").ranked) == ["alpha"]
    grid = recommend(store, seq_len=1000, pattern="noncausal-self", layout="grid2d")
    assert names(grid.ranked) == ["image"] and grid.suggestion is None
    longer = recommend(store, seq_len=3000, pattern="noncausal-self", layout="grid2d")
    assert longer.ranked == [] and longer.suggestion is not None
    assert "--mixers image --image-sizes 55 --patterns noncausal-self" in longer.suggestion


def test_task_ranks_by_quality_in_the_task_direction(store: Store) -> None:
    add_run(store, [speed("alpha", 1024, 0.003), speed("beta", 1024, 0.001),
                    speed("gamma", 1024, 0.002), speed("delta", 1024, 0.0005)])  # fmt: skip
    near, far = '{"seq_len": 1024}', '{"seq_len": 64}'
    add_quality_run(store, [
        quality("alpha", 0.9, cfg=near, seed=0), quality("alpha", 0.7, cfg=near, seed=1),
        quality("alpha", 0.99, cfg=near, seed=0, lr=1e-2, best=False),  # not the flagged lr
        quality("beta", 0.5, cfg=near), quality("beta", 0.6, cfg=near, d_model=128),
        quality("gamma", 0.3, cfg=near),
        quality("delta", 1.0, cfg=far),  # another task point: not compared
        quality("beta", 0.2, task="regression"), quality("gamma", 0.1, task="regression"),
        quality("alpha", 0.9, task="regression"), quality("epsilon", 0.01, task="regression"),
    ], [task_row("mqar", near, maximize=True, tokens=1024),
        task_row("mqar", far, maximize=True, tokens=64),
        task_row("regression", '{"seq_len": 64}', maximize=False, tokens=None)])  # fmt: skip
    rec = recommend(store, seq_len=1024, pattern="causal-self", task="mqar")
    assert names(rec.ranked) == ["alpha", "beta", "gamma", "delta"]
    alpha, beta, _, delta = rec.ranked
    assert alpha.quality == pytest.approx(0.8)  # mean of the flagged rows of two seeds
    assert "mean of 2 seed(s) at d_model 64" in alpha.quality_note
    assert "point L=1024" in alpha.quality_note
    assert beta.quality == pytest.approx(0.6) and "d_model 128 (best of 2 widths)" in beta.quality_note  # fmt: skip
    assert delta.quality is None and delta.quality_note == "no mqar result at point L=1024"
    assert any("delta" in w and "ranked after" in w for w in rec.warnings)
    # lower is better for regression; epsilon has a result but no speed row
    reg = recommend(store, seq_len=1024, pattern="causal-self", task="regression")
    assert names(reg.ranked) == ["gamma", "beta", "alpha", "delta"]
    assert (
        "epsilon",
        "regression results but no causal-self fwd speed measurement",
    ) in reg.excluded
    assert reg.suggestion is not None and "epsilon" in reg.suggestion
    # the nearest task point to the request is used: at 64 tokens only delta has a result
    short = recommend(store, seq_len=64, pattern="causal-self", task="mqar")
    assert short.ranked[0].mixer == "delta" and short.ranked[0].quality == 1.0


def test_bad_inputs_raise_errors_naming_the_argument(store: Store) -> None:
    add_run(store, [speed("alpha", 1024, 0.001)])
    peers = store.begin_run(kind="peers", suite="t", command="pytest", config={}, env={})
    store.finish_run(peers, "complete")
    add_quality_run(store, [quality("alpha", 0.5)])
    cases = [
        ({"seq_len": 0}, "seq_len must be a positive number of tokens, got 0"),
        ({"pattern": "causal"}, "did you mean 'causal-self'"),
        ({"memory": 0}, "memory must be a positive number of bytes (or None for no budget), got 0"),
        ({"layout": "grid"}, "layout must be one of tokens, grid2d, grid3d, got 'grid'"),
        ({"task": "mqa"}, "task 'mqa' has no quality results in runs 3 of"),
        ({"run_ids": [99]}, "run_ids: no run 99 in"),
        ({"run_ids": [peers]}, f"run {peers} is a peers run; recommend reads speed and quality"),
    ]
    for change, message in cases:
        args = {"seq_len": 1024, "pattern": "causal-self", **change}
        with pytest.raises(ValueError) as e:
            recommend(store, **args)
        assert message in str(e.value), (change, str(e.value))
    with pytest.raises(ValueError, match=r"did you mean 'mqar'\?\); tasks there: mqar"):
        recommend(store, seq_len=1024, pattern="causal-self", task="mqa")


def test_fmt_bytes_and_table_rows_round_trip_as_json(store: Store) -> None:
    assert [fmt_bytes(n) for n in (None, 512, 1536, 3 << 20, GIB)] == [
        "-", "512 B", "1.5 KiB", "3 MiB", "1 GiB"
    ]  # fmt: skip
    add_run(store, [speed("alpha", 1024, 0.001)])
    rows = recommend(store, seq_len=1024, pattern="causal-self").table_rows()
    assert json.loads(json.dumps(rows))[0]["median_s"] == 0.001
