"""Context-parallel strategies as registered objects: what ``attnzoo bench cp`` runs.

A :class:`Strategy` says how to shard a sequence for it, what it computes on one process (the
reference every rank's gathered output is checked against), how to call it on a rank, which
communicators carry its traffic and what that traffic should be. Each strategy registers itself
next to what it describes (:func:`register_strategy`): the exact-attention strategies in
:mod:`attnzoo.distributed.ring`, :mod:`~attnzoo.distributed.ulysses` and
:mod:`~attnzoo.distributed.hybrid`; the state-passing strategies of the linear family in the
block files of the mechanisms they run (:class:`StatePassing`).

Every rank builds the whole input from the case's seed (identical on all ranks) and keeps its
shard; cases are plain dicts (``strategy``, ``mask``, ``seq_len``, ``mode``, ``sharding``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from attnzoo.distributed.comm import Comm
from attnzoo.distributed.shard import Sharding
from attnzoo.text import add, pick

#: the masks the exact-attention strategies compute (global masks over the whole sequence)
ATTENTION_MASKS = ("full", "causal", "sliding-window", "document")


@dataclasses.dataclass(frozen=True)
class CPShape:
    """The per-case tensor shape: ``[batch, T, heads, head_dim]``, and the inputs' seed."""

    batch: int
    heads: int
    head_dim: int
    seed: int = 0


