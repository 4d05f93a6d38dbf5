"""Ring attention: exact softmax attention over a sequence sharded across ranks.

Liu et al., "Ring Attention with Blockwise Transformers for Near-Infinite Context", 2023,
https://arxiv.org/abs/2310.01889  Code: github.com/haoliuhl/ringattention
Brandon et al., "Striped Attention: Faster Ring Attention for Causal Transformers", 2023,
https://arxiv.org/abs/2311.09431 (striped sharding; zigzag is the two-chunk variant).

Every rank keeps its queries. In ``P`` steps the K/V blocks travel around the ring
(rank ``r`` sends to ``r + 1``); at step ``i`` rank ``r`` attends to the block of rank ``r - i``
while the next block is already in flight. Each block yields a partial output and its log-sum-exp
(fp32), merged with ``lse = logaddexp(lse_a, lse_b)``, ``o = o_a e^{lse_a - lse} + o_b e^{lse_b
- lse}``; a block (or a row) with no allowed key has ``lse = -inf`` and weighs nothing. The mask is
the *global* one: row ``i`` of rank ``r`` attends the keys ``mask.resolve(T, T)`` allows at its
global position, so any sharding and every mask of :mod:`attnzoo.ops.masks` work; fully masked
blocks are skipped. The backward is a second ring pass: each block's probabilities are recomputed
from the saved LSE, ``dQ`` accumulates locally and the ``dK/dV`` accumulators (fp32) travel with
their block and reach its owner after one more shift.

Inside a ring step the work is tiled ``block_q x block_k`` (forward and backward): each tile's
scores are masked by the pairs the mask allows between the tile's query and key positions, tiles without an allowed
pair are skipped, and tile results merge by the same log-sum-exp rule. A rank's memory is the
K/V block in flight plus one tile of scores: ``O(T_r * (K + V) + block_q * block_k)`` per head.

``variant="allgather"`` gathers all K/V instead and attends once (autograd through the gather):
the simple baseline, holding all of K/V and this rank's ``[T_r, T]`` scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange, reduce
from torch import Tensor

from attnzoo.distributed.comm import Comm
from attnzoo.distributed.shard import Sharding
from attnzoo.distributed.strategies import (
    ATTENTION_MASKS,
    CPShape,
    Strategy,
    case_mask,
    register_strategy,
)
from attnzoo.ops.common import check_block, check_qkv, expand_kv, resolve_scale
from attnzoo.ops.mask_rows import Rows
from attnzoo.ops.masks import Mask, as_mask

OP = "ring_attention"
VARIANTS = ("p2p", "allgather")


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    comm: Comm,
    sharding: Sharding,
    mask: Mask | str | None = None,
    scale: float | None = None,
    variant: Literal["p2p", "allgather"] = "p2p",
    block_q: int = 512,
    block_k: int = 512,
) -> Tensor:
    """Exact softmax self-attention of this rank's queries over the whole sharded sequence.

    Args:
        q, k, v: this rank's shard (tokens at ``sharding.positions(comm.rank)``); ``k``/``v`` may
            have fewer heads (GQA), which is also what travels.
        comm: communicator of the context-parallel group (``P = comm.world_size``).
        sharding: the global layout; ``sharding.world_size`` must equal ``P``.
        mask: the mask of the *global* ``T x T`` problem (any :class:`attnzoo.Mask`,
            ``"full"``, ``"causal"`` or ``None`` for full).
        scale: score scale; ``None`` means ``1/sqrt(K)``.
        variant: ``"p2p"`` (ring of async send/recv overlapped with compute) or
            ``"allgather"`` (gather all K/V, attend once).
        block_q, block_k: tile sizes inside one ring step of ``p2p`` (forward and backward):
            scores are materialised ``block_q x block_k`` at a time, so a rank's memory is
            ``O(T_r + block_q * block_k)`` per head, not ``O(T_r * T_s)``.

    Returns:
        This rank's output; rows without any allowed key are zero (zero gradient too).

    Shapes:
        q ``[B, T_r, H, K]``, k ``[B, T_r, Hkv, K]``, v ``[B, T_r, Hkv, V]`` -> ``[B, T_r, H, V]``
    """
    plan = _plan(q, k, v, comm, sharding, mask, scale, variant, block_q, block_k)
    if variant == "allgather":
        return _allgather(q, k, v, comm, plan)
    return _RingP2P.apply(q, k, v, comm, plan)


@dataclass(frozen=True)
class _Plan:
    """Per-call constants: the global mask, this rank's query positions, the key positions of
    every rank's block, which blocks have no allowed pair, the tile sizes."""

    sharding: Sharding
    scale: float
    rows: Rows  # the global mask at T x T
    qpos: Tensor  # [T_r] global positions of this rank's queries
    kpos: tuple[Tensor, ...]  # global positions of rank s's keys, [T_s] each
    skip: tuple[bool, ...]  # block s has no allowed (query, key) pair
    block_q: int
    block_k: int


