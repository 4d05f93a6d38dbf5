"""The speed runner: gate before timing, skip prediction, failures recorded, interruption kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import attnzoo as az
from attnzoo.bench.speed import Cell, _skip_reason, plan, predict, run_speed
from attnzoo.bench.speed_suites import SUITES, SpeedSuite, build_mask, masks_for
from attnzoo.registry import get_spec
from attnzoo.store import Store
from tests.bench.fakes import fake_mixer

TINY = dict(seq_lens=(32, 64), repeats=1, warmup=0, heads=2, head_dim=8, modes=("fwd",))


def test_predict_extrapolates_log_log() -> None:
    s, b = predict([(100, 1.0, 1000), (200, 4.0, 4000)], 400)
    assert s == pytest.approx(16.0) and b == pytest.approx(16000)
    s, b = predict([(100, 1.0, 1000)], 300)  # one point: assume quadratic
    assert s == pytest.approx(9.0) and b == pytest.approx(9000)
    s, _ = predict([(100, 1.0, 1000), (200, 1.0, 1000)], 400)  # never more optimistic than linear
    assert s == pytest.approx(2.0)
    s, _ = predict([(100, 1.0, 1000), (200, 16.0, 1000)], 400)  # a noisy quartic: cubic at most
    assert s == pytest.approx(16.0 * 8)
    s, _ = predict([(100, 1.0, 1000), (200, 16.0, 1000)], 400, max_exponent=2.0)
    assert s == pytest.approx(16.0 * 4)
    with pytest.raises(ValueError, match="no measured lengths"):
        predict([], 10)


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
    assert "predicted peak memory" in ref[0]["reason"] and "> budget 0.00 GiB" in ref[0]["reason"]
    assert "a shorter length was already skipped" in ref[1]["reason"]
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
    history = [(64, 1e-3, 1000), (128, 1e-3, 1000)]  # 1 ms a step
    step = Cell(spec=spec, impl="sdpa", pattern="causal-self", mask="causal", mode="step",
                history=list(history))  # fmt: skip
    fwd = Cell(spec=spec, impl="sdpa", pattern="causal-self", mask="causal", mode="fwd",
               history=list(history))  # fmt: skip
    assert _skip_reason(fwd, 256, suite) is None  # 2 calls of ~2 ms
    reason = _skip_reason(step, 2048, suite)  # ~16 ms a step, 2048 of them
    assert reason is not None and "2048-step prefill" in reason and "> time cap 1 s" in reason


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
    assert masks_for(SUITES["full"], spec, "causal-self") == [
        "causal",
        "sliding-window",
        "document",
        "prefix-lm",
        "block-causal",
    ]
    assert masks_for(SUITES["full"], spec, "noncausal-self") == [
        "full",
        "sliding-window",
        "document",
    ]
    assert masks_for(SUITES["full"], spec, "causal-cross") == ["causal"]
    m = build_mask("document", True, 10, SUITES["quick"])
    assert m.documents == (2, 2, 2, 4) and m.causal


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"seq_lens": ()}, "--seq-lens: expected positive integers"),
        ({"seq_lens": (0,)}, "--seq-lens"),
        ({"patterns": ("causal",)}, "--patterns: expected one of"),
        ({"masks": ("diag",)}, "--masks: expected mask kinds"),
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
