"""Skip predictions that noise cannot fool: the declared-complexity parser, the usable points,
the model choice, the probe ladder, the verdict's evidence and the ledger of disproved skips."""

from __future__ import annotations

import json

import pytest

from attnzoo.bench.complexity import UNKNOWN_EXPONENT, degree, exponents, o_terms, token_weights
from attnzoo.bench.predict import (
    MIN_FIT_S,
    CellKey,
    Declared,
    Limits,
    Point,
    SkipLedger,
    Verdict,
    decide,
    dominates,
    estimate,
    next_probe,
    overshoot,
    predict,
    verdict,
)
from attnzoo.text import fmt_bytes

GiB, MiB, KiB = 2**30, 2**20, 2**10
SOFTMAX = "O(T·S·K) time; O(T·S) or O(T·block) memory"
QUADRATIC = Declared.of(SOFTMAX)
LIMITS = Limits(memory_budget=2 * GiB, time_cap=30.0, calls=3)  # the default suite, --repeats 1


@pytest.mark.parametrize(
    "complexity,axes,expected",
    [
        (SOFTMAX, ("T",), (2.0, 2.0)),  # "or" joins O(T·S) to the memory term after it
        ("O(T·(C·K + K·V)) time with chunk C; O(T·(K + C)) memory; O(K·V) state", ("T",), (1, 1)),
        ("O((T+S)·K·V) time; O(K·V) state per head", ("T",), (1.0, None)),  # state: no memory
        ("O(T log T·H·K) work, O(log T) depth (scan); O(T·H·K) (recurrent)", ("T",), (1, None)),
        ("O(T·S·(K²+V·K) + T·K³) time; O(S·K·(K+V) + block·S) memory", ("T",), (2.0, 1.0)),
        ("O((h·w)²·C) time; O(H·(h·w)²) memory", ("h", "w"), (2.0, 2.0)),
        ("O(h·w·s²·d) time and O(h·w·s²/b²·d) window memory", ("h", "w"), (1.0, 1.0)),
        (
            "O(h·w·C²) projections + O(h·w·C) aggregation (loop: O(h·w·C·(h+w)/K))",
            ("h", "w"),
            (1.5, None),
        ),  # fmt: skip
        ("O(N²·C/area)", ("h", "w"), (2.0, None)),
        ("O(h·w·h'·w'·C)", ("h", "w"), (2.0, None)),  # a context grid counts as tokens too
        ("O(d·h·w·C)", ("d", "h", "w"), (1.0, None)),
        ("O(T^1.5·D)", ("T",), (1.5, None)),
        ("O(T, S)", ("T",), (UNKNOWN_EXPONENT, None)),  # unreadable: the cautious default
        ("O(T·S", ("T",), (2.0, None)),  # unclosed: read to the end
        ("-", ("T",), (None, None)),
    ],
)
def test_declared_complexity_exponents(
    complexity: str, axes: tuple[str, ...], expected: tuple[float | None, float | None]
) -> None:
    assert exponents(complexity, axes) == expected


def test_every_registered_complexity_is_read() -> None:
    """Each mechanism's declared complexity parses (else its skips assume T^2) into a time term
    of at least linear growth."""
    from attnzoo.registry import list_mixers
    from attnzoo.spec import LAYOUTS

    for spec in list_mixers():
        weights = token_weights(LAYOUTS[spec.layout].axes)
        terms = o_terms(spec.complexity)
        assert any(kind == "time" for _, kind in terms), (spec.name, spec.complexity)
        for inner, _ in terms:
            degree(inner, weights)  # raises ValueError naming the expression
        t, _ = exponents(spec.complexity, LAYOUTS[spec.layout].axes)
        assert t is not None and t >= 1.0, (spec.name, t)


def test_an_unreadable_expression_is_named() -> None:
    with pytest.raises(ValueError, match=r"complexity 'T, S': cannot read ', S'"):
        degree("T, S", token_weights(("T",)))
    with pytest.raises(ValueError, match=r"complexity '\(T·S': unbalanced parentheses"):
        degree("(T·S", token_weights(("T",)))


