"""run_workers (results, failures, hangs, validation) and Comm's collectives (values, grads, bytes)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from attnzoo.distributed import Comm, init_from_env, run_workers
from tests.distributed import ring_workers as W

P = 3


def test_results_come_back_ordered_by_rank() -> None:
    out = run_workers(W.whoami, P, "tag", timeout=60)
    assert [o["rank"] for o in out] == [0, 1, 2]
    for o in out:
        assert o["world"] == P and o["tag"] == "tag" and o["threads"] == 1
        torch.testing.assert_close(o["sum"], torch.full((2,), 3.0))  # 0 + 1 + 2


def test_failing_rank_is_named_without_hanging() -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 failed") as info:
        run_workers(W.fail_on, 2, 1, timeout=60)
    assert "deliberate failure on rank 1" in str(info.value)  # the worker's traceback
    assert "Traceback" in str(info.value)
    assert time.monotonic() - start < 30


def test_hanging_workers_are_killed_after_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\] of 2 did not finish within timeout=3"):
        run_workers(W.sleep_long, 2, timeout=3)
    assert time.monotonic() - start < 20


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fn=W.whoami, world_size=0), "world_size must be an int >= 1, got 0"),
        (dict(fn=W.whoami, world_size=2.0), "world_size must be an int >= 1, got 2.0"),
        (dict(fn=W.whoami, world_size=True), "world_size must be an int >= 1, got True"),
        (dict(fn=W.whoami, world_size=2, timeout=0), "timeout must be a positive number"),
        (dict(fn=W.whoami, world_size=2, backend="tcp"), "backend must be one of"),
        (dict(fn="whoami", world_size=2), "fn must be callable, got str"),
    ],
)
def test_run_workers_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    fn, world_size = kwargs.pop("fn"), kwargs.pop("world_size")
    with pytest.raises((ValueError, TypeError), match=match):
        run_workers(fn, world_size, "tag", **kwargs)


def test_init_from_env_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        RuntimeError, match=r"\['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'\]"
    ):
        init_from_env()
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        Comm()


# ---- Comm: one spawn, every collective checked against values computed here -----------------
@pytest.fixture(scope="module")
def comm_results() -> list[dict[str, Any]]:
    return run_workers(W.comm_checks, P, timeout=90)


def test_all_gather(comm_results: list[dict[str, Any]]) -> None:
    sizes = W.comm_sizes(P)
    xs = [W.rand(r, 2, sizes[r], 3) for r in range(P)]
    g = W.rand(100, 2, sum(sizes), 3)
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    for r, res in enumerate(comm_results):
        out, grad, fwd, bwd = res["all_gather"]
        torch.testing.assert_close(out, torch.cat(xs, 1))
        # every rank's output is differentiated with g: the gradient is summed over ranks
        torch.testing.assert_close(grad, P * g[:, bounds[r] : bounds[r + 1]])
        assert fwd == (P - 1) * xs[r].numel() * 4
        assert bwd == (sum(sizes) - sizes[r]) * 2 * 3 * 4


def test_all_to_all(comm_results: list[dict[str, Any]]) -> None:
    sizes = W.comm_sizes(P)
    xs = [W.rand(10 + r, 2, sizes[r], 2 * P) for r in range(P)]
    gs = [W.rand(200 + r, 2, sum(sizes), 2) for r in range(P)]
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    for r, res in enumerate(comm_results):
        out, grad, fwd, bwd = res["all_to_all"]
        torch.testing.assert_close(out, torch.cat([x[:, :, 2 * r : 2 * r + 2] for x in xs], 1))
        want = torch.cat([gs[d][:, bounds[r] : bounds[r + 1]] for d in range(P)], 2)
        torch.testing.assert_close(grad, want)
        assert fwd == xs[r].numel() * (P - 1) // P * 4
        assert bwd == (gs[r].numel() - 2 * sizes[r] * 2) * 4


def test_send_recv_ring_shift(comm_results: list[dict[str, Any]]) -> None:
    sizes = W.comm_sizes(P)
    xs = [W.rand(20 + r, sizes[r], 3) for r in range(P)]
    for r, res in enumerate(comm_results):
        out, grad, fwd, bwd = res["send_recv"]
        torch.testing.assert_close(out, xs[(r - 1) % P])
        nxt = (r + 1) % P
        torch.testing.assert_close(grad, W.rand(300 + nxt, *xs[r].shape))
        assert fwd == xs[r].numel() * 4
        assert bwd == xs[(r - 1) % P].numel() * 4


def test_all_reduce(comm_results: list[dict[str, Any]]) -> None:
    total = sum(W.rand(30 + r, 5, 7) for r in range(P))
    g_total = sum(W.rand(400 + r, 5, 7) for r in range(P))
    chunks = [12, 12, 11]  # torch.tensor_split of 35 elements into 3
    for r, res in enumerate(comm_results):
        out, grad, fwd, bwd = res["all_reduce"]
        torch.testing.assert_close(out, total)
        torch.testing.assert_close(grad, g_total)
        assert fwd == bwd == 2 * (35 - chunks[r]) * 4


def test_subgroup(comm_results: list[dict[str, Any]]) -> None:
    members = [0, P - 1]
    xs = [W.rand(40 + m, 3, 2) for m in members]
    assert "sub" not in comm_results[1]
    for i, m in enumerate(members):
        rank, world, gathered, received = comm_results[m]["sub"]
        assert (rank, world) == (i, 2)
        torch.testing.assert_close(gathered, torch.cat(xs, 0))
        torch.testing.assert_close(received, xs[1 - i])


def test_comm_rejects_bad_arguments(comm_results: list[dict[str, Any]]) -> None:
    errors = comm_results[0]["errors"]
    expected = [
        "ValueError: all_to_all: x.shape[1]=4 is not divisible by world_size=3",
        "ValueError: all_to_all: scatter_dim and gather_dim must differ, got 1 for both",
        "ValueError: all_gather: sizes must be 3 ints >= 0 (one per rank), got [3, 3, 3, 3]",
        "ValueError: all_gather: dim 5 is out of range for a tensor with 2 dims",
        "ValueError: Comm: to must be a rank in [0, 3), got 3",
        "ValueError: shift_async: rank 0 sends to 0 and receives from 1",
    ]
    assert len(errors) == len(expected)
    for got, want in zip(errors, expected, strict=True):
        assert got.startswith(want), (got, want)
