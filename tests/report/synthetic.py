"""Stores built by hand for the report's trust tests: speed rows with chosen timings, quartiles
and repeats; specs of three mechanisms (two token mixers, one grid mixer); peer rows; busy and
interrupted runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnzoo.store import Store

PAPER = {"title": "t", "year": 2024, "url": "https://example.org", "code": "none"}


def spec(name: str, layout: str = "tokens", patterns: tuple[str, ...] = ("causal-self",)) -> dict:
    return {"name": name, "family": "softmax", "layout": layout, "context_layout": None,
            "role": "mixer", "dims": 1 if layout == "tokens" else 2, "patterns": list(patterns),
            "masks": ["full", "causal"], "state": "none", "exact": True, "attention_maps": False,
            "impls": ["auto", "reference"], "complexity": "O(T^2)", "paper": PAPER,
            "peer": "-"}  # fmt: skip


SPECS = [
    spec("softmax", patterns=("causal-self", "noncausal-self", "noncausal-cross")),
    spec("linear", patterns=("causal-self",)),
    spec("area", layout="grid2d", patterns=("noncausal-self",)),
]


def speed_row(mixer: str, T: int, ms: float, *, impl: str = "fast", pattern: str = "causal-self",
              mode: str = "fwd", repeats: int = 5, spread: float | None = 0.04,
              gemm_fraction: float | None = 0.2, peak: int | None = None) -> dict[str, Any]:  # fmt: skip
    """A speed row of median ``ms`` milliseconds whose quartiles span ``spread`` of it (``None``:
    a row of an older store, no quartiles)."""
    median = ms / 1e3
    q = {} if spread is None else {"q1_s": median * (1 - spread / 2), "q3_s": median * (1 + spread / 2),
                                   "max_s": median * (1 + spread)}  # fmt: skip
    mask = "causal" if pattern.startswith("causal") else "full"
    return {"mixer": mixer, "impl": impl, "pattern": pattern, "mask": mask, "mode": mode,
            "batch": 1, "seq_len": T, "ctx_len": T, "d_model": 64, "heads": 2, "head_dim": 32,
            "repeats": repeats, "median_s": median, "min_s": median * (1 - spread if spread else 1),
            "peak_bytes": peak if peak is not None else 1000 * T, "flops": 10**6,
            "gflops_per_s": 1.0, "gemm_fraction": gemm_fraction, **q}  # fmt: skip


def speed_run(store: Store, rows: list[dict], *, machine: dict | None = None,
              specs: list[dict] | None = None, status: str = "complete") -> int:  # fmt: skip
    run = store.begin_run(kind="speed", suite="custom", command="attnzoo bench speed",
                          config={"baseline": "softmax"}, env={"cpu": "test"}, gemm_gflops=50.0,
                          machine=machine, allow_concurrent=True)  # fmt: skip
    store.add_specs(run, specs if specs is not None else SPECS)
    for r in rows:
        store.add_speed(run, r)
    store.finish_run(
        run, status, note="stopped by the user (Ctrl-C)" if status != "complete" else None
    )
    return run


def user_store(path: Path) -> tuple[Store, int]:
    """The issue's store: softmax and linear at T = 64, 128, one repeat each; linear's FLOP rate
    2.36x the GEMM limit."""
    store = Store(path)
    rows = [
        speed_row("softmax", 64, 1.0, repeats=1, spread=0.0),
        speed_row("softmax", 128, 0.5, repeats=1, spread=0.0),
        speed_row("linear", 64, 2.0, repeats=1, spread=0.0, gemm_fraction=0.5),
        speed_row("linear", 128, 0.1, repeats=1, spread=0.0, gemm_fraction=2.36),
    ]
    return store, speed_run(store, rows)


def sound_store(path: Path) -> tuple[Store, int]:
    """Three token lengths over 16x, five quiet repeats each: softmax ~ T^2, linear ~ T (crossing
    the baseline between 256 and 1024); one noisy linear row; a grid mechanism; softmax alone on
    noncausal-cross."""
    store = Store(path)
    rows = []
    for T in (256, 1024, 4096):
        rows.append(speed_row("softmax", T, 1.0 * (T / 256) ** 2, peak=T * T))
        rows.append(speed_row("softmax", T, 1.5 * (T / 256) ** 2, impl="reference", peak=T * T))
        rows.append(speed_row("linear", T, 4.0 * T / 256, spread=0.6 if T == 1024 else 0.04))
        rows.append(speed_row("softmax", T, 4.0 * T / 256, pattern="noncausal-cross"))
        rows.append(speed_row("area", T, 2.0 * T / 256, pattern="noncausal-self"))
    return store, speed_run(store, rows)


def peer_run(store: Store, rows: list[dict], *, machine: dict | None = None) -> int:
    run = store.begin_run(kind="peers", suite="quick", command="attnzoo bench peers", config={},
                          env={}, gemm_gflops=50.0, machine=machine, allow_concurrent=True)  # fmt: skip
    for r in rows:
        store.add_peer(run, r)
    store.finish_run(run, "complete")
    return run


def peer_row(case: str, *, repeats: int = 5, ours: float | None = 0.05, peer: float | None = 0.05,
             gemm_fraction: float = 0.3) -> dict[str, Any]:  # fmt: skip
    return {"case_name": case, "mechanism": "linear", "peer": "fla", "size": "T=256", "n": 256,
            "ours_s": 0.001, "peer_s": 0.002, "ratio": 2.0, "ours_flops": 10**6,
            "ours_gflops": 1.0, "gemm_fraction": gemm_fraction, "ours_peak_bytes": 1 << 20,
            "peer_peak_bytes": 1 << 21, "max_abs_diff": 1e-7, "rel_diff": 1e-7, "ok": True,
            "repeats": repeats, "detail": "", "ours_spread": ours, "peer_spread": peer}  # fmt: skip


BUSY = {"cpu_count": 2, "load_avg": [3.5, 2.0, 1.0], "busy": [{"pid": 4242, "name": "stress",
        "cpu": 0.97, "cmd": "stress -c 2"}], "quiet": False, "sampled_s": 0.25}  # fmt: skip