def test_declared_defaults_and_adjustments() -> None:
    unknown = Declared.of("-")
    assert (unknown.time, unknown.memory) == (UNKNOWN_EXPONENT, UNKNOWN_EXPONENT)
    assert "no time term read: T^2 assumed" in unknown.source
    linear = Declared.of("O((T+S)·K·V) time; O(K·V) state per head")
    assert (linear.time, linear.memory, linear.min_exponent) == (1.0, 1.0, 1.0)
    ref = Declared.of("O((T+S)·K·V) time", impl="reference")
    assert (ref.time, ref.memory) == (2.0, 2.0) and "reference path" in ref.source
    kv = Declared.of(SOFTMAX, mode="step", state="growing")
    assert (kv.time, kv.memory, kv.min_exponent) == (1.0, 1.0, 0.0)
    flat = Declared.of("O((T+S)·K·V) time", mode="step", state="constant")
    assert (flat.time, flat.memory) == (0.0, 0.0)


def test_tiny_lengths_and_sub_millisecond_calls_are_not_extrapolated_from() -> None:
    """The observed run: `--seq-lens 8,2048 --repeats 1` measured T=8 once (a noisy 20 µs call,
    8 KiB) and predicted 9442 s and 5.69 GiB at T=2048."""
    pred = predict([Point(8, 2e-5, 8 * KiB)], 2048, QUADRATIC)
    assert pred.seconds.value is None and pred.memory.value is None
    assert "T >= 64" in pred.seconds.why and verdict(pred, LIMITS) is None
    fast = predict([Point(64, 2e-5, 64 * KiB), Point(128, 4e-5, 128 * KiB)], 2048, QUADRATIC)
    assert fast.seconds.value is None and f"at least {MIN_FIT_S:g}" in fast.seconds.why
    assert fast.memory.value is not None  # allocator counts are exact: usable from T = 64


@pytest.mark.parametrize(
    "times",
    [(5e-3, 2e-3), (2e-3, 0.2)],  # a probe pair inverted, and one that jumped 100x
    ids=["inverted", "jump-100x"],
)
def test_a_noisy_probe_pair_does_not_skip(times: tuple[float, float]) -> None:
    points = [Point(64, times[0], 200 * KiB, probe=True), Point(128, times[1], 700 * KiB, True)]
    pred, found = decide(list(points), 2048, QUADRATIC, LIMITS)
    assert found is None
    assert pred.seconds.model == "declared" and "too close to fit (2.0x)" in pred.seconds.why
    # noise only slows calls down: the point predicting least is scaled, at the declared T^2
    assert pred.seconds.value == pytest.approx(min(t * (2048 / L) ** 2 for L, t in
                                                   zip((64, 128), times, strict=True)))  # fmt: skip


def test_a_believable_fit_is_used_and_a_wild_one_is_not() -> None:
    clean = [(256, 0.01), (512, 0.04), (1024, 0.16)]
    e = estimate(clean, 4096, 2.0)
    assert e.model == "fit" and e.exponent == pytest.approx(2.0)
    assert e.value == pytest.approx(0.16 * 16) and e.fit is not None and e.fit.r2 == 1.0
    blocked = estimate([(512, 4 * MiB), (2048, 16 * MiB)], 65536, 2.0)  # linear, declared T^2
    assert blocked.model == "fit" and blocked.value == pytest.approx(16 * MiB * 32)
    wild = estimate([(256, 0.001), (1024, 0.5)], 4096, 2.0)  # T^4.5: a noisy 1024
    assert wild.model == "declared" and "more than 1 from the declared T^2" in wild.why
    assert wild.value == pytest.approx(0.001 * 16**2)  # from the quiet point
    scattered = estimate([(256, 0.01), (512, 0.2), (1024, 0.08), (2048, 1.0)], 4096, 2.0)
    assert scattered.model == "declared" and "scattered" in scattered.why
    slow_growth = estimate([(256, 0.01), (1024, 0.011)], 4096, 1.0)  # overhead: never sub-linear
    assert slow_growth.model == "fit" and slow_growth.exponent == 1.0


