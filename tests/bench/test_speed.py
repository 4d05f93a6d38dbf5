"""The speed runner: gate before timing, skip prediction, failures recorded, interruption kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import attnzoo as az
from attnzoo.bench import speed as S
from attnzoo.bench.predict import Declared, Point, Verdict, decide
from attnzoo.bench.speed import Cell, _limits, plan, run_speed
from attnzoo.bench.speed_suites import EXTRA_MASKS, SUITES, SpeedSuite, build_mask, masks_for
from attnzoo.cli import app
from attnzoo.registry import get_spec
from attnzoo.store import Store
from tests.bench.fakes import fake_mixer

TINY = dict(seq_lens=(32, 64), repeats=1, warmup=0, heads=2, head_dim=8, modes=("fwd",))


def test_tiny_run_measures_every_cell(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    suite = SpeedSuite(mixers=("softmax", "sigmoid"), **TINY)
    run = run_speed(suite, store, command="pytest", progress=False)
    rows = store.speed([run])
    cells = plan(suite)
    assert len(rows) == len(cells) * 2 and not store.skips([run])
    assert {r["impl"] for r in rows if r["mixer"] == "softmax"} == {"reference", "sdpa", "blocked"}
    assert {r["mask"] for r in rows} >= {"full", "causal", "causal+sliding-window", "document"}
    assert all(r["flops"] > 0 and r["median_s"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert all(r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"] for r in rows)
    assert all(0 < r["gemm_fraction"] for r in rows)
    checks = store.checks([run])
    assert checks and all(c["ok"] for c in checks)
    meta = store.run(run)
    assert meta["status"] == "complete" and meta["gemm_gflops"] > 0
    assert set(meta["env"]["harness"]) >= {"noop_s", "sdpa_harness_s", "sdpa_timeit_s"}
    assert {s["name"] for s in store.specs(run)} == {"softmax", "sigmoid"}


def test_memory_budget_skips_and_records_reason(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    suite = SpeedSuite(
        mixers=("softmax",), patterns=("causal-self",), masks=(), seq_lens=(64, 2048, 4096), repeats=1, warmup=0,
        heads=2, head_dim=8, modes=("fwd",), memory_budget=2 << 20,
    )  # fmt: skip
    run = run_speed(suite, store, command="pytest", progress=False)
    skips = store.skips([run])
    ref = [s for s in skips if s["impl"] == "reference"]
    assert [s["seq_len"] for s in ref] == [2048, 4096]
    assert "predicted peak memory" in ref[0]["reason"] and "> budget 2 MiB" in ref[0]["reason"]
    assert "a shorter length was already skipped" in ref[1]["reason"]
    evidence = json.loads(ref[0]["evidence"])
    assert evidence["decided_by"] == "memory" and evidence["memory_budget"] == 2 << 20
    assert evidence["memory"]["value"] > 2 << 20 and evidence["points"][0]["T"] == 64
    assert {p["probe"] for p in evidence["points"]} == {False, True}  # T=64 ran; probes after it
    assert all(s["kind"] == "skipped" for s in skips)
    assert all(r["peak_bytes"] <= 2 << 20 for r in store.speed([run]) if r["seq_len"] > 64)


def test_time_cap_skips(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    suite = SpeedSuite(mixers=("sigmoid",), patterns=("noncausal-self",), masks=(), seq_lens=(64, 128, 8192),
                       repeats=1, warmup=0, heads=2, head_dim=8, modes=("fwd",), time_cap=0.05)  # fmt: skip
    run = run_speed(suite, store, command="pytest", progress=False)
    reasons = [s["reason"] for s in store.skips([run]) if s["seq_len"] == 8192]
    assert reasons and all("time cap" in r for r in reasons)


def test_step_time_cap_counts_the_prefill(tmp_path: Path) -> None:
    """One step at T=2048 is cheap, but building its state takes 2048 steps: the prediction must
    count them (a KV-cache prefill at T=32k would otherwise run for an hour under a 2-minute cap)."""

    suite = SpeedSuite(mixers=("softmax",), patterns=("causal-self",), masks=(), seq_lens=(64,),
                       repeats=1, warmup=0, heads=2, head_dim=8, modes=("step",), time_cap=1.0)  # fmt: skip
    spec = az.get_spec("softmax")
    history = [Point(64, 1e-3, 1000), Point(128, 1e-3, 1000)]  # 1 ms a step
    step = Cell(spec=spec, impl="sdpa", pattern="causal-self", mask="causal", mode="step")
    fwd = Cell(spec=spec, impl="sdpa", pattern="causal-self", mask="causal", mode="fwd")
    declared = Declared.of(spec.complexity, mode="fwd")
    assert decide(list(history), 256, declared, _limits(fwd, suite))[1] is None  # 2 calls of ~4 ms
    kv = Declared.of(spec.complexity, mode="step", state=spec.state)
    _, found = decide(list(history), 2048, kv, _limits(step, suite))  # ~16 ms a step, 2048 of them
    assert (
        found is not None and "for 2 calls and a 2048-step prefill > time cap 1 s" in found.reason
    )


def test_correctness_gate_blocks_timing_of_a_wrong_path(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    with fake_mixer("_wrong_fast") as name:
        run = run_speed(
            SpeedSuite(mixers=(name,), patterns=("noncausal-self",), **TINY),
            store,
            command="t",
            progress=False,
        )
    checks = {c["impl"]: c for c in store.checks([run])}
    assert checks["reference"]["ok"] and not checks["fast"]["ok"]
    assert {r["impl"] for r in store.speed([run])} == {"reference"}
    failed = store.skips([run])
    assert {s["impl"] for s in failed} == {"fast"} and all(s["kind"] == "failed" for s in failed)
    assert all("correctness gate failed" in s["reason"] for s in failed)


def test_a_failing_measurement_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    # fails beyond the gate's 77 tokens (so the gate passes and the measurement fails)
    with fake_mixer("_fails_long", fail_at=100) as name:
        suite = SpeedSuite(mixers=(name, "softmax"), patterns=("noncausal-self",), masks=(), seq_lens=(32, 64, 128, 200),
                           repeats=1, warmup=0, heads=2, head_dim=8, modes=("fwd",))  # fmt: skip
        run = run_speed(suite, store, command="t", progress=False)
    fails = [s for s in store.skips([run]) if s["mixer"] == name and s["impl"] == "reference"]
    assert [s["seq_len"] for s in fails] == [128, 200]
    assert "fake mixer fails at T=128" in fails[0]["reason"] and all(
        s["kind"] == "failed" for s in fails
    )
    assert store.run(run)["status"] == "complete"
    assert {r["mixer"] for r in store.speed([run])} == {name, "softmax"}


def test_ctrl_c_keeps_finished_measurements(tmp_path: Path) -> None:
    db = tmp_path / "int.duckdb"
    cmd = [sys.executable, "-m", "attnzoo.cli", "bench", "speed", "--db", str(db), "--mixers", "softmax,sigmoid",
           "--seq-lens", "32,64,128,256,512,1024,2048", "--repeats", "5", "--no-progress"]  # fmt: skip
    # a shell that started us in the background (`nohup ... &`) leaves SIGINT ignored, and the
    # child would inherit that and never see Ctrl-C: restore the default in the child
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        kept = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                kept = len(Store(db, read_only=True, wait=0.2).speed())
            except Exception:  # noqa: BLE001  (not created yet, or locked this instant)
                continue
            if kept >= 5:
                break
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
    finally:  # never leave the child running (it would load the machine)
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in stderr
    store = Store(db)
    (run,) = store.runs()
    assert run["status"] == "interrupted" and len(store.speed()) >= kept
    # a second run leaves the first one's results in place
    subprocess.run(cmd[:7] + ["--seq-lens", "32", "--mixers", "softmax", "--mode", "fwd", "--repeats", "1", "--no-progress"], check=True, capture_output=True)  # fmt: skip
    runs = store.runs()
    assert [r["status"] for r in runs] == ["interrupted", "complete"]
    assert len(store.speed([runs[0]["run_id"]])) >= kept


def test_suites_and_masks() -> None:
    assert set(SUITES) == {"quick", "linear", "full"}
    spec = get_spec("softmax")
    assert masks_for(SUITES["full"], spec, "causal-self") == ["causal", *EXTRA_MASKS]
    assert masks_for(SUITES["full"], spec, "noncausal-self") == [
        "full", "sliding-window", "document", "global", "qk-sparse", "hash-sparse",
    ]  # fmt: skip
    assert masks_for(SUITES["full"], spec, "causal-cross") == ["causal"]
    # documents from the ProLong-64k lengths, seeded: reproducible, summing to T
    m = build_mask("document", True, 3000, SUITES["quick"])
    assert m.causal and sum(m.documents) == 3000 and len(m.documents) > 3
    assert m == build_mask("document", True, 3000, SUITES["quick"])
    joined = build_mask("document+prefix-lm", True, 3000, SUITES["full"])
    assert joined.kinds == ("document", "prefix-lm") and joined.documents == m.documents
    q = build_mask("shared-question", True, 64, SUITES["full"])
    assert q.kinds == ("shared-question",) and len(q.documents) >= 2
    sparse = build_mask("qk-sparse", False, 100, SUITES["full"])
    assert len(sparse.drop_q) == len(sparse.drop_k) == 50 and not sparse.causal
    hashed = build_mask("hash-sparse", True, 100, SUITES["full"])
    assert set(hashed.buckets) <= set(range(8)) and len(hashed.buckets) == 100
    assert build_mask("global", True, 100, SUITES["full"]).kinds == (
        "causal",
        "sliding-window",
        "global",
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"seq_lens": ()}, "--seq-lens: expected positive integers"),
        ({"seq_lens": (0,)}, "--seq-lens"),
        ({"patterns": ("causal",)}, "--patterns: expected one of"),
        ({"masks": ("diag",)}, "--masks: expected mask kinds"),
        (
            {"masks": ("document+prefx-lm",)},
            "--masks: expected mask kinds .*did you mean 'prefix-lm'",
        ),
        ({"sparsity": 1.0}, "sparsity: expected a fraction"),
        ({"modes": ("bwd",)}, "--mode: expected fwd, fwdbwd or step"),
        ({"mixers": ("softmx",)}, "--mixers: unknown mixer 'softmx' \\(did you mean 'softmax'"),
        ({"heads": 0}, "--heads: expected an integer >= 1"),
        ({"memory_budget": 0}, "--memory-budget"),
    ],
)
def test_suite_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SpeedSuite(**kwargs)


def test_unsupported_pattern_for_a_named_mixer() -> None:
    with (
        fake_mixer("_self_only") as name,
        pytest.raises(ValueError, match="_self_only does not support causal-self"),
    ):
        SpeedSuite(
            mixers=(name,), patterns=("causal-self",), explicit_mixers=True, explicit_patterns=True
        )


def test_env_is_recorded_without_gpu_assumptions() -> None:
    from attnzoo.bench.env import environment

    env = environment()
    assert env["versions"]["torch"] and env["torch_threads"] >= 1 and "cpu" in env
    assert os.cpu_count() == env["cpu_count"]


def test_skip_impls_are_checked_but_not_timed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    suite = SpeedSuite(mixers=("softmax",), patterns=("causal-self",), masks=(), skip_impls=("reference",), **{
        k: v for k, v in TINY.items()
    })  # fmt: skip
    run = run_speed(suite, store, command="t", progress=False)
    assert {r["impl"] for r in store.speed([run])} == {"sdpa", "blocked"}
    assert "reference" in {c["impl"] for c in store.checks([run])}
    assert (
        SUITES["quick"].skip_impls == ("reference", "recurrent") and SUITES["full"].skip_impls == ()
    )


def test_step_mode_is_gated_by_step_equals_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = SpeedSuite(mixers=("softmax",), patterns=("causal-self",), masks=(), modes=("step",),
                       seq_lens=(16, 32), repeats=1, warmup=0, heads=2, head_dim=8)  # fmt: skip
    store = Store(tmp_path / "ok.duckdb")
    run = run_speed(suite, store, command="t", progress=False)
    assert any(c["impl"] == "step" and c["ok"] for c in store.checks([run]))
    rows = store.speed([run])
    assert {(r["mode"], r["seq_len"]) for r in rows} == {("step", 16), ("step", 32)}
    assert all(r["flops"] is None for r in rows)

    from attnzoo.mixers.common import AttentionMixer

    right = AttentionMixer.step
    monkeypatch.setattr(
        AttentionMixer,
        "step",
        lambda self, x_t, s: (lambda y, st: (y * 1.01, st))(*right(self, x_t, s)),
    )
    store = Store(tmp_path / "broken.duckdb")
    run = run_speed(suite, store, command="t", progress=False)
    assert not next(c for c in store.checks([run]) if c["impl"] == "step")["ok"]
    assert store.speed([run]) == []
    assert all(
        s["kind"] == "failed" and "correctness gate failed" in s["reason"]
        for s in store.skips([run])
    )


def test_the_observed_noisy_run_skips_nothing(tmp_path: Path) -> None:
    """`--seq-lens 8,2048 --repeats 1` skipped blocked and sdpa at T=2048 by extrapolating one
    noisy call at T=8 (5.69 GiB and 9442 s predicted; 16 MiB measured): T=8 is no evidence."""
    store = Store(tmp_path / "s.duckdb")
    suite = SpeedSuite(mixers=("softmax",), patterns=("causal-self",), masks=(), seq_lens=(8, 512),
                       repeats=1, warmup=0, heads=2, head_dim=8, modes=("fwd",))  # fmt: skip
    run = run_speed(suite, store, command="t", progress=False)
    assert store.skips([run]) == []
    rows = store.speed([run])
    assert {(r["impl"], r["seq_len"]) for r in rows} == {
        (impl, T) for impl in ("reference", "sdpa", "blocked") for T in (8, 512)
    }
    assert all(r["repeats"] == 1 and r["min_s"] == r["max_s"] == r["median_s"] for r in rows)


def test_no_skip_measures_what_a_tiny_budget_would_skip(tmp_path: Path) -> None:
    runner = CliRunner()
    db = tmp_path / "c.duckdb"
    args = ["bench", "speed", "--db", str(db), "--mixers", "softmax", "--patterns", "causal-self",
            "--masks", "", "--seq-lens", "8,512", "--mode", "fwd", "--repeats", "1", "--warmup", "0",
            "--heads", "2", "--head-dim", "8", "--memory-budget", "64KiB", "--skip-impls", "",
            "--no-progress"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    store = Store(db)
    first = store.latest_run_id()
    skips = {s["impl"]: s for s in store.skips([first])}
    assert skips["reference"]["seq_len"] == 512 and skips["reference"]["kind"] == "skipped"
    evidence = json.loads(skips["reference"]["evidence"])
    assert evidence["decided_by"] == "memory" and evidence["memory_budget"] == 64 << 10
    # T=8 is no evidence; the probe at 64 predicts 512 over the budget, and 128 too: not probed
    assert [(p["T"], p["probe"]) for p in evidence["points"]] == [(8, False), (64, True)]
    res = runner.invoke(app, [*args, "--no-skip"])
    assert res.exit_code == 0, res.output
    second = store.latest_run_id()
    assert second != first and store.skips([second]) == [] and store.run(second)["config"]
    assert {(r["impl"], r["seq_len"]) for r in store.speed([second])} == {
        (impl, T) for impl in ("reference", "sdpa", "blocked") for T in (8, 512)
    }
    assert max(r["peak_bytes"] for r in store.speed([second])) > 64 << 10  # what was skipped


def test_a_skip_disproved_later_in_the_run_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward skipped for memory, then forward+backward (which needs more) ran at that length
    within the budget: the run says the prediction was wrong."""
    real = S._decide

    def overcautious(cell: Cell, T: int, suite: SpeedSuite) -> tuple:
        pred, found = real(cell, T, suite)
        if cell.mode == "fwd" and T == 64:
            found = Verdict("memory", 1e12, suite.memory_budget, "predicted 931 GiB (forced)",
                            {"forced": True})  # fmt: skip
        return pred, found

    monkeypatch.setattr(S, "_decide", overcautious)
    store = Store(tmp_path / "s.duckdb")
    suite = SpeedSuite(mixers=("softmax",), patterns=("causal-self",), masks=(), seq_lens=(32, 64),
                       skip_impls=("reference", "blocked"), repeats=1, warmup=0, heads=2,
                       head_dim=8, modes=("fwd", "fwdbwd"))  # fmt: skip
    run = run_speed(suite, store, command="t", progress=False)
    (skip,) = store.skips([run])
    assert (skip["mode"], skip["seq_len"]) == ("fwd", 64) and json.loads(skip["evidence"]) == {
        "forced": True
    }
    notes = [n for n in store.notes([run]) if n["kind"] == "prediction-wrong"]
    assert len(notes) == 1
    assert (
        "softmax/sdpa causal-self causal fwd at T=64 was skipped (predicted 931 GiB"
        in notes[0]["text"]
    )
    assert "softmax/sdpa causal-self causal fwdbwd ran at T=64 with a peak of" in notes[0]["text"]
