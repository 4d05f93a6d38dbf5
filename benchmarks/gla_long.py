"""Causal GLA at very long T with strong decay: finite, and equal to the step recurrence.

Gates uniform in [-5, 0] per step (the state forgets almost everything within a few tokens;
the cumulative log decay reaches about -160000 at T=64k, so anything that exponentiates a
cumulative gate overflows). Runs the ``chunk`` path over the whole sequence and the ``recurrent``
step loop, and prints max |difference| and whether every output is finite, plus the chunk
path's time and peak memory.

Usage: ``.venv/bin/python benchmarks/gla_long.py [--length 65536] [--heads 8] [--dim 64]``
"""

from __future__ import annotations

import argparse
import time

import torch

from attnzoo.bench.env import keep_freed_memory
from attnzoo.bench.measure import peak_memory_bytes
from attnzoo.ops.gla import gated_linear_attention


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--length", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    keep_freed_memory()
    T, H, K = args.length, args.heads, args.dim
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, T, H, K, generator=g) for _ in range(3))
    gk = -5.0 * torch.rand(1, T, H, K, generator=g)
    print(f"T={T} H={H} K=V={K}; cumulative log gate reaches {float(gk.sum(1).min()):.0f}")
    with torch.no_grad():
        t0 = time.perf_counter()
        o = gated_linear_attention(q, k, v, gk, impl="chunk")
        t_chunk = time.perf_counter() - t0
        peak = peak_memory_bytes(lambda: gated_linear_attention(q, k, v, gk, impl="chunk"))
        t0 = time.perf_counter()
        ref = gated_linear_attention(q, k, v, gk, impl="recurrent")
        t_rec = time.perf_counter() - t0
    print(
        f"chunk: {t_chunk:.2f} s, peak {peak / 2**20:.0f} MiB, finite: {bool(torch.isfinite(o).all())}"
    )
    print(f"recurrent: {t_rec:.2f} s, finite: {bool(torch.isfinite(ref).all())}")
    print(
        f"max |chunk - recurrent| = {float((o - ref).abs().max()):.3g} (max |o| = {float(ref.abs().max()):.3g})"
    )


if __name__ == "__main__":
    main()
