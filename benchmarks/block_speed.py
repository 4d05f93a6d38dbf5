"""Median forward and forward+backward time of every block's default (``auto``) path, for
comparing two checkouts of attnzoo in separate processes (Interface v2's speed check).

    PYTHONPATH=/path/to/old/src python benchmarks/block_speed.py > old.json
    PYTHONPATH=src python benchmarks/block_speed.py > new.json
    python benchmarks/block_speed.py --compare old.json new.json

Shape: B=1, d_model=256 (4 heads where the config has ``num_heads``), T=1024 tokens or a 32x32
grid; causal-self for token blocks that have it. Run the two sides alternately, a few rounds
each, with nothing else on the machine: one process's time for the same code varies by up to 2x
here (allocator and scheduling), so compare medians over processes, not single runs. Works on
checkouts from before Interface v2 too (``spec.dims``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time


def measure(
    names: list[str] | None, fwd_calls: int, train_calls: int
) -> dict[str, dict[str, float]]:
    import torch

    import attnzoo as az

    torch.set_num_threads(2)
    out = {}
    for spec in az.list_mixers():
        if names and spec.name not in names:
            continue
        tokens = getattr(spec, "layout", "tokens" if spec.dims == 1 else "grid2d") == "tokens"
        kw = {"num_heads": 4} if "num_heads" in spec.config.field_names() else {}
        torch.manual_seed(0)
        m = az.build_mixer(
            spec.name, d_model=256, causal=tokens and "causal-self" in spec.patterns, **kw
        )
        g = torch.Generator().manual_seed(0)
        x = (
            torch.randn(1, 1024, 256, generator=g)
            if tokens
            else torch.randn(1, 32, 32, 256, generator=g)
        )
        gy = torch.randn(x.shape, generator=g)

        def fwd(m: torch.nn.Module = m, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                m(x)

        def train(m: torch.nn.Module = m, x: torch.Tensor = x, gy: torch.Tensor = gy) -> None:
            for p in m.parameters():
                p.grad = None
            m(x).backward(gy)

        res = {}
        for mode, fn, calls in (("fwd", fwd, fwd_calls), ("fwdbwd", train, train_calls)):
            fn(), fn()  # warm-up
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            res[mode] = statistics.median(times)
        out[spec.name] = res
    return out


def compare(old_paths: list[str], new_paths: list[str]) -> None:
    """Per block and mode: the median over the files (processes) of each side, and new/old."""
    old = [json.load(open(p)) for p in old_paths]
    new = [json.load(open(p)) for p in new_paths]
    ratios: dict[str, list[float]] = {"fwd": [], "fwdbwd": []}
    print(
        f"{'block':14s} {'fwd old ms':>10s} {'new':>8s} {'new/old':>7s}   {'fwdbwd old':>10s} {'new':>8s} {'new/old':>7s}"
    )
    for name in sorted(old[0]):
        cells = []
        for mode in ("fwd", "fwdbwd"):
            o = statistics.median(r[name][mode] for r in old) * 1e3
            n = statistics.median(r[name][mode] for r in new if name in r) * 1e3
            ratios[mode].append(n / o)
            cells.append(f"{o:10.2f} {n:8.2f} {n / o:7.2f}")
        print(f"{name:14s} " + "   ".join(cells))
    for mode, rs in ratios.items():
        print(f"{mode}: geometric mean new/old {math.exp(sum(map(math.log, rs)) / len(rs)):.3f}")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--blocks", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--calls", type=int, default=7, help="timed forward calls (fwd+bwd: calls - 2)")
    ap.add_argument(
        "--compare", nargs="+", metavar="JSON", help="OLD... NEW...: half of the files each"
    )
    args = ap.parse_args(argv)
    if args.compare:
        half = len(args.compare) // 2
        compare(args.compare[:half], args.compare[half:])
        return
    names = args.blocks.split(",") if args.blocks else None
    print(json.dumps(measure(names, args.calls, max(1, args.calls - 2))))


if __name__ == "__main__":
    main(sys.argv[1:])
