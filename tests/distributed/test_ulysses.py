"""Ulysses on spawned gloo workers vs single-process softmax attention (fwd + bwd).

One spawn per world size runs every sharding x mask case; the parent unshards the local outputs
and gradients, compares them with ``softmax_attention(impl="reference")`` on the full sequence,
and compares the bytes each rank counted with :func:`ulysses_bytes`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnzoo.distributed import Sharding, run_workers, unshard
from attnzoo.distributed.ulysses import exchange_order, ulysses_bytes
from attnzoo.ops import Mask, softmax_attention
from tests.distributed import ulysses_state_workers as W
from tests.distributed.ring_workers import shard_masks

KINDS = ("contiguous", "zigzag", "striped")
LENGTHS = {2: 13, 3: 14, 4: 18}  # uneven shards at every world size
HEADS = {2: (4, 2), 3: (3, 3), 4: (4, 4)}  # (H, Hkv): GQA where the group size allows


def masks(T: int) -> list[Mask]:
    docs = [T // 3, T // 4, T - T // 3 - T // 4]  # boundaries fall inside shards
    return [
        *shard_masks(docs, window=4),
        Mask.prefix_lm(5),
        Mask.block_causal(4),
    ]


def cases_for(P: int) -> list[W.AttnCase]:
    T, (H, Hkv) = LENGTHS[P], HEADS[P]
    out = [
        W.AttnCase(kind, T, m, H=H, Hkv=Hkv, seed=10 * i)
        for i, (kind, m) in enumerate((kind, m) for kind in KINDS for m in masks(T))
    ]
    # the other local attention paths, and a batch of 2
    out += [
        W.AttnCase("zigzag", T, Mask.causal_(), H=H, Hkv=Hkv, B=2, impl=impl, seed=500 + i)
        for i, impl in enumerate(("reference", "blocked"))
    ]
    return out


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda p: f"world{p}")
def world(request: pytest.FixtureRequest) -> tuple[int, list[W.AttnCase], list[Any]]:
    P = request.param
    cases = cases_for(P)
    return P, cases, run_workers(W.ulysses_suite, P, cases, timeout=240)


def _name(c: W.AttnCase) -> str:
    return f"{c.kind}/{c.mask.name}/T={c.T}/H={c.H},Hkv={c.Hkv}/{c.impl}"


def test_matches_single_process(world: tuple[int, list[W.AttnCase], list[Any]]) -> None:
    P, cases, results = world
    failures, worst = [], 0.0
    for i, case in enumerate(cases):
        sh = Sharding(case.kind, case.T, P)  # type: ignore[arg-type]
        q, k, v, g = case.inputs()
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        o = softmax_attention(q, k, v, mask=case.mask, impl="reference")
        (o * g).sum().backward()
        want = [o.detach(), q.grad, k.grad, v.grad]
        for j, name in enumerate(("out", "dq", "dk", "dv")):
            got = unshard([results[r]["results"][i][j] for r in range(P)], sh)
            err = (got - want[j]).abs().max().item()
            worst = max(worst, err)
            if not torch.allclose(got, want[j], atol=1e-5, rtol=1e-5):
                failures.append(f"{_name(case)} {name}: max error {err:.2e}")
    assert not failures, "\n".join(failures)
    assert worst < 1e-5


def test_counted_bytes_equal_analytic(world: tuple[int, list[W.AttnCase], list[Any]]) -> None:
    P, cases, results = world
    for i, c in enumerate(cases):
        sh = Sharding(c.kind, c.T, P)  # type: ignore[arg-type]
        kw: dict[str, Any] = dict(
            batch=c.B, num_heads=c.H, kv_heads=c.Hkv, head_dim=c.K, v_head_dim=c.V
        )
        fwd, total = ulysses_bytes(sh, **kw), ulysses_bytes(sh, backward=True, **kw)
        counted = [tuple(results[r]["results"][i][4:]) for r in range(P)]
        assert counted == list(zip(fwd, total, strict=True)), _name(c)
        assert min(fwd) > 0


def test_rejects_bad_arguments(world: tuple[int, list[W.AttnCase], list[Any]]) -> None:
    P, _, results = world
    errors = results[0]["errors"]
    assert errors[0].startswith("ValueError") and f"num_heads={P + 1}" in errors[0]
    assert f"world_size={P}" in errors[0] and "divisible" in errors[0]
    assert errors[1].startswith("ValueError") and "k/v num_heads=1" in errors[1]
    assert f"world_size={P}" in errors[1]
    assert errors[2].startswith("ValueError") and "owns 4 tokens" in errors[2]
    assert errors[3].startswith("ValueError") and f"sharding.world_size={P + 1}" in errors[3]
    assert errors[4].startswith("TypeError") and "sharding must be a Sharding" in errors[4]


def test_ulysses_bytes_values() -> None:
    # 2 ranks x 4 tokens, B=1, H=Hkv=2, K=V=2: a rank sends the other rank's head of its
    # 4 tokens' q, k, v (4 x 6 floats), then its head's output at the other 4 tokens (4 x 2)
    sh = Sharding("contiguous", 8, 2)
    kw: dict[str, Any] = dict(batch=1, num_heads=2, kv_heads=2, head_dim=2)
    assert ulysses_bytes(sh, **kw) == [4 * (4 * 6 + 4 * 2)] * 2
    assert ulysses_bytes(sh, backward=True, **kw) == [2 * 4 * (4 * 6 + 4 * 2)] * 2
    uneven = ulysses_bytes(Sharding("contiguous", 7, 2), **kw)  # 4 and 3 tokens
    assert uneven == [4 * (4 * 6 + 3 * 2), 4 * (3 * 6 + 4 * 2)]
    with pytest.raises(ValueError, match=r"num_heads=3 must be divisible by world_size=2"):
        ulysses_bytes(sh, batch=1, num_heads=3, kv_heads=3, head_dim=2)


def test_exchange_order_inverts_rank_order() -> None:
    sh = Sharding("zigzag", 10, 2)
    pos = [sh.positions(r) for r in range(2)]
    order, back = exchange_order(pos)
    x = torch.arange(10) * 10
    rank_order = torch.cat([x[p] for p in pos])
    assert torch.equal(rank_order.index_select(0, order), x)  # global order restored
    assert torch.equal(x.index_select(0, back), rank_order)