def _plan(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    comm: Comm,
    sharding: Sharding,
    mask: Mask | str | None,
    scale: float | None,
    variant: str,
    block_q: int = 512,
    block_k: int = 512,
) -> _Plan:
    if variant not in VARIANTS:
        raise ValueError(f"{OP}: variant must be one of {VARIANTS}, got {variant!r}")
    if not isinstance(comm, Comm):
        raise TypeError(
            f"{OP}: comm must be an attnzoo.distributed.Comm, got {type(comm).__name__}"
        )
    if not isinstance(sharding, Sharding):
        raise TypeError(f"{OP}: sharding must be a Sharding, got {type(sharding).__name__}")
    if sharding.world_size != comm.world_size:
        raise ValueError(
            f"{OP}: sharding.world_size={sharding.world_size} but comm.world_size={comm.world_size}"
        )
    check_block(OP, "block_q", block_q)
    check_block(OP, "block_k", block_k)
    _, Tq, S, _, _, K = check_qkv(OP, q, k, v)
    T_r = sharding.local_len(comm.rank)
    if Tq != T_r or S != T_r:
        raise ValueError(
            f"{OP}: rank {comm.rank} owns {T_r} tokens of {sharding}, but q has {Tq} and k/v "
            f"have {S} (ring attention is self-attention over local shards)"
        )
    m = as_mask(mask)
    T = sharding.seq_len
    m.validate(T, T)
    dev = q.device
    rows = m.resolve(T, T, dev)
    qpos = sharding.positions(comm.rank).to(dev)
    kpos = tuple(sharding.positions(s).to(dev) for s in range(sharding.world_size))
    skip = tuple(not _reaches(rows, qpos, kp) for kp in kpos)
    return _Plan(sharding, resolve_scale(OP, scale, K), rows, qpos, kpos, skip, block_q, block_k)


def _reaches(rows: Rows, qpos: Tensor, kpos: Tensor) -> bool:
    """Whether any query at ``qpos`` may attend any key at ``kpos``: keys counted per range
    (``O(T log T)``), or the pairs evaluated when token filters hide some inside the ranges."""
    if rows.filtered:
        return bool(rows.allowed(qpos, kpos).any())
    srt = torch.sort(kpos).values
    lo, hi = rows.lo[qpos], rows.hi[qpos]  # [T_r, R]
    return bool((torch.searchsorted(srt, hi) > torch.searchsorted(srt, lo)).any())


def _tiles(plan: _Plan, src: int) -> Iterator[tuple[slice, slice, Tensor | None]]:
    """The non-empty ``block_q x block_k`` tiles of (this rank's queries, block ``src``'s keys):
    query slice, key slice and the allowed mask (``None`` when every pair is allowed)."""
    kpos, T_r = plan.kpos[src], plan.qpos.shape[0]
    for q0 in range(0, T_r, plan.block_q):
        qs = slice(q0, q0 + plan.block_q)
        for k0 in range(0, kpos.shape[0], plan.block_k):
            ks = slice(k0, k0 + plan.block_k)
            allowed = plan.rows.allowed(plan.qpos[qs], kpos[ks])  # [tq, tk]
            if not bool(allowed.any()):
                continue
            yield qs, ks, None if bool(allowed.all()) else allowed


def _block_scores(qh: Tensor, kh: Tensor, allowed: Tensor | None, scale: float) -> Tensor:
    s = qh @ kh.transpose(-1, -2) * scale  # [B, H, T_r, T_s]
    return s if allowed is None else s.masked_fill(~allowed, float("-inf"))