def case_mask(name: str, T: int) -> Any:
    """The global mask of a case (documents: four equal documents crossing shards)."""
    from attnzoo.ops.masks import Mask

    if name == "sliding-window":
        return Mask.sliding_window(max(T // 8, 1))
    if name == "document":
        return Mask.document([T // 4] * 3 + [T - 3 * (T // 4)])
    return name


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One context-parallel strategy (the base: contiguous or zigzag shards over the whole
    world, one communicator). Subclasses implement :meth:`call`, :meth:`reference` and
    :meth:`analytic_bytes`.

    Attributes:
        name: the CLI's ``--strategy`` name.
        description: one line for ``attnzoo bench cp --list`` and the report.
        masks: the mask kinds it computes.
        min_world: the smallest world size it runs at.
    """

    name: str
    description: str
    masks: tuple[str, ...]
    min_world: int = 1

    # ---- what runs where -------------------------------------------------------------------
    def heads_divisor(self, world_size: int) -> int:
        """Heads must be a multiple of this (strategies that split heads over ranks)."""
        return 1

    def skip_reason(self, world_size: int, heads: int, mask: str) -> str | None:
        """Why a case cannot run at ``world_size`` (``None``: it can)."""
        if mask not in self.masks:
            return f"{self.name} computes {self.masks} only"
        if world_size < self.min_world:
            return f"{self.name} needs world size >= {self.min_world}"
        div = self.heads_divisor(world_size)
        if heads % div:
            return f"heads={heads} not divisible by {div} ({self.name} splits heads)"
        return None

    def sharding_kind(self, mask: str) -> str:
        """Zigzag shards balance a masked (causal) case's work; contiguous otherwise."""
        return "zigzag" if mask != "full" else "contiguous"

    def setup(self, world_size: int) -> Any:
        """Per-world state every rank creates once, in the same order (process groups)."""
        return None

    def layout(self, case: dict[str, Any], world_size: int) -> Sharding:
        return Sharding(case["sharding"], case["seq_len"], world_size)

    def positions(self, case: dict[str, Any], sharding: Sharding, rank: int) -> Tensor:
        """Global token indices this rank holds."""
        return sharding.positions(rank)

    def comms(self, comm: Comm, setup: Any) -> list[Comm]:
        """The communicators whose bytes count as this strategy's traffic."""
        return [comm]

    # ---- the computation -------------------------------------------------------------------
    def inputs(self, shape: CPShape, T: int) -> dict[str, Tensor]:
        """The whole sequence's inputs (identical on every rank): ``q, k, v [B, T, H, K]``."""
        g = torch.Generator().manual_seed(shape.seed * 1_000_003 + T)
        size = (shape.batch, T, shape.heads, shape.head_dim)
        return {n: torch.randn(*size, generator=g) * 0.5 for n in ("q", "k", "v")}

    @property
    def grad_inputs(self) -> tuple[str, ...]:
        """The inputs whose gradients a ``fwd+bwd`` case checks."""
        return ("q", "k", "v")

    def reference(self, case: dict[str, Any], shape: CPShape) -> Callable[..., Tensor]:
        """The single-process op on the whole sequence, a function of :meth:`inputs`."""
        raise NotImplementedError

    def call(
        self, case: dict[str, Any], shape: CPShape, comm: Comm, setup: Any, sharding: Sharding
    ) -> Callable[..., Tensor]:
        """This rank's call on its shard of :meth:`inputs`."""
        raise NotImplementedError

    def analytic_bytes(
        self, case: dict[str, Any], shape: CPShape, sharding: Sharding, rank: int
    ) -> int:
        """Bytes this rank should send for one call, from the strategy's own formula."""
        raise NotImplementedError

    def work_pairs(
        self, case: dict[str, Any], sharding: Sharding, rank: int, world_size: int
    ) -> float | None:
        """Attended (query, key) pairs this rank computes, per head (``None``: not attention)."""
        return None


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    return add(STRATEGIES, strategy.name, strategy, "register_strategy")


def get_strategies(names: Sequence[str] | None = None) -> list[Strategy]:
    """The registered strategies (all when ``names`` is ``None``); unknown names raise
    ``ValueError`` with close matches. Importing the blocks registers their strategies."""
    # the package imports ring, ulysses and hybrid, which register the exact-attention
    # strategies; the linear family's blocks register their state passing
    import attnzoo.mixers  # noqa: F401

    return pick(STRATEGIES, names, "--strategy", "strategy")


@dataclasses.dataclass(frozen=True)
class StatePassing(Strategy):
    """A linear-family op run by :func:`~attnzoo.distributed.state_passing.linear_state_passing`
    on contiguous shards, checked against the single-process op.

    Attributes:
        kind: ``"linear"`` (:func:`~attnzoo.ops.linear.linear_attention`, with ``decay`` if
            given) or ``"gated"`` (:func:`~attnzoo.ops.gla.gated_linear_attention`, log gates
            from ``gates``).
        decay: ``heads -> [H]`` per-head log decay (``None``: no decay).
        gates: ``(generator, shape) -> log forget gates`` of ``k``'s shape (the gated kind).
    """

    masks: tuple[str, ...] = ("causal",)
    kind: str = "linear"
    decay: Callable[[int], Tensor] | None = None
    gates: Callable[[torch.Generator, tuple[int, ...]], Tensor] | None = None

    def sharding_kind(self, mask: str) -> str:
        return "contiguous"  # a recurrence runs in token order

    def inputs(self, shape: CPShape, T: int) -> dict[str, Tensor]:
        x = super().inputs(shape, T)
        if self.gates is not None:
            g = torch.Generator().manual_seed(shape.seed * 1_000_003 + T + 1)
            x["gk"] = self.gates(g, tuple(x["k"].shape))
        return x

    def reference(self, case: dict[str, Any], shape: CPShape) -> Callable[..., Tensor]:
        if self.kind == "gated":
            from attnzoo.ops.gla import gated_linear_attention

            return lambda q, k, v, gk: gated_linear_attention(q, k, v, gk)
        from attnzoo.ops.linear import linear_attention

        decay = None if self.decay is None else self.decay(shape.heads)
        return lambda q, k, v: linear_attention(q, k, v, causal=True, decay=decay)

    def call(
        self, case: dict[str, Any], shape: CPShape, comm: Comm, setup: Any, sharding: Sharding
    ) -> Callable[..., Tensor]:
        from attnzoo.distributed.state_passing import linear_state_passing

        decay = None if self.decay is None else self.decay(shape.heads)
        return lambda q, k, v, gk=None: linear_state_passing(
            q, k, v, comm=comm, kind=self.kind, decay=decay, gk=gk, sharding=sharding
        )

    def analytic_bytes(
        self, case: dict[str, Any], shape: CPShape, sharding: Sharding, rank: int
    ) -> int:
        from attnzoo.distributed.state_passing import state_passing_bytes

        return state_passing_bytes(
            sharding.world_size, num_heads=shape.heads, kind=self.kind,
            decay=self.decay is not None, batch=shape.batch, head_dim=shape.head_dim,
            backward=case["mode"] == "fwd+bwd",
        )[rank]  # fmt: skip
