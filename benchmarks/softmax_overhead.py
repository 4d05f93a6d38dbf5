"""Does the softmax mixer's attention step cost more than a raw SDPA call? Is `blocked` small?

Measured in one run on this machine, fp32:

1. The ``softmax`` mixer's attention step (``mixer.attend`` on ``[B, T, H, K]`` tensors, the
   call every forward makes) vs a raw ``F.scaled_dot_product_attention`` on the same tensors
   (transposed views, as a user holding ``[B, T, H, K]`` would pass them), at T = 1k, 4k, 8k,
   H = 8, K = 64, causal and not. Timings are interleaved round-robin; the ratio
   ``raw / ours`` should be >= 0.95 (no wrapper overhead).
2. Peak memory of the ``blocked`` path vs ``reference`` at T = 8k (forward, and forward+backward),
   from the profiler's allocator events (``attnzoo.bench.measure.peak_memory_bytes``).
3. Speed of the pure-PyTorch ``blocked`` path against SDPA's fused kernel and ``reference``.

Usage: ``.venv/bin/python benchmarks/softmax_overhead.py [--lengths 1024,4096,8192] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import functools
import platform

import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.bench.measure import interleaved_medians, peak_memory_bytes
from attnzoo.ops import Mask, softmax_attention

H, K = 8, 64


def _time_pair(m: az.Mixer, mask: Mask, T: int, repeats: int) -> dict[str, float]:
    q, k, v = (torch.randn(1, T, H, K) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    with torch.no_grad():
        return interleaved_medians(
            {
                "ours": functools.partial(m.attend, q, k, v, mask),
                "raw": functools.partial(
                    F.scaled_dot_product_attention, qt, kt, vt, is_causal=mask.causal
                ),
            },
            repeats=repeats,
        )


def overhead(lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for causal in (False, True):
        m = az.build_mixer("softmax", d_model=H * K, num_heads=H, causal=causal)
        for T in lengths:
            times = _time_pair(m, Mask(causal=causal), T, repeats)
            rows.append({"T": T, "causal": causal, **times, "ratio": times["raw"] / times["ours"]})
            print(
                f"T={T:5d} causal={causal!s:5}  ours {times['ours'] * 1e3:8.1f} ms  "
                f"raw SDPA {times['raw'] * 1e3:8.1f} ms  raw/ours {rows[-1]['ratio']:.3f}",
                flush=True,
            )
    return rows


def _attention_peak(
    impl: str, backward: bool, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> int:
    leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]

    def run() -> None:
        with torch.set_grad_enabled(backward):
            out = softmax_attention(*leaves, mask="causal", impl=impl)
            if backward:
                out.sum().backward()

    return peak_memory_bytes(run)


def memory(T: int) -> None:
    q, k, v = (torch.randn(1, T, H, K) for _ in range(3))
    for backward in (False, True):
        ref = _attention_peak("reference", backward, q, k, v)
        blk = _attention_peak("blocked", backward, q, k, v)
        print(
            f"T={T} causal {'fwd+bwd' if backward else 'fwd':7s}  reference {ref / 2**20:9.1f} MiB  "
            f"blocked {blk / 2**20:7.1f} MiB  ratio {ref / blk:.1f}x",
            flush=True,
        )


def blocked_speed(lengths: list[int], repeats: int) -> None:
    """The pure-PyTorch blocked path against SDPA's fused kernel and the reference, causal fwd."""
    for T in lengths:
        q, k, v = (torch.randn(1, T, H, K) for _ in range(3))
        fns = {
            impl: functools.partial(softmax_attention, q, k, v, mask="causal", impl=impl)
            for impl in ("sdpa", "blocked", "reference")
        }
        with torch.no_grad():
            times = interleaved_medians(fns, repeats=repeats)
        print(
            f"T={T:5d} causal fwd  sdpa {times['sdpa'] * 1e3:8.1f} ms  blocked {times['blocked'] * 1e3:8.1f} ms  "
            f"reference {times['reference'] * 1e3:8.1f} ms  blocked/sdpa {times['blocked'] / times['sdpa']:.2f}x  "
            f"reference/blocked {times['reference'] / times['blocked']:.2f}x",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", default="1024,4096,8192")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--memory-length", type=int, default=8192)
    args = ap.parse_args()
    lengths = [int(t) for t in args.lengths.split(",")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"attention step, B=1 H={H} K={K} fp32, median of {args.repeats} (interleaved)")
    rows = overhead(lengths, args.repeats)
    worst = min(r["ratio"] for r in rows)
    print(f"worst raw/ours ratio: {worst:.3f} (target >= 0.95)")
    print(f"peak memory, B=1 H={H} K={K} fp32")
    memory(args.memory_length)
    print(f"blocked path speed, B=1 H={H} K={K} fp32, median of {args.repeats} (interleaved)")
    blocked_speed(lengths, args.repeats)


if __name__ == "__main__":
    main()