def _block_forward(
    qh: Tensor, kh: Tensor, vh: Tensor, allowed: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Normalised output and log-sum-exp of one block (``-inf`` rows give 0 and ``-inf``)."""
    s = _block_scores(qh, kh, allowed, scale)  # [B, H, T_r, T_s]
    row_max = s.amax(-1)  # [B, H, T_r]
    safe_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    p = torch.exp(s - safe_max[..., None])
    row_sum = p.sum(-1)  # [B, H, T_r]
    has = row_sum > 0
    denom = torch.where(has, row_sum, torch.ones_like(row_sum))
    out = (p @ vh) / denom[..., None]  # [B, H, T_r, V]
    lse = torch.where(has, safe_max + torch.log(denom), torch.full_like(row_max, float("-inf")))
    return out, lse


def _merge(out: Tensor, lse: Tensor, blk_out: Tensor, blk_lse: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two softmax partial results; ``-inf`` LSE on both sides stays ``-inf``, no NaN."""
    new = torch.logaddexp(lse, blk_lse)  # [B, H, T_r]
    safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
    a = torch.exp(lse - safe)[..., None]
    b = torch.exp(blk_lse - safe)[..., None]
    return out * a + blk_out * b, new


def _heads(x: Tensor, H: int) -> Tensor:
    """``[B, T, Hkv, K]`` -> fp32 ``[B, H, T, K]`` with GQA heads expanded."""
    return rearrange(expand_kv(x.float(), H), "b t h k -> b h t k").contiguous()


def _ring(comm: Comm) -> tuple[int, int]:
    P = comm.world_size
    return (comm.rank + 1) % P, (comm.rank - 1) % P


class _RingP2P(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, comm: Comm, plan: _Plan) -> Tensor:
        B, T_r, H, K = q.shape
        Hkv, V = k.shape[2], v.shape[3]
        sizes, rank = plan.sharding.sizes, comm.rank
        nxt, prv = _ring(comm)
        qh = rearrange(q.float(), "b t h k -> b h t k")
        out = q.new_zeros(B, H, T_r, V, dtype=torch.float32)
        lse = q.new_full((B, H, T_r), float("-inf"), dtype=torch.float32)
        kv = torch.cat([k, v], dim=-1).contiguous()  # [B, T_s, Hkv, K + V]
        for step in range(comm.world_size):
            src = (rank - step) % comm.world_size
            # start moving the next block before computing on this one
            last = step == comm.world_size - 1
            pending = (
                None if last else comm.shift_async(kv, nxt, prv, (B, sizes[src - 1], Hkv, K + V))
            )
            if not plan.skip[src]:
                kh, vh = _heads(kv[..., :K], H), _heads(kv[..., K:], H)
                for qs, ks, allowed in _tiles(plan, src):
                    blk_out, blk_lse = _block_forward(
                        qh[:, :, qs], kh[:, :, ks], vh[:, :, ks], allowed, plan.scale
                    )
                    out[:, :, qs], lse[:, :, qs] = _merge(
                        out[:, :, qs], lse[:, :, qs], blk_out, blk_lse
                    )
            if pending is not None:
                kv = pending.wait()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.comm, ctx.plan = comm, plan
        return rearrange(out, "b h t v -> b t h v").to(q.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors  # out [B, H, T_r, V], lse [B, H, T_r] (fp32)
        comm, plan = ctx.comm, ctx.plan
        B, T_r, H, K = q.shape
        Hkv, V = k.shape[2], v.shape[3]
        sizes, rank, P = plan.sharding.sizes, comm.rank, comm.world_size
        nxt, prv = _ring(comm)
        qh = rearrange(q.float(), "b t h k -> b h t k")
        do = rearrange(grad_out.float(), "b t h v -> b h t v")
        delta = (do * out).sum(-1)  # [B, H, T_r]
        safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        dq = torch.zeros_like(qh)  # [B, H, T_r, K]
        kv = torch.cat([k, v], dim=-1).contiguous()  # [B, T_s, Hkv, K + V]
        acc_pending = None
        for step in range(P):
            src = (rank - step) % P
            kv_pending = None
            if step < P - 1:
                kv_pending = comm.shift_async(kv, nxt, prv, (B, sizes[src - 1], Hkv, K + V))
            d_kv = q.new_zeros(B, sizes[src], Hkv, K + V, dtype=torch.float32)  # our share
            if not plan.skip[src]:
                kh, vh = _heads(kv[..., :K], H), _heads(kv[..., K:], H)
                dk, dv = torch.zeros_like(kh), torch.zeros_like(vh)  # [B, H, T_s, K / V]
                for qs, ks, allowed in _tiles(plan, src):
                    s = _block_scores(qh[:, :, qs], kh[:, :, ks], allowed, plan.scale)
                    p = torch.exp(s - safe_lse[:, :, qs, None])  # [B, H, tq, tk]
                    dv[:, :, ks] += p.transpose(-1, -2) @ do[:, :, qs]
                    dp = do[:, :, qs] @ vh[:, :, ks].transpose(-1, -2)  # [B, H, tq, tk]
                    ds = p * (dp - delta[:, :, qs, None]) * plan.scale
                    dq[:, :, qs] += ds @ kh[:, :, ks]
                    dk[:, :, ks] += ds.transpose(-1, -2) @ qh[:, :, qs]
                d_kv = torch.cat([_sum_groups(dk, Hkv), _sum_groups(dv, Hkv)], dim=-1)
            # the accumulator of block src arrives from the previous rank; add ours, pass it on
            if acc_pending is not None:
                d_kv = d_kv + acc_pending.wait()
            acc_pending = comm.shift_async(d_kv, nxt, prv, (B, sizes[src - 1], Hkv, K + V))
            if kv_pending is not None:
                kv = kv_pending.wait()
        assert acc_pending is not None
        d_kv = acc_pending.wait()  # after P shifts, the accumulator of our own block
        dq_out = rearrange(dq, "b h t k -> b t h k").to(q.dtype)
        return dq_out, d_kv[..., :K].to(k.dtype), d_kv[..., K:].to(v.dtype), None, None


def _sum_groups(x: Tensor, Hkv: int) -> Tensor:
    """``[B, H, T, K]`` gradients of expanded heads -> ``[B, T, Hkv, K]`` (sum over each group)."""
    return reduce(x, "b (g r) t k -> b t g k", "sum", g=Hkv)


def _allgather(q: Tensor, k: Tensor, v: Tensor, comm: Comm, plan: _Plan) -> Tensor:
    K, H = q.shape[3], q.shape[2]
    sizes = plan.sharding.sizes
    kv = comm.all_gather(torch.cat([k, v], dim=-1), dim=1, sizes=sizes)  # [B, T, Hkv, K + V]
    kh, vh = _heads(kv[..., :K], H), _heads(kv[..., K:], H)  # [B, H, T, K], [B, H, T, V]
    kpos = torch.cat(plan.kpos)  # [T] global positions in rank-concatenated key order
    allowed = plan.rows.allowed(plan.qpos, kpos)  # [T_r, T]
    s = _block_scores(rearrange(q.float(), "b t h k -> b h t k"), kh, allowed, plan.scale)
    p = torch.softmax(s, dim=-1)  # [B, H, T_r, T]
    # rows with no allowed key: softmax gives NaN; their output (and gradient) is zero
    p = torch.where(allowed.any(-1, keepdim=True), p, torch.zeros((), device=q.device))
    o = p @ vh  # [B, H, T_r, V]
    return rearrange(o, "b h t v -> b t h v").to(q.dtype)


def ring_work(sharding: Sharding, mask: Mask | str | None = None) -> list[int]:
    """Attended (query, key) pairs of every rank: the attention work each rank does.

    The p2p path computes whole non-empty blocks, so its FLOPs are at least these counts
    (equal for blocks where every pair is allowed).

    Shapes:
        returns ``P`` ints (per batch element and head).
    """
    if not isinstance(sharding, Sharding):
        raise TypeError(f"ring_work: sharding must be a Sharding, got {type(sharding).__name__}")
    m = as_mask(mask)
    T = sharding.seq_len
    per_row = m.resolve(T, T).row_counts()  # [T]
    return [int(per_row[sharding.positions(r)].sum()) for r in range(sharding.world_size)]


def ring_bytes(
    sharding: Sharding,
    *,
    batch: int,
    kv_heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    variant: Literal["p2p", "allgather"] = "p2p",
    element_size: int = 4,
    backward: bool = False,
) -> list[int]:
    """Analytic bytes each rank sends (``Comm.bytes_sent`` convention) for one call.

    ``p2p`` forward: ``P - 1`` shifts of the K/V block a rank holds (every block except the
    one of rank ``r + 1``). Backward: the same ``P - 1`` K/V shifts plus ``P`` shifts of the fp32
    dK/dV accumulators (every block once). ``allgather`` forward: the rank's K/V to each of the
    ``P - 1`` others; backward: the K/V gradient slices of the other ranks (reduce-scatter).

    Args:
        sharding: the layout.
        batch, kv_heads, head_dim: ``B``, ``Hkv``, ``K`` of k.
        v_head_dim: ``V``; ``None`` means ``head_dim``.
        variant: ``"p2p"`` or ``"allgather"``.
        element_size: bytes per element of k/v (4 for fp32, 2 for bf16).
        backward: include the backward pass.

    Shapes:
        returns ``P`` ints, bytes sent by each rank.
    """
    if variant not in VARIANTS:
        raise ValueError(f"ring_bytes: variant must be one of {VARIANTS}, got {variant!r}")
    for name, val in (("batch", batch), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"ring_bytes: {name} must be an int >= 1, got {val!r}")
    V = head_dim if v_head_dim is None else v_head_dim
    row = batch * kv_heads * (head_dim + V)  # elements of one token's K and V
    sizes, P, T = sharding.sizes, sharding.world_size, sharding.seq_len
    out = []
    for r in range(P):
        if variant == "allgather":
            fwd = (P - 1) * sizes[r] * row * element_size
            bwd = (T - sizes[r]) * row * element_size
        else:
            held = T - sizes[(r + 1) % P]  # blocks this rank forwards: all but rank r+1's
            fwd = held * row * element_size if P > 1 else 0
            bwd = fwd + (T * row * 4 if P > 1 else 0)
        out.append(fwd + (bwd if backward else 0))
    return out


# ---- the bench's strategies -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExactAttention(Strategy):
    """Exact softmax attention under a global mask, checked against the single-process op."""

    masks: tuple[str, ...] = ATTENTION_MASKS

    def reference(self, case: dict[str, Any], shape: CPShape) -> Callable[..., Tensor]:
        from attnzoo.ops.softmax import softmax_attention

        mask = case_mask(case["mask"], case["seq_len"])
        return lambda q, k, v: softmax_attention(q, k, v, mask=mask)

    def work_pairs(
        self, case: dict[str, Any], sharding: Sharding, rank: int, world_size: int
    ) -> float | None:
        """Attended pairs of this rank's queries (its shard's rows, all heads)."""
        return float(ring_work(sharding, case_mask(case["mask"], case["seq_len"]))[rank])


@dataclasses.dataclass(frozen=True)
class RingStrategy(ExactAttention):
    """Ring attention (``variant``), on zigzag shards for masked cases unless ``contiguous``."""

    variant: Literal["p2p", "allgather"] = "p2p"
    contiguous: bool = False

    def sharding_kind(self, mask: str) -> str:
        return "contiguous" if self.contiguous else super().sharding_kind(mask)

    def call(
        self, case: dict[str, Any], shape: CPShape, comm: Comm, setup: Any, sharding: Sharding
    ) -> Callable[..., Tensor]:
        mask = case_mask(case["mask"], case["seq_len"])
        return lambda q, k, v: ring_attention(
            q, k, v, comm=comm, sharding=sharding, mask=mask, variant=self.variant
        )

    def analytic_bytes(
        self, case: dict[str, Any], shape: CPShape, sharding: Sharding, rank: int
    ) -> int:
        return ring_bytes(sharding, batch=shape.batch, kv_heads=shape.heads,
                          head_dim=shape.head_dim, variant=self.variant,
                          backward=case["mode"] == "fwd+bwd")[rank]  # fmt: skip


register_strategy(RingStrategy("ring", "ring attention, P2P K/V shifts overlapped with compute; "
                               "zigzag sharding for masked (causal) cases"))  # fmt: skip
register_strategy(RingStrategy("ring-contiguous", "ring attention (P2P) on contiguous shards: no "
                               "causal load balance (the baseline that zigzag sharding fixes)",
                               contiguous=True))  # fmt: skip
register_strategy(RingStrategy("ring-allgather", "ring attention's all-gather variant: gather all "
                               "K/V, attend once", variant="allgather"))  # fmt: skip
