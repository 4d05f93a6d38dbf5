"""The report's quality section on a synthetic store: every suite's latest run, per-task tables
(MQAR's L/kv, mean ± std over seeds, extra evaluations), best-of-sweep in the metric's direction,
the figures and their labels, the speed cross-reference, empty and partial stores, bad input."""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

import pytest

from attnzoo.report import build_report
from attnzoo.report.plots import panels_svg
from attnzoo.report.quality import _attach, quality_section
from attnzoo.report.quality_rows import closest_speed, pick_best
from attnzoo.store import Store
from attnzoo.tasks import TASKS

ZOO_POINTS = ((64, 4), (128, 8))
ZOO_BASE = {"softmax": 0.9, "linear": 0.6, "gla": 0.5}  # gla gets no speed row
REG_BASE = {"softmax": 0.4, "lla": 0.2}  # MSE: lla is better (lower)
PTR_BASE = {"softmax": 0.95, "linear": 0.7}
SEEDS = (0, 1)


def zoo_acc(L: int, mixer: str, d: int, seed: int, lr: float) -> float:
    """The synthetic accuracy; 3e-3 is the best lr except for (linear, 64, seed 0)."""
    good = 1e-3 if (mixer, d, seed) == ("linear", 64, 0) else 3e-3
    acc = ZOO_BASE[mixer] + 0.04 * (d == 128) - 0.1 * (L == 128) + 0.02 * seed
    return acc if lr == good else acc - 0.3


def reg_mse(mixer: str, d: int, seed: int, lr: float) -> float:
    base = REG_BASE[mixer] * 64 / d + 0.01 * seed
    return base if lr == 1e-2 else 3 * base


def _speed_row(mixer: str, impl: str, pattern: str, mode: str, T: int, ms: float) -> dict:
    mask = "causal" if pattern.startswith("causal") else "full"
    return {"mixer": mixer, "impl": impl, "pattern": pattern, "mask": mask, "mode": mode,
            "batch": 1, "seq_len": T, "ctx_len": T, "d_model": 64, "heads": 2, "head_dim": 32,
            "repeats": 3, "median_s": ms / 1e3, "min_s": ms / 1e3, "q1_s": ms / 1e3,
            "q3_s": ms / 1e3, "max_s": ms / 1e3, "peak_bytes": 1 << 20,
            "flops": 10**6, "gflops_per_s": 1.0, "gemm_fraction": 0.1}  # fmt: skip


def _model(store: Store, run: int, task: str, cfg: dict, mixer: str, d: int, seed: int, lr: float,
           metric: float, state: int | None, curve: bool) -> None:  # fmt: skip
    if curve:  # written before the model's row, as the runner does
        for step, m in ((50, metric / 2), (100, metric)):
            store.add_curve_point(run, {"task": task, "mixer": mixer, "d_model": d, "lr": lr,
                                        "seed": seed, "step": step, "train_loss": 1.0,
                                        "eval_loss": 1.0, "metric": m, "seconds": 1.0})  # fmt: skip
    # what the bench writes before training a task point
    store.add_task(
        run, {**TASKS[task].describe(cfg), "task_config": json.dumps(cfg, sort_keys=True)}
    )
    store.add_quality(run, {
        "task": task, "task_config": json.dumps(cfg, sort_keys=True), "mixer": mixer, "d_model": d,
        "num_layers": 2, "lr": lr, "seed": seed, "params": 1000 * d, "state_size": state,
        "steps_run": 100, "status": "complete", "final_metric": metric, "best_metric": metric,
        "best_of_sweep": False, "seconds": 2.0 + seed,
    })  # fmt: skip


