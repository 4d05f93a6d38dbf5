"""Ring attention on spawned gloo workers vs single-process softmax attention (fwd + bwd).

One spawn per world size runs every variant x sharding x mask case; the parent unshards the
local outputs and gradients and compares them with ``softmax_attention(impl="reference")`` on
the full sequence, and compares the bytes each rank counted with :func:`ring_bytes`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnzoo.distributed import Sharding, ring_bytes, ring_work, run_workers, unshard
from attnzoo.ops import Mask, softmax_attention
from tests.distributed import ring_workers as W

KINDS = ("contiguous", "zigzag", "striped")
VARIANTS = ("p2p", "allgather")
# uneven for every kind: T % P != 0 and T % (2P) != 0 (except world 1)
LENGTHS = {1: 9, 2: 17, 3: 23, 4: 30}


def masks(T: int) -> list[Mask]:
    docs = [T // 3, T // 4, T - T // 3 - T // 4]  # boundaries fall inside shards
    return [
        *W.shard_masks(docs, window=5),
        # the first 3 queries of the last document see no key: zero rows, fully masked blocks
        Mask.document([5, 0, T - 5], kv_lengths=[5, 3, T - 8], causal=True),
    ]


def cases_for(P: int) -> list[W.RingCase]:
    T = LENGTHS[P]
    # with one rank every kind is the same layout
    kinds = ("contiguous",) if P == 1 else KINDS
    out = [
        W.RingCase(kind, T, m, variant, seed=i)
        for i, (kind, m, variant) in enumerate(
            (kind, m, variant) for kind in kinds for m in masks(T) for variant in VARIANTS
        )
    ]
    # tiles inside a ring step smaller than a shard (and not dividing it): partial tiles,
    # tiles with no allowed pair skipped, rows whose keys span several tiles
    out += [
        W.RingCase(kind, T, m, "p2p", seed=300 + i, tiles=(3, 4))
        for i, (kind, m) in enumerate((kind, m) for kind in kinds for m in masks(T))
    ]
    if P == 2:
        # batch 2, grouped-query heads, and the remaining mask kinds
        extra = [Mask.causal_(), Mask.prefix_lm(6), Mask.block_causal(4),
                 # two key ranges per row, and token filters (issue 17's kinds)
                 Mask.global_window(2, 3), Mask.global_window(1, 3, causal=False),
                 Mask.shared_question(4, [5, 7]), Mask.causal_blockwise([4, 5, 7]),
                 Mask.prefix_lm(3, documents=[6, 10]),
                 Mask.qk_sparse(drop_q=(0, 5, 9), drop_k=(2, 3, 11)),
                 Mask.hash_sparse([i % 3 for i in range(16)])]  # fmt: skip
        out += [
            W.RingCase(kind, 16, m, variant, B=2, H=4, Hkv=2, seed=100 + i)
            for i, (kind, m, variant) in enumerate(
                (kind, m, variant)
                for kind in ("zigzag", "striped")
                for m in extra
                for variant in VARIANTS
            )
        ]
        # bf16 inputs: K/V travel in bf16, partial results and dK/dV accumulators stay fp32
        out += [
            W.RingCase("zigzag", 16, Mask.causal_(), variant, seed=200, dtype="bfloat16")
            for variant in VARIANTS
        ]
    return out


@pytest.fixture(scope="module", params=[1, 2, 3, 4], ids=lambda p: f"world{p}")
def world(request: pytest.FixtureRequest) -> tuple[int, list[W.RingCase], list[Any]]:
    P = request.param
    cases = cases_for(P)
    return P, cases, run_workers(W.ring_suite, P, cases, timeout=240)


def _name(c: W.RingCase) -> str:
    tiles = "" if c.tiles is None else f"/tiles={c.tiles}"
    return f"{c.variant}/{c.kind}/{c.mask.name}/T={c.T}/H={c.H},Hkv={c.Hkv}/{c.dtype}{tiles}"


def test_matches_single_process(world: tuple[int, list[W.RingCase], list[Any]]) -> None:
    P, cases, results = world
    failures = []
    worst = 0.0
    for i, case in enumerate(cases):
        sh = Sharding(case.kind, case.T, P)  # type: ignore[arg-type]
        # the reference sees the same (bf16-rounded) inputs, in fp32
        dtype = getattr(torch, case.dtype)
        q, k, v, g = (t.to(dtype).float() for t in case.inputs())
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        tol = 1e-5 if case.dtype == "float32" else 3e-2
        o = softmax_attention(q, k, v, mask=case.mask, impl="reference")
        (o * g).sum().backward()
        want = [o.detach(), q.grad, k.grad, v.grad]
        ranks = [results[r][0][i] for r in range(P)]
        for j, name in enumerate(("out", "dq", "dk", "dv")):
            got = unshard([rk[j] for rk in ranks], sh)
            assert got.dtype == getattr(torch, case.dtype), _name(case)
            got = got.float()
            err = (got - want[j]).abs().max().item()
            if case.dtype == "float32":
                worst = max(worst, err)
            if not torch.allclose(got, want[j], atol=tol, rtol=tol):
                failures.append(f"{_name(case)} {name}: max error {err:.2e}")
    assert not failures, "\n".join(failures)
    assert worst < 1e-5


def test_counted_bytes_equal_analytic(world: tuple[int, list[W.RingCase], list[Any]]) -> None:
    P, cases, results = world
    for i, case in enumerate(cases):
        sh = Sharding(case.kind, case.T, P)  # type: ignore[arg-type]
        kw = dict(batch=case.B, kv_heads=case.Hkv, head_dim=case.K, variant=case.variant)
        kw["element_size"] = getattr(torch, case.dtype).itemsize
        fwd = ring_bytes(sh, **kw)  # type: ignore[arg-type]
        total = ring_bytes(sh, backward=True, **kw)  # type: ignore[arg-type]
        counted = [results[r][0][i][4:] for r in range(P)]
        assert counted == list(zip(fwd, total, strict=True)), _name(case)
        if P > 1:
            assert min(fwd) > 0


def test_ring_bytes_values() -> None:
    # 2 ranks x 8 tokens, B=1, Hkv=2, K=V=8: one token's K and V = 32 floats = 128 bytes
    sh = Sharding("contiguous", 16, 2)
    assert ring_bytes(sh, batch=1, kv_heads=2, head_dim=8) == [8 * 128] * 2
    # backward: K/V again plus P = 2 shifts of fp32 dK/dV accumulators (every block once)
    assert ring_bytes(sh, batch=1, kv_heads=2, head_dim=8, backward=True) == [4 * 8 * 128] * 2
    ag = ring_bytes(sh, batch=1, kv_heads=2, head_dim=8, variant="allgather", backward=True)
    assert ag == [2 * 8 * 128] * 2
    # bf16 K/V halve the forward; the accumulators stay fp32
    half = ring_bytes(sh, batch=1, kv_heads=2, head_dim=8, element_size=2, backward=True)
    assert half == [2 * 8 * 64 + 16 * 128] * 2


def test_rejects_bad_arguments(world: tuple[int, list[W.RingCase], list[Any]]) -> None:
    P, _, results = world
    errors = results[0][1]
    expected = [
        "ValueError: ring_attention: variant must be one of ('p2p', 'allgather'), got 'ring'",
        "ValueError: ring_attention: rank 0 owns 8 tokens of",
        f"ValueError: ring_attention: sharding.world_size={P + 1} but comm.world_size={P}",
        "ValueError: mask: documents lengths (3,) sum to 3 but there are T=",
        "TypeError: ring_attention: sharding must be a Sharding, got tuple",
        "ValueError: mask: the string 'sliding' is not a mask",
    ]
    for got, want in zip(errors, expected, strict=True):
        assert got.startswith(want), (got, want)
    with pytest.raises(ValueError, match="variant must be one of"):
        ring_bytes(Sharding("zigzag", 8, 2), batch=1, kv_heads=1, head_dim=4, variant="ulysses")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        ring_bytes(Sharding("zigzag", 8, 2), batch=0, kv_heads=1, head_dim=4)


def test_ring_work_balance() -> None:
    # contiguous causal: rank 0 has queries 0..3 (1 + 2 + 3 + 4 pairs), rank 1 has 4..7
    assert ring_work(Sharding("contiguous", 8, 2), "causal") == [10, 26]
    T, P = 256, 4
    for kind, limit in (("contiguous", None), ("zigzag", 0.10), ("striped", 0.10)):
        work = ring_work(Sharding(kind, T, P), Mask.causal_())  # type: ignore[arg-type]
        assert sum(work) == Mask.causal_().pairs(T, T)
        spread = (max(work) - min(work)) / max(work)
        if limit is None:
            assert max(work) > 3 * min(work)  # the last rank does ~7x the first rank's work
        else:
            assert spread < limit, (kind, work)
    assert ring_work(Sharding("zigzag", 64, 4), "causal") == [520] * 4
    assert ring_work(Sharding("striped", 64, 4), "full") == [16 * 64] * 4


@pytest.mark.parametrize(
    "mask",
    [
        Mask.global_window(2, 3),
        Mask.shared_question(4, [5, 7]),
        Mask.qk_sparse((0, 5), (2, 3)),
        Mask.hash_sparse([i % 3 for i in range(16)]),
    ],  # fmt: skip
    ids=lambda m: m.name,
)
def test_ring_work_counts_every_kind_per_pair(mask: Mask) -> None:
    """Each rank's work is its queries' allowed pairs, counted from the dense mask."""
    sh = Sharding("zigzag", 16, 2)
    dense = mask.dense(16, 16)
    assert ring_work(sh, mask) == [int(dense[sh.positions(r)].sum()) for r in range(2)]
