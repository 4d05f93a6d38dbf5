"""Peak-memory and timing helpers, validated against known allocations."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

from attnzoo.bench import measure as M
from attnzoo.bench.measure import (
    interleaved_medians,
    interleaved_timings,
    median_seconds,
    peak_memory_bytes,
    timings,
)
from attnzoo.ops import softmax_attention


def test_peak_memory_of_known_allocations() -> None:
    def f() -> torch.Tensor:
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(500, 1000)  # 2 MB, live with a: 6 MB
        del a
        c = torch.empty(2000, 1000)  # 8 MB, live with b: 10 MB (the peak)
        return b, c

    peak = peak_memory_bytes(f)
    assert 10_000_000 <= peak <= 10_000_000 + 4096


def test_peak_memory_ignores_tensors_alive_before() -> None:
    big = torch.randn(2000, 2000)  # 16 MB alive before the call
    peak = peak_memory_bytes(lambda: big[:10].clone())
    assert peak < 1_000_000


def test_blocked_attention_peak_is_much_lower_than_reference() -> None:
    q, k, v = (torch.randn(1, 1024, 2, 16) for _ in range(3))
    ref = peak_memory_bytes(lambda: softmax_attention(q, k, v, impl="reference"))
    blk = peak_memory_bytes(lambda: softmax_attention(q, k, v, impl="blocked"))
    assert ref >= 2 * 1024 * 1024 * 4  # the [1, 2, 1024, 1024] scores exist in the reference
    assert blk * 5 < ref


def test_timing_helpers() -> None:
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5
    res = interleaved_medians({"a": lambda: None, "b": lambda: None}, repeats=2)
    assert set(res) == {"a", "b"}
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        median_seconds(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        peak_memory_bytes(lambda: None, device="meta")


class FakeClock:
    """Stands in for the ``time`` module of :mod:`attnzoo.bench.measure`: ``perf_counter`` reads
    ``now``, which the fake calls advance by the durations they are given."""

    def __init__(self) -> None:
        self.now = 0.0
        self.order: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def call(self, name: str, durations: list[float]) -> Callable[[], None]:
        it = iter(durations)

        def fn() -> None:
            self.order.append(name)
            self.now += next(it)

        return fn


def test_timings_give_quantiles_of_the_timed_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(M, "time", clock)
    st = timings(clock.call("f", [9.0, 4.0, 1.0, 5.0, 2.0, 3.0]), repeats=5, warmup=1)
    assert (st.n, st.min, st.q1, st.median, st.q3, st.max) == (5, 1.0, 2.0, 3.0, 4.0, 5.0)
    assert st.spread == pytest.approx(2.0 / 3.0)  # the 9 s warm-up is not counted
    assert median_seconds(clock.call("g", [7.0, 1.0, 2.0]), repeats=3, warmup=0) == 2.0
    with pytest.raises(
        ValueError, match="timings: repeats must be >= 1 and warmup >= 0, got 1, -1"
    ):
        timings(lambda: None, repeats=1, warmup=-1)


def test_interleaved_timings_alternate_and_keep_each_sides_quantiles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(M, "time", clock)
    fns = {"ours": clock.call("ours", [5.0, 1.0, 1.0, 1.0, 1.0]),
           "peer": clock.call("peer", [5.0, 1.0, 3.0, 1.0, 3.0])}  # fmt: skip
    st = interleaved_timings(fns, repeats=4, warmup=1)
    assert clock.order == ["ours", "peer"] * 5
    assert (st["ours"].median, st["ours"].spread) == (1.0, 0.0)
    assert (st["peer"].median, st["peer"].q1, st["peer"].q3) == (2.0, 1.0, 3.0)
    assert st["peer"].spread == 1.0
    clock.order.clear()
    med = interleaved_medians({"a": clock.call("a", [2.0, 4.0]), "b": clock.call("b", [1.0, 1.0])},
                              repeats=2, warmup=0)  # fmt: skip
    assert med == {"a": 3.0, "b": 1.0} and clock.order == ["a", "b", "a", "b"]


_REUSE_SCRIPT = """
import resource, sys, torch
from attnzoo.bench.env import keep_freed_memory
if sys.argv[1] == "keep":
    print(keep_freed_memory(), file=sys.stderr)
n = 8 * 2**20  # float32: 32 MB, 8192 pages
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(n).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(" ".join(map(str, faults)))
"""


def _faults_per_block(mode: str) -> tuple[list[int], str]:
    done = subprocess.run(
        [sys.executable, "-c", _REUSE_SCRIPT, mode],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [int(f) for f in done.stdout.split()], done.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_large_blocks_without_page_faults() -> None:
    """Once settled, a freed 32 MB tensor's pages are reused by the next one, not returned to the
    OS and faulted in again. Settling takes a few blocks, a varying number: torch's 64-byte
    aligned allocation asks glibc for slightly more than the block it freed, so the heap grows by
    a few blocks (2 to 7 here, in fresh processes) before freed neighbours merge and are reused.
    So 30 blocks are allocated in a fresh process, as the harness calls this at a run's start,
    and the last 10 must not fault. glibc's default is measured beside it, to show the count sees
    faults: it maps and faults in every block (8192 pages each)."""
    kept, state = _faults_per_block("keep")
    default, _ = _faults_per_block("default")
    assert "trim_threshold=2GiB" in state
    assert sum(default[-10:]) >= 9 * 8192, f"glibc's default faulted only {default[-10:]} pages"
    assert sum(kept[-10:]) < 0.1 * 8192, f"minor page faults per reused 32 MB block: {kept}"