def build_quality_store(path: Path) -> tuple[Store, dict[str, int]]:
    """A speed run, an old and a new "zoology" run (MQAR at two grid points), a "regression"
    run (MSE) then a later empty failed one, a "pointer" run with an extra evaluation. Returns
    the store and the run ids."""
    store = Store(path)
    ids: dict[str, int] = {}
    new = {"command": "pytest", "env": {}, "config": {}}
    ids["speed"] = store.begin_run(kind="speed", suite="quick", **new)
    for row in [
        _speed_row("softmax", "sdpa", "causal-self", "fwd", 64, 0.3),
        _speed_row("softmax", "sdpa", "causal-self", "fwd", 256, 1.0),
        _speed_row("softmax", "blocked", "causal-self", "fwd", 256, 2.0),
        _speed_row("softmax", "sdpa", "causal-self", "fwdbwd", 256, 0.05),  # wrong mode
        _speed_row("softmax", "sdpa", "noncausal-self", "fwd", 256, 0.1),  # wrong pattern for MQAR
        _speed_row("linear", "chunk", "causal-self", "fwd", 256, 0.5),
        _speed_row("linear", "chunk", "causal-self", "fwd", 1024, 2.0),
    ]:
        store.add_speed(ids["speed"], row)
    store.finish_run(ids["speed"], "complete")

    # covered by the newer zoology run (same point, mechanism, width): not shown
    ids["zoology_old"] = store.begin_run(kind="quality", suite="zoology", **new)
    _model(store, ids["zoology_old"], "mqar", {"vocab_size": 256, "seq_len": 64,
           "num_kv_pairs": 4, "power_a": 0.01}, "softmax", 64, 0, 1e-3, 0.5, None, curve=False)  # fmt: skip
    store.finish_run(ids["zoology_old"], "complete")
    # a point the newer run did not train (a suite run in parts): shown
    ids["zoology_part"] = store.begin_run(kind="quality", suite="zoology", **new)
    _model(store, ids["zoology_part"], "mqar", {"vocab_size": 512, "seq_len": 256,
           "num_kv_pairs": 16, "power_a": 0.01}, "softmax", 64, 0, 3e-3, 0.7, None, curve=False)  # fmt: skip
    store.finish_run(ids["zoology_part"], "interrupted")

    ids["zoology"] = run = store.begin_run(kind="quality", suite="zoology", **new)
    for L, kv in ZOO_POINTS:
        cfg = {"vocab_size": 256, "seq_len": L, "num_kv_pairs": kv, "power_a": 0.01}
        for mixer in ZOO_BASE:
            for d in (64, 128):
                state = {"softmax": 4 * L * d, "linear": 2 * d * d, "gla": d * d}[mixer]
                for seed in SEEDS:
                    for lr in (1e-3, 3e-3):
                        acc = zoo_acc(L, mixer, d, seed, lr)
                        _model(store, run, "mqar", cfg, mixer, d, seed, lr, acc, state, True)
                    best = max((1e-3, 3e-3), key=lambda lr: zoo_acc(L, mixer, d, seed, lr))
                    store.mark_best_of_sweep(run, "mqar", mixer, d, seed, best)
    store.finish_run(run, "complete")

    ids["regression"] = run = store.begin_run(kind="quality", suite="regression", **new)
    cfg = {"d_x": 4, "num_pairs": 32, "mode": "drift"}  # 64 tokens
    for mixer in REG_BASE:
        for d in (32, 64):
            for seed in SEEDS:
                for lr in (1e-3, 1e-2):
                    mse = reg_mse(mixer, d, seed, lr)
                    _model(store, run, "regression", cfg, mixer, d, seed, lr, mse, 64 * d, True)
                if seed == 0:  # seed 1 is left unflagged: the report must pick the lowest MSE
                    store.mark_best_of_sweep(run, "regression", mixer, d, seed, 1e-2)
    store.finish_run(run, "complete")
    ids["regression_failed"] = store.begin_run(kind="quality", suite="regression", **new)
    store.finish_run(ids["regression_failed"], "failed", note="crashed before any model")

    ids["pointer"] = run = store.begin_run(kind="quality", suite="pointer", **new)
    cfg = {"task": "sort", "train_n": [5, 10], "test_n": [11, 20]}
    for mixer, base in PTR_BASE.items():
        for seed in SEEDS:
            _model(store, run, "pointer-sort", cfg, mixer, 32, seed, 1e-3, base - 0.05 * seed,
                   None, curve=False)  # fmt: skip
            store.add_quality_eval(run, {"task": "pointer-sort", "mixer": mixer, "d_model": 32,
                                         "lr": 1e-3, "seed": seed, "name": "greedy_n11_20",
                                         "value": base - 0.3 - 0.1 * seed})  # fmt: skip
            store.mark_best_of_sweep(run, "pointer-sort", mixer, 32, seed, 1e-3)
    store.finish_run(run, "complete")
    return store, ids


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, int], str]:
    store, ids = build_quality_store(tmp_path_factory.mktemp("quality") / "q.duckdb")
    page = build_report(store).page("quality.html")
    section = page[page.index('<section id="quality">') :]
    return store, ids, section[: section.index("</section>")]


def rows_of(page: str, table_id: str) -> list[list[str]]:
    m = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, flags=re.S)
    assert m, f"table {table_id} missing"
    rows = re.findall(r"<tr>(.*?)</tr>", m.group(1), flags=re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S) for r in rows]


