"""Sharding layouts, shard/unshard round trips and gather_unshard across gloo workers."""

from __future__ import annotations

import pytest
import torch

from attnzoo.distributed import Sharding, gather_unshard, run_workers, shard, unshard
from tests.distributed import ring_workers as W

KINDS = ("contiguous", "zigzag", "striped")


@pytest.mark.parametrize(
    "kind,T,P,want",
    [
        ("contiguous", 10, 3, [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]),
        ("striped", 10, 3, [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]),
        ("zigzag", 12, 3, [[0, 1, 10, 11], [2, 3, 8, 9], [4, 5, 6, 7]]),
        # 13 tokens in 6 chunks: sizes 3, 2, 2, 2, 2, 2
        ("zigzag", 13, 3, [[0, 1, 2, 11, 12], [3, 4, 9, 10], [5, 6, 7, 8]]),
        ("zigzag", 8, 2, [[0, 1, 6, 7], [2, 3, 4, 5]]),
        ("contiguous", 5, 1, [[0, 1, 2, 3, 4]]),
    ],
)
def test_positions(kind: str, T: int, P: int, want: list[list[int]]) -> None:
    sh = Sharding(kind, T, P)  # type: ignore[arg-type]
    assert [sh.positions(r).tolist() for r in range(P)] == want
    assert sh.sizes == tuple(len(w) for w in want)
    assert [sh.local_len(r) for r in range(P)] == [len(w) for w in want]


LAYOUTS = [
    (kind, T, P)
    for kind in KINDS
    for P in (1, 2, 3, 4)
    for T in (8, 9, 12, 13, 37)
    if T >= (2 * P if kind == "zigzag" else P)
]


@pytest.mark.parametrize("kind,T,P", LAYOUTS)
def test_partition_and_round_trip(kind: str, T: int, P: int) -> None:
    sh = Sharding(kind, T, P)  # type: ignore[arg-type]
    allpos = torch.cat([sh.positions(r) for r in range(P)])
    assert sorted(allpos.tolist()) == list(range(T))  # every token owned exactly once
    for r in range(P):  # local order is increasing global order
        assert sh.positions(r).tolist() == sorted(sh.positions(r).tolist())
    spread = 2 if kind == "zigzag" else 1
    assert max(sh.sizes) - min(sh.sizes) <= spread
    x = torch.randn(2, T, 3)
    for dim, y in ((1, x), (0, x.transpose(0, 1)), (-1, x.transpose(1, 2))):
        shards = [shard(y, sh, r, dim=dim) for r in range(P)]
        assert [s.shape[dim] for s in shards] == list(sh.sizes)
        torch.testing.assert_close(unshard(shards, sh, dim=dim), y, rtol=0, atol=0)
        idx = sh.positions(P - 1)
        torch.testing.assert_close(shards[-1], y.index_select(dim % y.dim(), idx))


@pytest.mark.parametrize(
    "args,match",
    [
        (("ring", 8, 2), "kind must be one of"),
        (("contiguous", 0, 2), "seq_len must be an int >= 1, got 0"),
        (("contiguous", 8, 0), "world_size must be an int >= 1, got 0"),
        (("contiguous", True, 2), "seq_len must be an int >= 1, got True"),
        (("contiguous", 3, 4), r"world_size=4 needs seq_len >= 4 .* got seq_len=3"),
        (("striped", 3, 4), r"world_size=4 needs seq_len >= 4"),
        (("zigzag", 7, 4), r"kind='zigzag' with world_size=4 needs seq_len >= 8 .*2 \* world_size"),
    ],
)
def test_sharding_rejects_bad_layouts(args: tuple[str, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Sharding(*args)  # type: ignore[arg-type]


def test_shard_unshard_reject_bad_inputs() -> None:
    sh = Sharding("zigzag", 12, 3)
    x = torch.randn(1, 12, 2)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 3\), got 3"):
        sh.positions(3)
    with pytest.raises(ValueError, match=r"shard: x.shape\[1\]=11 but sharding.seq_len=12"):
        shard(x[:, :11], sh, 0)
    with pytest.raises(ValueError, match="dim 3 is out of range"):
        shard(x, sh, 0, dim=3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        shard([1, 2], sh, 0)  # type: ignore[arg-type]
    shards = [shard(x, sh, r) for r in range(3)]
    with pytest.raises(ValueError, match="got 2 shards but sharding.world_size=3"):
        unshard(shards[:2], sh)
    with pytest.raises(ValueError, match="shard 1 has 3 tokens along dim 1, expected 4"):
        unshard([shards[0], shards[1][:, :3], shards[2]], sh)


def test_gather_unshard_across_workers() -> None:
    P, T = 3, 13
    x = torch.randn(2, T, 3)
    shardings = [Sharding(kind, T, P) for kind in KINDS]  # type: ignore[arg-type]
    results = run_workers(W.gather_checks, P, x, shardings, timeout=90)
    g = W.rand(7, 2, T, 3)
    for r, (per_sharding, errors) in enumerate(results):
        for sh, (full, grad) in zip(shardings, per_sharding, strict=True):
            torch.testing.assert_close(full, x, rtol=0, atol=0)
            # every rank differentiates the gathered tensor with g: gradients add up over ranks
            torch.testing.assert_close(grad, P * shard(g, sh, r))
        assert errors[0].startswith("ValueError: gather_unshard: comm.world_size=3 but sharding")
        assert errors[1].startswith(
            f"ValueError: gather_unshard: x_local.shape[1]=1 but rank {r} owns"
        )


def test_gather_unshard_needs_a_comm_with_matching_world() -> None:
    # argument checks that run before any communication
    with pytest.raises(ValueError, match="dim 4 is out of range"):
        gather_unshard(torch.zeros(2, 3), Sharding("contiguous", 3, 1), None, dim=4)  # type: ignore[arg-type]