def test_genuine_quadratic_memory_over_a_tiny_budget_skips_with_evidence() -> None:
    points = [Point(64, 2e-3, 40 * KiB, probe=True), Point(128, 8e-3, 160 * KiB, probe=True)]
    limits = Limits(memory_budget=2 * MiB, time_cap=30.0, calls=3)
    pred, found = decide(list(points), 2048, QUADRATIC, limits)
    assert found is not None and found.kind == "memory"
    assert found.reason.startswith("predicted peak memory 40 MiB > budget 2 MiB (T^2.00 declared")
    ev = json.loads(json.dumps(found.evidence))  # what skips.evidence stores
    assert ev["decided_by"] == "memory" and ev["memory_budget"] == 2 * MiB
    assert [p["T"] for p in ev["points"]] == [64, 128] and ev["points"][0]["probe"]
    assert ev["memory"]["model"] == "declared" and ev["memory"]["value"] == 40 * MiB
    assert ev["memory"]["fit"]["exponent"] == pytest.approx(2.0) and ev["memory"]["anchor_T"]
    assert ev["declared"]["memory_exponent"] == 2.0 and ev["time"]["value"] is not None
    assert ev["total_s"] == pytest.approx(3 * ev["time"]["value"])


def test_time_verdict_counts_a_steps_prefill() -> None:
    kv = Declared.of(SOFTMAX, mode="step", state="growing")
    step = Limits(2 * GiB, time_cap=1.0, calls=3, mode="step")
    pred = predict([Point(64, 1e-3, 1000), Point(128, 2e-3, 2000)], 2048, kv)
    found = verdict(pred, step)  # 32 ms a step: 3 calls and ~1 s of prefill per 64 steps
    assert found is not None and found.kind == "time"
    assert "for 3 calls and a 2048-step prefill > time cap 1 s" in found.reason
    assert found.predicted == pytest.approx(0.032 * 3 + 2048 * 0.032 / 2)


def _fake_probe(seconds, nbytes, calls: list[int]):  # noqa: ANN001, ANN202
    def probe(T: int) -> Point:
        calls.append(T)
        return Point(T, seconds(T), int(nbytes(T)), probe=True)

    return probe


def test_probes_climb_until_the_time_is_usable_and_stop_below_a_quarter() -> None:
    calls: list[int] = []
    probe = _fake_probe(lambda T: 2e-5 + 1e-9 * T**2, lambda T: 1000 * T, calls)
    pred, found = decide([Point(8, 2e-5, 8 * KiB)], 2048, QUADRATIC, LIMITS, probe)
    assert calls == [64, 128, 256, 512] and found is None  # all sub-ms: T=2048 runs unpredicted
    assert pred.seconds.value is None
    calls.clear()
    history = [Point(8, 2e-5, 8 * KiB)]
    pred, found = decide(history, 65536, QUADRATIC, LIMITS, probe)
    assert calls == [64, 128, 256, 512, 1024] and found is None  # 1 ms first reached at 1024
    assert [p.T for p in history] == [8, *calls] and pred.seconds.anchor == 1024
    assert pred.seconds.value == pytest.approx(2e-5 * 32**2 + 1e-9 * 65536**2, rel=0.05)


def test_probes_confirm_a_skip_before_recording_it() -> None:
    """Blocked attention: its tiles make T <= 128 grow quadratically and longer T linearly; a
    prediction from the first probes alone would skip T = 65536 at a 1 GiB budget."""

    def nbytes(T: int) -> float:
        return 4096 * T + 16 * min(T, 128) ** 2 * 4

    calls: list[int] = []
    limits = Limits(memory_budget=GiB, time_cap=30.0, calls=3)
    early = predict([Point(t, 1e-2, int(nbytes(t))) for t in (64, 128)], 65536, QUADRATIC)
    assert verdict(early, limits) is not None
    history: list[Point] = []
    probe = _fake_probe(lambda T: 1e-3 * T / 64, nbytes, calls)
    pred, found = decide(history, 65536, QUADRATIC, limits, probe)
    assert found is None and pred.memory.model == "fit" and "T^1.00 fit" in pred.memory.describe()
    assert calls[:3] == [64, 128, 256] and calls[-1] <= 65536 / 4
    assert nbytes(65536) <= pred.memory.value <= 2 * nbytes(65536)  # the tiles' constant: over
    # genuine: quadratic memory stays over the budget; the ladder stops once a probe would not fit
    calls.clear()
    quad = _fake_probe(lambda T: 1e-3 * T / 64, lambda T: 100 * T**2, calls)
    pred, found = decide([], 65536, QUADRATIC, limits, quad)
    assert found is not None and found.kind == "memory" and pred.memory.model == "fit"
    assert calls == [64, 128, 256, 512, 1024, 2048] and 100 * 4096**2 > limits.memory_budget