def head_of(page: str, table_id: str) -> list[str]:
    m = re.search(rf'<table id="{table_id}"><thead><tr>(.*?)</tr>', page, flags=re.S)
    assert m, f"table {table_id} missing"
    return re.findall(r"<th>(.*?)</th>", m.group(1))


def ms(values: list[float], fmt: str) -> str:
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def test_every_suite_latest_run_with_rows(built: tuple[Store, dict[str, int], str]) -> None:
    _, ids, sec = built
    table = rows_of(sec, "quality-table")
    assert [r[0] for r in table] == ["zoology", "zoology", "regression", "pointer"]  # by run id
    assert f'href="#quality-run-{ids["zoology_part"]}"' in table[0][1]
    assert f'id="quality-run-{ids["zoology_part"]}"' in sec
    overview = {r[0]: r for r in table}  # the later zoology row wins: the full run
    assert f'href="#quality-run-{ids["zoology"]}"' in overview["zoology"][1]
    assert overview["zoology"][4:] == ["48", "mqar", "gla, linear, softmax", "64, 128", "0, 1",
                                       "0.001, 0.003"]  # fmt: skip
    # the later regression run failed before any model: the one with rows is shown
    assert f'href="#quality-run-{ids["regression"]}"' in overview["regression"][1]
    for old in ("zoology_old", "regression_failed"):
        assert f'id="quality-run-{ids[old]}"' not in sec
    assert f"run {ids['zoology']}, complete, started" in sec


def test_mqar_table_per_point_with_mean_std_and_best_lr(
    built: tuple[Store, dict[str, int], str],
) -> None:
    _, ids, sec = built
    tid = f"quality-{ids['zoology']}-mqar-table"
    assert head_of(sec, tid)[:7] == ["L", "kv", "mechanism", "d_model", "layers", "best lr",
                                     "seeds"]  # fmt: skip
    rows = rows_of(sec, tid)
    assert len(rows) == len(ZOO_POINTS) * len(ZOO_BASE) * 2
    for L, kv in ZOO_POINTS:
        for mixer in ZOO_BASE:
            for d in (64, 128):
                (row,) = [r for r in rows if r[:4] == [str(L), str(kv), mixer, str(d)]]
                best = [max(zoo_acc(L, mixer, d, s, lr) for lr in (1e-3, 3e-3)) for s in SEEDS]
                assert row[7] == ms(best, ".3f")
                assert row[5] == ("0.001, 0.003" if (mixer, d) == ("linear", 64) else "0.003")
                assert row[6] == "2"
    # within each (point, width) the rows run best first; softmax is the best (green) one
    first = rows[0]
    assert first[:4] == ["64", "4", "softmax", "64"]
    assert re.search(r'<td class="num ok">0\.910 ± 0\.014</td>', sec)
    sweep = rows_of(sec, f"quality-{ids['zoology']}-mqar-sweep")
    assert len(sweep) == 48 and sum(r[-1] == "best" for r in sweep) == 24
    assert not any("differs" in r[-1] for r in sweep)


def test_regression_follows_the_lower_is_better_direction(
    built: tuple[Store, dict[str, int], str],
) -> None:
    _, ids, sec = built
    assert "task regression: MSE (lower is better)" in sec
    rows = rows_of(sec, f"quality-{ids['regression']}-regression-table")
    for d in (32, 64):
        ordered = [r for r in rows if r[1] == str(d)]
        assert [r[0] for r in ordered] == ["lla", "softmax"]  # best (lowest MSE) first
        for r in ordered:
            assert r[3] == "0.01"  # the lr with the lower MSE, flagged or not
            assert r[5] == ms([reg_mse(r[0], d, s, 1e-2) for s in SEEDS], ".3g")
    lla64 = ms([reg_mse("lla", 64, s, 1e-2) for s in SEEDS], ".3g")
    assert f'<td class="num ok">{lla64}</td>' in sec
    sweep = rows_of(sec, f"quality-{ids['regression']}-regression-sweep")
    differs = [r for r in sweep if "differs" in r[-1]]
    assert len(differs) == 4 and all(r[-1] == "best (stored flag differs)" for r in differs)
    assert all(r[4] == "1" and r[3] == "0.01" for r in differs)  # the unflagged seed-1 groups


