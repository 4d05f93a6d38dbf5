"""Hybrid (Ulysses x ring) attention on 4 spawned gloo workers vs single-process attention.

One spawn makes the 2x2, 1x4 and 4x1 grids and runs every grid x sharding x mask case; the
parent reassembles the local outputs and gradients from each rank's positions, compares them
with ``softmax_attention(impl="reference")`` on the full sequence, and compares the bytes each
rank counted (Ulysses + ring communicators) with :func:`hybrid_bytes`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnzoo.distributed import Sharding, run_workers
from attnzoo.distributed.hybrid import hybrid_bytes, hybrid_positions
from attnzoo.ops import Mask, softmax_attention
from tests.distributed import ulysses_state_workers as W
from tests.distributed.ring_workers import shard_masks

P = 4
GRIDS = [(2, 2), (1, 4), (4, 1)]  # (ulysses, ring); made in this order by every rank
T = 19  # uneven everywhere: ring shards of 10/9 (zigzag 5+5 / 5+4), pieces of 5/5 and 5/4


def masks() -> list[Mask]:
    docs = [6, 4, T - 10]
    return shard_masks(docs, window=4)


def cases() -> list[W.AttnCase]:
    out = []
    for kind in ("contiguous", "zigzag", "striped"):
        for m in masks():
            out.append(W.AttnCase(kind, T, m, ulysses=2, ring=2, seed=len(out) * 10))
    out += [
        W.AttnCase("zigzag", T, Mask.causal_(), ulysses=2, ring=2, variant="allgather", seed=900),
        W.AttnCase("zigzag", T, Mask.prefix_lm(7), ulysses=2, ring=2, B=2, seed=910),
        W.AttnCase("zigzag", T, Mask.causal_(), H=4, Hkv=4, ulysses=4, ring=1, seed=920),
        W.AttnCase("striped", T, Mask.document([9, 10]), ulysses=1, ring=4, Hkv=1, seed=930),
    ]
    return out


@pytest.fixture(scope="module")
def world() -> tuple[list[W.AttnCase], list[Any]]:
    cs = cases()
    return cs, run_workers(W.hybrid_suite, P, GRIDS, cs, timeout=240)


def _name(c: W.AttnCase) -> str:
    return f"{c.ulysses}x{c.ring}/{c.variant}/{c.kind}/{c.mask.name}/H={c.H},Hkv={c.Hkv}"


def test_matches_single_process(world: tuple[list[W.AttnCase], list[Any]]) -> None:
    cs, results = world
    failures, worst = [], 0.0
    for i, case in enumerate(cs):
        q, k, v, g = case.inputs()
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        o = softmax_attention(q, k, v, mask=case.mask, impl="reference")
        (o * g).sum().backward()
        want = [o.detach(), q.grad, k.grad, v.grad]
        local = [results[r]["results"][i] for r in range(P)]
        pos = torch.cat([rk[0] for rk in local])
        assert torch.equal(pos.sort().values, torch.arange(case.T)), "positions must tile T"
        for j, name in enumerate(("out", "dq", "dk", "dv")):
            got = torch.empty_like(want[j])
            got[:, pos] = torch.cat([rk[1 + j] for rk in local], dim=1)
            err = (got - want[j]).abs().max().item()
            worst = max(worst, err)
            if not torch.allclose(got, want[j], atol=1e-5, rtol=1e-5):
                failures.append(f"{_name(case)} {name}: max error {err:.2e}")
    assert not failures, "\n".join(failures)
    assert worst < 1e-5


def test_counted_bytes_equal_analytic(world: tuple[list[W.AttnCase], list[Any]]) -> None:
    cs, results = world
    for i, c in enumerate(cs):
        sh = Sharding(c.kind, c.T, c.ring)  # type: ignore[arg-type]
        kw: dict[str, Any] = dict(
            batch=c.B, num_heads=c.H, kv_heads=c.Hkv, head_dim=c.K, v_head_dim=c.V
        )
        kw["variant"] = c.variant
        fwd = hybrid_bytes(sh, c.ulysses, **kw)
        total = hybrid_bytes(sh, c.ulysses, backward=True, **kw)
        counted = [tuple(results[r]["results"][i][5:]) for r in range(P)]
        assert counted == list(zip(fwd, total, strict=True)), _name(c)
        assert min(fwd) > 0


def test_rejects_bad_arguments(world: tuple[list[W.AttnCase], list[Any]]) -> None:
    _, results = world
    errors = results[0]["errors"]
    assert errors[0].startswith("ValueError") and "num_heads=3" in errors[0]
    assert "world_size=2" in errors[0] and "divisible" in errors[0]
    assert errors[1].startswith("ValueError") and "k/v num_heads=1" in errors[1]
    assert errors[2].startswith("ValueError") and "sharding.world_size=4" in errors[2]
    assert "ring size 2" in errors[2]
    assert errors[3].startswith("TypeError") and "grid must be a Grid" in errors[3]
    assert errors[4].startswith("ValueError") and "ulysses_size=3 x ring_size=1" in errors[4]
    assert "world size 4" in errors[4]
    assert errors[5].startswith("ValueError") and "ulysses_size must be an int >= 1" in errors[5]
    assert errors[6].startswith("ValueError") and "fewer than ulysses_size=2" in errors[6]


def test_positions_tile_the_sequence() -> None:
    sh = Sharding("zigzag", 19, 2)  # ring shards: chunks (0, 3) and (1, 2) of 5/5/5/4
    pieces = [[hybrid_positions(sh, 2, u, r).tolist() for u in range(2)] for r in range(2)]
    assert pieces[0] == [[0, 1, 2, 3, 4], [15, 16, 17, 18]]  # 9 tokens: 5 + 4
    assert pieces[1] == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    with pytest.raises(ValueError, match=r"ulysses_rank must be in \[0, 2\), got 2"):
        hybrid_positions(sh, 2, 2, 0)


def test_hybrid_bytes_reduces_to_ulysses_and_ring() -> None:
    from attnzoo.distributed import ring_bytes
    from attnzoo.distributed.ulysses import ulysses_bytes

    kw: dict[str, Any] = dict(batch=1, num_heads=4, kv_heads=2, head_dim=3)
    # one ring rank: pure Ulysses over the ring shard
    sh1 = Sharding("contiguous", 10, 1)
    assert hybrid_bytes(sh1, 2, **kw) == ulysses_bytes(Sharding("contiguous", 10, 2), **kw)
    # one Ulysses rank: pure ring
    sh4 = Sharding("zigzag", 16, 4)
    want = ring_bytes(sh4, batch=1, kv_heads=2, head_dim=3, backward=True)
    assert hybrid_bytes(sh4, 1, backward=True, **kw) == want
