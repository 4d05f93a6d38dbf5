"""`attnzoo bench quality`: the runner stores rows, curves and the best-of-sweep flag; the CLI
and the report show them; state sizes; bad flags."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from attnzoo.bench.quality import SUITES, QualitySuite, run_quality, state_size
from attnzoo.cli import app
from attnzoo.report.html import build_report
from attnzoo.store import Store

TINY = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "random_non_queries": False}


def test_runner_stores_rows_curves_and_best_lr(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.duckdb")
    suite = QualitySuite(mixers=("softmax", "linear"), d_models=(16,), lrs=(1e-6, 3e-3), steps=6,
                         batch_size=8, eval_every=3, eval_batches=1, target=None,
                         task_settings=TINY)  # fmt: skip
    run = run_quality(suite, store, progress=False)
    rows = store.quality([run])
    assert len(rows) == 4 and {r["status"] for r in rows} == {"complete"}
    assert all(r["steps_run"] == 6 and r["params"] > 0 for r in rows)
    best = [r for r in rows if r["best_of_sweep"]]
    assert sorted(r["mixer"] for r in best) == ["linear", "softmax"]
    curves = store.curves([run])
    assert len(curves) == 8 and {c["step"] for c in curves} == {3, 6}
    assert store.run(run)["kind"] == "quality" and store.run(run)["status"] == "complete"
    html = build_report(
        store, [store.begin_run(kind="speed", suite="t", command="t", config={}, env={})]
    )
    assert 'id="quality-table"' in html


def test_listops_trains_a_step(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.duckdb")
    suite = QualitySuite(tasks=("listops",), mixers=("softmax",), d_models=(16,), steps=2,
                         batch_size=4, eval_every=2, eval_batches=1, target=None,
                         task_settings={"max_depth": 3, "max_args": 4, "min_length": 8,
                                        "max_length": 32})  # fmt: skip
    run = run_quality(suite, store, progress=False)
    (row,) = store.quality([run])
    assert row["task"] == "listops" and row["steps_run"] == 2 and 0 <= row["final_metric"] <= 1


def test_regression_minimises_mse_and_flags_the_lowest(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb")
    suite = QualitySuite(tasks=("regression",), mixers=("linear",), d_models=(16,),
                         lrs=(1e-6, 1e-2), steps=20, batch_size=8, eval_every=10, eval_batches=1,
                         task_settings={"d_x": 2, "num_pairs": 8})  # fmt: skip
    run = run_quality(suite, store, progress=False)
    rows = {r["lr"]: r for r in store.quality([run])}
    assert all(r["best_metric"] == min(c["metric"] for c in store.curves([run]) if c["lr"] == lr)
               for lr, r in rows.items())  # fmt: skip
    flagged = [r for r in rows.values() if r["best_of_sweep"]]
    assert len(flagged) == 1 and flagged[0]["best_metric"] == min(
        r["best_metric"] for r in rows.values()
    )


def test_state_sizes() -> None:
    assert state_size("linear", 16, 10) == 16 * 16 + 16  # one head: k^T v state + normaliser sum
    kv = state_size("softmax", 16, 10)
    assert kv is not None and kv >= 2 * 10 * 16  # keys and values of 10 tokens
    assert state_size("l2vit", 16, 10) is None


def test_quick_suite_is_mqar_softmax_vs_linear() -> None:
    q = SUITES["quick"]
    assert q.tasks == ("mqar",) and {"softmax", "linear"} <= set(q.mixers)


def test_cli_runs_and_rejects_bad_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "c.duckdb")
    r = runner.invoke(app, ["bench", "quality", "--db", db, "--mixers", "linear", "--d-model", "16",
                            "--steps", "2", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "linear" in r.stdout and "mqar" in r.stdout
    bad = runner.invoke(app, ["bench", "quality", "--db", db, "--task", "mqr"])
    assert (
        bad.exit_code == 2
        and "unknown task 'mqr'" in bad.stderr
        and "did you mean 'mqar'" in bad.stderr
    )
    bad = runner.invoke(app, ["bench", "quality", "--db", db, "--suite", "zoo"])
    assert bad.exit_code == 2 and "--suite must be one of quick" in bad.stderr