def test_extra_evaluations_are_columns(built: tuple[Store, dict[str, int], str]) -> None:
    _, ids, sec = built
    tid = f"quality-{ids['pointer']}-pointer-sort-table"
    head = head_of(sec, tid)
    assert "greedy_n11_20" in head and "task pointer-sort: greedy exact match" in sec
    col = head.index("greedy_n11_20")
    for row in rows_of(sec, tid):
        base = PTR_BASE[row[0]]
        assert row[col] == ms([base - 0.3 - 0.1 * s for s in SEEDS], ".3f")


def test_figures_and_labels(built: tuple[Store, dict[str, int], str]) -> None:
    _, ids, sec = built
    # mqar and regression: width, state, curves, latency; pointer and the partial zoology run
    # (no state, no curves): width and latency only
    assert sec.count("<svg") == 4 + 4 + 2 + 2
    assert sec.count("<figure") == sec.count("</figure>") == 12
    assert sec.count('<figure style="grid-column:1/-1">') == 4  # MQAR's two panels: full width
    for text in ("model width d_model", "state floats after one sequence (all layers)",
                 "training step", "forward latency (ms)", "accuracy (higher is better)",
                 "MSE (lower is better)", "L=64, kv=4", "L=128, kv=8",
                 f"run {ids['zoology']} mqar: best-of-sweep accuracy vs model width"):  # fmt: skip
        assert text in sec, text
    # Zoology's plot has one panel per grid point: both titles inside the first figure
    main = sec[sec.index(f'id="quality-run-{ids["zoology"]}"') :]
    first = main[main.index("<figure") : main.index("</figure>")]
    assert "L=64, kv=4" in first and "L=128, kv=8" in first
    assert "<script" not in sec and not re.search(r'(?:src|href)\s*=\s*"(?:https?:)?//', sec)


def test_accuracy_vs_latency_cross_reference(built: tuple[Store, dict[str, int], str]) -> None:
    _, ids, sec = built
    rows = rows_of(sec, f"quality-{ids['zoology']}-mqar-latency")
    by = {(r[0], r[1]): [re.sub(r"<[^>]+>", "", c) for c in r] for r in rows}
    # L=64: the T=64 row; L=128: 64 and 256 are equally far (log scale), the longer wins
    # (latencies with their quartiles and repeats; an untrusted one would start with ~)
    assert by[("L=64, kv=4", "softmax")][2:7] == ["64", "64", "sdpa", "causal-self",
                                                  "0.300 [0.300–0.300] n=3"]  # fmt: skip
    assert by[("L=128, kv=8", "softmax")][2:7] == ["128", "256", "sdpa", "causal-self",
                                                   "1.000 [1.000–1.000] n=3"]  # fmt: skip
    assert by[("L=128, kv=8", "linear")][3:7] == ["256", "chunk", "causal-self",
                                                  "0.500 [0.500–0.500] n=3"]  # fmt: skip
    assert by[("L=64, kv=4", "gla")][3] == "no speed row"
    ptr = rows_of(sec, f"quality-{ids['pointer']}-pointer-sort-latency")
    # pointer tasks prefer the non-causal pattern (their encoder); train_n max = 10 tokens
    assert [[re.sub(r"<[^>]+>", "", c) for c in r[1:7]] for r in ptr if r[1] == "softmax"] == [
        ["softmax", "10", "256", "sdpa", "noncausal-self", "0.100 [0.100–0.100] n=3"]
    ]
    assert "Latencies: forward, from speed run" in sec


def test_curves_attach_to_their_own_grid_point(built: tuple[Store, dict[str, int], str]) -> None:
    store, ids, _ = built
    rows = store.quality([ids["zoology"]])
    curves = _attach(store.curves([ids["zoology"]]), rows, nearest=False)
    assert sum(map(len, curves.values())) == 2 * len(rows)
    for r in rows:  # both grid points share (task, mixer, width, lr, seed): time tells them apart
        assert [c["metric"] for c in curves[id(r)]] == [r["best_metric"] / 2, r["best_metric"]]


