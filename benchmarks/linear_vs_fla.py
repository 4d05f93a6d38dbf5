"""Linear-family chunk paths against fla-core's pure-PyTorch naive functions (same math, one run).

B=1, H=8, K=V=64, fp32, forward, causal. Prints median latency of ours and of the peer, their
ratio (peer / ours: > 1 means ours is faster), and our achieved GFLOP/s as a fraction of this
machine's fp32 GEMM rate measured in the same run. fla-core is a test dependency
(``pip install -e '.[test]'``). fla has no naive *chunk* GLA, so GLA is compared with
``naive_recurrent_gla``.

Usage: ``.venv/bin/python benchmarks/linear_vs_fla.py [--lengths 2048,8192] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import functools
import warnings

import torch

from attnzoo.bench.env import gemm_gflops
from attnzoo.bench.measure import interleaved_medians
from attnzoo.ops.gla import gated_linear_attention, gla_flops
from attnzoo.ops.linear import linear_attention, linear_attention_flops

warnings.filterwarnings("ignore", message="Triton is not supported")
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402
from fla.ops.linear_attn.naive import naive_chunk_linear_attn  # noqa: E402
from fla.ops.simple_gla.naive import naive_chunk_simple_gla  # noqa: E402

B, H, K = 1, 8, 64


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", default="2048,8192")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gemm = gemm_gflops()
    print(
        f"fp32 GEMM: {gemm:.1f} GFLOP/s; B={B} H={H} K=V={K}, causal forward, median of {args.repeats}"
    )
    scale = K**-0.5
    for T in (int(t) for t in args.lengths.split(",")):
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(B, T, H, K, generator=g) * 0.5 for _ in range(3))
        slopes = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])
        gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=g)) / 16
        cases = {
            "linear": (
                functools.partial(linear_attention, q, k, v, causal=True, scale=scale, impl="chunk"),
                functools.partial(naive_chunk_linear_attn, q, k, v, scale=scale),
                linear_attention_flops(B, H, K, K, T, T, False),
            ),
            "lightning": (
                functools.partial(linear_attention, q, k, v, causal=True, decay=-slopes, scale=scale, impl="chunk"),
                functools.partial(naive_chunk_simple_gla, q, k, v, (-slopes).expand(B, T, H), scale=scale),
                linear_attention_flops(B, H, K, K, T, T, False),
            ),
            "gla": (
                functools.partial(gated_linear_attention, q, k, v, gk, impl="chunk"),
                functools.partial(naive_recurrent_gla, q, k, v, gk),
                gla_flops(B, T, H, K, K),
            ),
        }  # fmt: skip
        for name, (ours, peer, flops) in cases.items():
            with torch.no_grad():
                t = interleaved_medians({"ours": ours, "peer": peer}, repeats=args.repeats)
            rate = flops / t["ours"] / 1e9
            print(
                f"T={T:6d} {name:9s} ours {t['ours'] * 1e3:9.1f} ms  fla naive {t['peer'] * 1e3:9.1f} ms  "
                f"peer/ours {t['peer'] / t['ours']:5.2f}x  ours {rate:6.1f} GFLOP/s = {rate / gemm:.3f} of GEMM",
                flush=True,
            )


if __name__ == "__main__":
    main()