def test_next_probe() -> None:
    assert next_probe([], 256) is None  # short lengths run without probes
    assert next_probe([], 257) == 64 and next_probe([8, 64], 2048) == 128
    assert next_probe([64, 128], 2048) == 256 and next_probe([64, 128, 256], 2048) == 512
    assert next_probe([64, 128, 256, 512], 2048) is None  # never above T / 4


def test_overshoot_notes_a_prediction_that_let_too_much_run() -> None:
    pred = predict([Point(256, 0.01, 100 * MiB), Point(1024, 0.16, 400 * MiB)], 2048, QUADRATIC)
    assert overshoot(pred, LIMITS, 0.6, 800 * MiB) is None
    assert "measured 3 GiB" in (overshoot(pred, LIMITS, 0.6, 3 * GiB) or "")
    assert "measured 60.0 s" in (overshoot(pred, LIMITS, 20.0, 800 * MiB) or "")


def _key(mask: str = "causal", mode: str = "fwd", impl: str = "blocked") -> CellKey:
    return CellKey("softmax", impl, "causal-self", mask, mode, mask == "causal")


def _skip(kind: str, limit: float) -> Verdict:
    """A verdict of ``kind`` against ``limit`` (bytes or seconds) at T=256."""
    pred = predict([Point(128, 10.0, 10 * GiB)], 256, QUADRATIC)
    limits = Limits(limit, 1e9, 3) if kind == "memory" else Limits(1e15, limit, 3)
    found = verdict(pred, limits)
    assert found is not None and found.kind == kind
    return found


def test_dominance() -> None:
    fwd, bwd, win = _key(), _key(mode="fwdbwd"), _key(mask="sliding-window")
    assert dominates(bwd, fwd, "time") and not dominates(fwd, bwd, "time")
    assert dominates(win, fwd, "memory") and not dominates(win, fwd, "time")
    assert not dominates(fwd, win, "memory") and not dominates(_key(impl="sdpa"), fwd, "memory")


def test_ledger_notes_a_skip_that_a_costlier_measurement_disproves() -> None:
    ledger = SkipLedger()
    mem = _skip("memory", GiB)
    assert ledger.skipped(_key(), 2048, mem) == []
    limits = Limits(GiB, 30.0, 3)
    assert ledger.measured(_key(mode="fwdbwd"), 1024, 0.1, MiB, limits) == []  # shorter
    assert ledger.measured(_key(impl="sdpa", mode="fwdbwd"), 4096, 0.1, MiB, limits) == []
    assert ledger.measured(_key(mode="fwdbwd"), 2048, 0.1, 2 * GiB, limits) == []  # over budget
    (note,) = ledger.measured(_key(mask="sliding-window"), 4096, 0.1, 16 * MiB, limits)
    assert "softmax/blocked causal-self causal fwd at T=2048 was skipped (predicted peak" in note
    assert "sliding-window fwd ran at T=4096 with a peak of 16 MiB, within the budget" in note
    assert ledger.measured(_key(mode="fwdbwd"), 4096, 0.1, MiB, limits) == []  # noted once
    # a time skip: only the same mask disproves it; a measurement before the skip counts too
    ledger = SkipLedger()
    assert ledger.measured(_key(mask="sliding-window"), 4096, 0.1, MiB, limits) == []
    assert ledger.measured(_key(mode="fwdbwd"), 4096, 0.1, MiB, limits) == []
    (note,) = ledger.skipped(_key(), 2048, _skip("time", 30.0))
    assert "fwdbwd ran at T=4096 in 0.30 s for 3 calls, within the cap" in note


def test_fmt_bytes() -> None:
    assert [fmt_bytes(x) for x in (800, 16.2 * MiB, 5.69 * GiB, 2 * MiB)] == [
        "800 B", "16.2 MiB", "5.69 GiB", "2 MiB",
    ]  # fmt: skip