def test_a_curve_started_right_after_another_point_stays_with_its_own(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.duckdb")
    run = store.begin_run(kind="quality", suite="t", command="t", config={}, env={})
    for L, pause in ((16, 0.0), (32, 0.3)):  # same (task, mixer, width, lr, seed), two points
        curve = {"task": "mqar", "mixer": "softmax", "d_model": 16, "lr": 1e-3, "seed": 0,
                 "train_loss": 1.0, "eval_loss": 1.0, "seconds": 1.0}  # fmt: skip
        store.add_curve_point(run, {**curve, "step": 1, "metric": L / 100})
        time.sleep(pause)  # the second point's first eval is nearer the first point's row
        store.add_curve_point(run, {**curve, "step": 2, "metric": L / 100})
        _model(store, run, "mqar", {"seq_len": L, "num_kv_pairs": 2}, "softmax", 16, 0, 1e-3,
               L / 100, None, curve=False)  # fmt: skip
    rows = store.quality([run])
    curves = _attach(store.curves([run]), rows, nearest=False)
    for r in rows:
        assert [c["metric"] for c in curves[id(r)]] == [r["best_metric"]] * 2
    if "task_config" in store.curves([run])[0]:  # schema v4 records the point: time is moot
        late = {**curve, "step": 3, "metric": 0.16, "task_config": rows[0]["task_config"]}
        store.add_curve_point(run, late)  # after both rows, yet it belongs to the first point
        curves = _attach(store.curves([run]), rows, nearest=False)
        assert [c["metric"] for c in curves[id(rows[0])]] == [0.16] * 3
        assert len(curves[id(rows[1])]) == 2


def test_helpers() -> None:
    """The tokens per layer each task stores for its points (the report's task length)."""
    tokens = {t: TASKS[t].describe(c)["tokens"] for t, c in (
        ("mqar", {"seq_len": 64, "num_kv_pairs": 4}), ("listops", {"max_length": 48}),
        ("regression", {"num_pairs": 32}), ("pointer-sort", {"train_n": [5, 10]}),
        ("digits", {"image_size": 32}))}  # fmt: skip
    assert tokens == {"mqar": 64, "listops": 48, "regression": 64, "pointer-sort": 10, "digits": 64}
    assert TASKS["mqar"].describe({})["tokens"] is None
    rows = [{"best_metric": m, "best_of_sweep": f} for m, f in ((0.5, False), (0.9, False),
                                                                (0.9, True), (None, False))]  # fmt: skip
    assert pick_best(rows, maximize=True) is rows[2]  # tie: the flagged one
    assert pick_best(rows, maximize=False) is rows[0]
    assert pick_best(rows[3:], maximize=True) is rows[3]
    speed = [_speed_row("m", "a", "causal-self", "fwd", t, t / 100) for t in (64, 512)]
    speed.append(_speed_row("m", "b", "causal-self", "fwd", 512, 1.0))
    speed.append(_speed_row("m", "c", "causal-self", "fwdbwd", 512, 0.1))  # forward only
    assert closest_speed(speed, "m", 400, ("causal-self",))["impl"] == "b"
    assert closest_speed(speed, "m", 100, ("causal-self",))["seq_len"] == 64
    assert closest_speed(speed, "m", 100, ("noncausal-self",)) is None


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="length must be a positive token count, got 0"):
        closest_speed([], "softmax", 0, ("causal-self",))
    with pytest.raises(ValueError, match="rows must hold at least one row"):
        pick_best([], maximize=True)
    with pytest.raises(ValueError, match=r"xscale must be one of .*got 'log3'"):
        panels_svg("t", "x", "y", [("p", [])], xscale="log3")
    with pytest.raises(ValueError, match=r"yscale must be one of .*got 'log2'"):
        panels_svg("t", "x", "y", [("p", [])], yscale="log2")
    with pytest.raises(ValueError, match="panels must hold at least one panel"):
        panels_svg("t", "x", "y", [])


def test_speed_run_must_be_a_speed_run(built: tuple[Store, dict[str, int], str]) -> None:
    store, ids, _ = built
    with pytest.raises(ValueError, match=f"speed_run: run {ids['pointer']} is a quality run"):
        quality_section(store, ids["pointer"])


def test_empty_and_partial_stores(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.duckdb")
    assert "No quality runs in this store" in quality_section(store, None)
    run = store.begin_run(kind="quality", suite="<b>x</b>", command="t", config={}, env={})
    assert "No trained models recorded in this run yet" in quality_section(store, None)
    # still running: one model, no curve, no flag, no speed run in the store
    _model(store, run, "mqar", {"seq_len": 16, "num_kv_pairs": 2}, "softmax", 16, 0, 1e-3, 0.25,
           None, curve=False)  # fmt: skip
    report = build_report(store)  # a quality-only store still gets a report
    assert "No speed runs in this store" in report.page("index.html")
    page = report.page("quality.html")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    sec = page[page.index('<section id="quality">') :]
    assert f"run {run}, running" in sec and "no speed run (none stored)" in sec
    assert rows_of(sec, f"quality-{run}-mqar-latency")[0][3] == "no speed row"
    assert sec.count("<svg") == 1  # the width plot only: no state, no curve, no latency
