"""State passing: the linear-attention family (linear attention, with or without a per-head decay,
and gated linear attention) on a sequence sharded over ranks.

Every member of the family is a linear recurrence on a ``[K, V]`` state per head,
``S_t = diag(a_t) S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``. Cut the sequence into
contiguous shards, one per rank. The output of a token in shard ``r`` splits exactly into

- the *local* part: the single-process op run on shard ``r`` alone, from a zero state;
- the *incoming* part: ``scale * (q_t * A_t) S_in(r)``, where ``S_in(r)`` is the state at the end
  of shard ``r - 1`` and ``A_t`` the decay from the start of shard ``r`` up to and including ``t``.

Each rank computes its shard's own final state ``S_r = sum_s (A_end / A_s) k_s^T v_s`` and its
total decay ``A_r`` (in log space), then the ranks combine
``S_in(r + 1) = A_r * S_in(r) + S_r`` with ``S_in(0) = 0``:

- ``combine="sequential"``: rank ``r`` receives ``S_in(r)`` from ``r - 1``, adds its decayed
  contribution and sends to ``r + 1`` (``P - 1`` messages of one state, on the critical path);
- ``combine="allgather"``: every rank all-gathers every ``(S_r, log A_r)`` and runs the short
  prefix over ranks before it locally (``O(P)`` states of memory, one collective).

Decays: ``1`` for plain linear attention, ``lambda_h^n = exp(n * decay_h)`` with a per-head
decay (Lightning's), ``exp(sum of gk)`` per key channel for the gated kind (GLA's). Only exponents ``<= 0`` are ever exponentiated:
GLA's ``A_end / A_s`` is ``exp`` of a suffix sum of the gates after ``s`` (no difference of two
long cumulative sums), ``A_t`` is ``exp`` of a cumulative sum from the shard start.

With ``normalize=True`` (linear attention's ``o / (z + eps)``) the normaliser state
``sum_s k_s`` travels as an extra value column, and the division happens after the correction.
Non-causal plain linear attention needs no order: the ranks all-reduce ``sum_s k_s^T v_s``.

Communication goes through :class:`~attnzoo.distributed.comm.Comm`, whose operations are
differentiable, so the result trains: gradients of the states flow back to the ranks that made
them. Replicated parameters (a ``decay``) receive per-rank partial gradients that sum,
over ranks, to the single-process gradient (the usual data/context-parallel all-reduce).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from attnzoo.distributed.comm import Comm
from attnzoo.distributed.shard import Sharding
from attnzoo.ops.common import check_impl, check_qkv, expand_kv, resolve_scale
from attnzoo.ops.gla import IMPLS as GLA_IMPLS
from attnzoo.ops.gla import gated_linear_attention
from attnzoo.ops.linear import EPS, linear_attention
from attnzoo.ops.linear import IMPLS as LINEAR_IMPLS

OP = "linear_state_passing"
# the op kinds: linear attention (with a per-head decay or none) and gated linear attention
KINDS = ("linear", "gated")
# the first version named the kinds by mechanism; what replaced each
RENAMED = {"lightning": "kind='linear' with decay=", "gla": "kind='gated' with gk="}
COMBINES = ("sequential", "allgather")
Kind = Literal["linear", "gated"]
Combine = Literal["sequential", "allgather"]


def linear_state_passing(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    comm: Comm,
    kind: Kind,
    decay: Tensor | None = None,
    gk: Tensor | None = None,
    scale: float | None = None,
    causal: bool = True,
    normalize: bool = False,
    eps: float = EPS,
    sharding: Sharding | None = None,
    combine: Combine = "allgather",
    impl: str = "auto",
    chunk_size: int = 64,
) -> Tensor:
    """The linear family on this rank's contiguous shard, exact w.r.t. the whole sequence.

    Args:
        q, k, v: this rank's shard (feature maps already applied, as for
            :func:`~attnzoo.ops.linear.linear_attention`). Shard ``r`` holds the tokens right
            after shard ``r - 1``'s; lengths may differ between ranks.
        comm: the communicator of the sequence-parallel group.
        kind: ``"linear"`` (:func:`~attnzoo.ops.linear.linear_attention`, with a per-head
            ``decay`` as Lightning's, or none) or ``"gated"``
            (:func:`~attnzoo.ops.gla.gated_linear_attention` with log gates ``gk``, as GLA's).
            The first version's ``"lightning"`` and ``"gla"`` raise, naming these.
        decay: per-head log decay ``log(lambda_h) <= 0`` ``[H]``, replicated (causal linear).
        gk: log forget gates for this shard, the shape of ``k`` (the gated kind).
        scale: score scale; ``None`` means the op's default (``1`` for linear, ``1/sqrt(K)``
            for gated).
        causal: ``False`` only for ``kind="linear"`` without decay (all keys of the sequence).
        normalize: the linear kind's normaliser ``o / (z + eps)`` (non-negative features).
        eps: the normaliser's epsilon.
        sharding: optional; if given it must be a contiguous sharding whose shard for this rank
            has ``q``'s length (zigzag or striped shards break the recurrence's order).
        combine: ``"allgather"`` or ``"sequential"`` (see the module docstring).
        impl, chunk_size: passed to the single-process op.

    Shapes:
        q ``[B, T_r, H, K]``, k ``[B, T_r, Hkv, K]``, v ``[B, T_r, Hkv, V]``, decay ``[H]``,
        gk ``[B, T_r, H, K]`` -> ``[B, T_r, H, V]`` (this rank's tokens)
    """
    H, K = _check(q, k, v, kind, decay, gk, causal, normalize, eps, combine, impl)
    _check_sharding(sharding, comm, q.shape[1])
    if kind == "gated":
        assert gk is not None  # checked
        scale_ = resolve_scale(OP, scale, K)
        o = gated_linear_attention(q, k, v, gk, scale=scale_, impl=impl, chunk_size=chunk_size)
        state, log_a = _gla_shard_state(k, v, gk)
        s_in = _incoming(state, log_a, comm, combine)
        return o + torch.einsum("bthk,bhkv->bthv", _gla_query_decay(q, gk) * scale_, s_in)
    scale_ = resolve_scale(OP, 1.0 if scale is None else scale, K)
    decay = None if decay is None else decay.to(q.dtype)  # e.g. a float64 slopes buffer
    k, v = expand_kv(k, H), expand_kv(v, H)  # [B, T_r, H, K], [B, T_r, H, V]
    V = v.shape[-1]
    if normalize:  # the normaliser is the same sum over a column of ones
        v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # [B, T_r, H, V + 1]
    if not causal:
        kv = comm.all_reduce(torch.einsum("bshk,bshv->bhkv", k, v))  # [B, H, K, V(+1)]
        o = torch.einsum("bthk,bhkv->bthv", q, kv) * scale_
    else:
        o = linear_attention(
            q, k, v, causal=True, decay=decay, scale=scale_, impl=impl, chunk_size=chunk_size
        )  # [B, T_r, H, V(+1)]
        state, log_a = _linear_shard_state(k, v, decay)
        s_in = _incoming(state, log_a, comm, combine)
        o = o + torch.einsum("bthk,bhkv->bthv", _linear_query_decay(q, decay) * scale_, s_in)
    if normalize:
        return o[..., :V] / (o[..., V:] + eps)
    return o  # [B, T_r, H, V]


def state_passing_bytes(
    world_size: int,
    *,
    batch: int,
    num_heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    kind: Kind,
    decay: bool = False,
    combine: Combine = "allgather",
    causal: bool = True,
    normalize: bool = False,
    element_size: int = 4,
    backward: bool = False,
) -> list[int]:
    """Analytic bytes each rank sends for one call (the ``Comm.bytes_sent`` convention);
    ``decay``: the linear kind runs with a per-head decay.

    One state is ``n = B·H·K·V'`` elements (``V' = V + 1`` with the normaliser).

    - ``allgather``: a rank's packet (its state, plus its log total decay: ``[H]`` for the
      linear kind with ``decay``, ``[B, H, K]`` for the gated kind) goes to the ``P - 1``
      others; the backward (reduce-scatter) sends as much.
    - ``sequential``: every rank but the last sends one state forward; every rank but the first
      sends one state gradient back.
    - non-causal linear attention all-reduces one state: ``2 (n - n_r)`` elements each way,
      ``n_r`` this rank's ``torch.tensor_split`` chunk.

    Shapes:
        returns ``world_size`` ints, bytes sent by each rank.
    """
    _check_kind("state_passing_bytes", kind)
    if combine not in COMBINES:
        raise ValueError(f"state_passing_bytes: combine must be one of {COMBINES}, got {combine!r}")
    P, B, H, K = world_size, batch, num_heads, head_dim
    V = (head_dim if v_head_dim is None else v_head_dim) + (1 if normalize else 0)
    n = B * H * K * V
    out = []
    for r in range(P):
        if P == 1:
            fwd = bwd = 0
        elif not causal:
            mine = n // P + (1 if r < n % P else 0)
            fwd = bwd = 2 * (n - mine)
        elif combine == "sequential":
            fwd, bwd = (n if r < P - 1 else 0), (n if r > 0 else 0)
        else:
            packet = n + (B * H * K if kind == "gated" else H if decay else 0)
            fwd = bwd = (P - 1) * packet
        out.append(element_size * (fwd + (bwd if backward else 0)))
    return out


# ---- the pieces of one shard ----------------------------------------------------------------
def _linear_shard_state(k: Tensor, v: Tensor, decay: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Shard's final state ``sum_j lambda^(T_r - 1 - j) k_j^T v_j`` and log total decay.

    Shapes: k ``[B, T_r, H, K]``, v ``[B, T_r, H, V]``, decay ``[H]`` -> ``[B, H, K, V]``, ``[H]``
    """
    T = k.shape[1]
    if decay is None:
        return torch.einsum("bthk,bthv->bhkv", k, v), None
    steps = torch.arange(T - 1, -1, -1, device=k.device, dtype=k.dtype)  # [T_r]: T_r - 1 - j
    w = torch.exp(decay[None, :] * steps[:, None])  # [T_r, H]
    return torch.einsum("bthk,th,bthv->bhkv", k, w, v), decay * T


def _linear_query_decay(q: Tensor, decay: Tensor | None) -> Tensor:
    """``q_t * lambda^(j + 1)``: the entering state has decayed ``j + 1`` times at local ``j``.

    Shapes: q ``[B, T_r, H, K]``, decay ``[H]`` -> ``[B, T_r, H, K]``
    """
    if decay is None:
        return q
    steps = torch.arange(1, q.shape[1] + 1, device=q.device, dtype=q.dtype)  # [T_r]
    w = torch.exp(decay[None, :] * steps[:, None])  # [T_r, H]
    return q * w[None, :, :, None]


def _gla_shard_state(k: Tensor, v: Tensor, gk: Tensor) -> tuple[Tensor, Tensor]:
    """Shard's final state ``sum_j exp(sum_{i>j} gk_i) k_j^T v_j`` and its log total decay.

    The suffix sums are a reversed cumulative sum shifted by one: no cancellation.

    Shapes: k, gk ``[B, T_r, H, K]``, v ``[B, T_r, H, V]`` -> ``[B, H, K, V]``, ``[B, H, K]``
    """
    suffix = gk.flip(1).cumsum(1).flip(1)  # [B, T_r, H, K]: sum_{i >= j} gk_i
    after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)  # sum_{i > j}
    state = torch.einsum("bthk,bthv->bhkv", k * torch.exp(after), v)  # [B, H, K, V]
    return state, gk.sum(1)


def _gla_query_decay(q: Tensor, gk: Tensor) -> Tensor:
    """``q_t * exp(sum_{start <= i <= t} gk_i)``. Shapes: q, gk ``[B, T_r, H, K]`` -> same."""
    return q * torch.exp(gk.cumsum(1))


def _decayed(state: Tensor, log_a: Tensor | None) -> Tensor:
    """``A * state`` for a log decay ``[H]`` (per head) or ``[B, H, K]`` (per key channel)."""
    if log_a is None:
        return state
    if log_a.dim() == 1:
        return state * torch.exp(log_a)[None, :, None, None]
    return state * torch.exp(log_a)[..., None]


def prefix_states(states: list[Tensor], log_as: list[Tensor | None]) -> list[Tensor]:
    """States entering each shard: ``S_in(0) = 0``, ``S_in(r + 1) = A_r S_in(r) + S_r``.

    Shapes: states ``P x [B, H, K, V]``, log_as ``P x ([H] | [B, H, K] | None)``
        -> ``P x [B, H, K, V]``
    """
    out = [torch.zeros_like(states[0])]
    for state, log_a in zip(states[:-1], log_as[:-1], strict=True):
        out.append(_decayed(out[-1], log_a) + state)
    return out


# ---- combining across ranks -----------------------------------------------------------------
def _incoming(state: Tensor, log_a: Tensor | None, comm: Comm, combine: str) -> Tensor:
    """The state entering this rank's shard. Shapes: state ``[B, H, K, V]`` -> same."""
    if comm.world_size == 1:
        return torch.zeros_like(state)
    if combine == "sequential":
        s_in, tie = _sequential(state, log_a, comm)
        return s_in + tie  # the zero scalar keeps the send on the autograd tape
    # one packet per rank: the flattened state, then the flattened log decay
    parts = [state.reshape(-1)] + ([] if log_a is None else [log_a.reshape(-1)])
    every = comm.all_gather(torch.cat(parts)[None], dim=0)  # [P, n_state (+ n_log)]
    n = state.numel()
    states = list(every[:, :n].reshape(-1, *state.shape).unbind(0))  # P x [B, H, K, V]
    if log_a is None:
        log_as: list[Tensor | None] = [None] * comm.world_size
    else:
        log_as = list(every[:, n:].reshape(-1, *log_a.shape).unbind(0))
    s_in = prefix_states(states[: comm.rank + 1], log_as[: comm.rank + 1])[comm.rank]
    # rank 0 reads no packet; every rank's backward must still join the reduce-scatter
    return _Depend.apply(s_in, every)


class _Depend(torch.autograd.Function):
    """Identity on ``x`` that puts ``anchor`` on the tape (zero gradient), so a collective whose
    result was not used still runs its backward on every rank."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, anchor: Tensor) -> Tensor:
        ctx.anchor = (anchor.shape, anchor.dtype, anchor.device)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        shape, dtype, device = ctx.anchor
        return g, torch.zeros(shape, dtype=dtype, device=device)


def _sequential(state: Tensor, log_a: Tensor | None, comm: Comm) -> tuple[Tensor, Tensor]:
    """Receive ``S_in`` from ``rank - 1``, send ``A S_in + S_r`` to ``rank + 1``.

    Returns the incoming state and a zero scalar tied to the send: the caller adds it to its
    output so that autograd reaches the send, whose backward receives the state's gradient from
    ``rank + 1`` (before the receive's backward passes the gradient on to ``rank - 1``).
    """
    P, r = comm.world_size, comm.rank
    if r == 0:
        s_in = torch.zeros_like(state)
    else:
        s_in = comm.recv_like(state, r - 1)  # state only anchors the autograd node
    if r == P - 1:
        return s_in, state.new_zeros(())
    return s_in, comm.send(_decayed(s_in, log_a) + state, r + 1)


# ---- checks ---------------------------------------------------------------------------------
def _check(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kind: str,
    decay: Tensor | None,
    gk: Tensor | None,
    causal: bool,
    normalize: bool,
    eps: float,
    combine: str,
    impl: str,
) -> tuple[int, int]:
    _check_kind(OP, kind)
    if combine not in COMBINES:
        raise ValueError(
            f"{OP}: combine must be one of {', '.join(map(repr, COMBINES))}, got {combine!r}"
        )
    check_impl(OP, impl, GLA_IMPLS if kind == "gated" else LINEAR_IMPLS)
    _, T, S, H, Hkv, K = check_qkv(OP, q, k, v)
    if S != T:
        raise ValueError(f"{OP}: k/v length S={S} must equal the q length T={T} on every rank")
    for name, value in (("causal", causal), ("normalize", normalize)):
        if not isinstance(value, bool):
            raise TypeError(f"{OP}: {name} must be a bool, got {value!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"{OP}: eps must be a finite float >= 0, got {eps!r}")
    if not causal and (kind != "linear" or decay is not None):
        raise ValueError(
            f"{OP}: causal=False is only supported for kind='linear' without decay, got "
            f"kind={kind!r}" + (" with a decay" if decay is not None else "")
        )
    if decay is not None:
        if kind != "linear":
            raise ValueError(f"{OP}: decay is only for kind='linear', got it with kind={kind!r}")
        if not isinstance(decay, Tensor) or tuple(decay.shape) != (H,):
            got = tuple(decay.shape) if isinstance(decay, Tensor) else decay
            raise ValueError(f"{OP}: decay must have shape [H]=[{H}], got {got}")
    if kind == "gated":
        if not isinstance(gk, Tensor) or gk.shape != k.shape:
            got = tuple(gk.shape) if isinstance(gk, Tensor) else gk
            raise ValueError(
                f"{OP}: kind='gated' needs gk of k's shape {tuple(k.shape)}, got {got}"
            )
        if Hkv != H:
            raise ValueError(f"{OP}: kind='gated' needs k/v heads {Hkv} equal to q heads {H}")
        if normalize:
            raise ValueError(f"{OP}: normalize=True is not defined for kind='gated'")
    elif gk is not None:
        raise ValueError(f"{OP}: gk is only for kind='gated', got it with kind={kind!r}")
    return H, K


def _check_kind(op: str, kind: str) -> None:
    if kind in RENAMED:
        raise ValueError(f"{op}: kind={kind!r} is now {RENAMED[kind]} (kinds name the op)")
    if kind not in KINDS:
        raise ValueError(f"{op}: kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")


def _check_sharding(sharding: Sharding | None, comm: Comm, T_local: int) -> None:
    if not isinstance(comm, Comm):
        raise TypeError(
            f"{OP}: comm must be an attnzoo.distributed.Comm, got {type(comm).__name__}"
        )
    if sharding is None:
        return
    if not isinstance(sharding, Sharding):
        raise TypeError(f"{OP}: sharding must be a Sharding or None, got {type(sharding).__name__}")
    if sharding.kind != "contiguous":
        raise ValueError(
            f"{OP}: sharding.kind must be 'contiguous' (a recurrence runs in token order), "
            f"got {sharding.kind!r}"
        )
    if sharding.world_size != comm.world_size:
        raise ValueError(
            f"{OP}: sharding.world_size={sharding.world_size} but comm.world_size={comm.world_size}"
        )
    n = sharding.local_len(comm.rank)
    if n != T_local:
        raise ValueError(
            f"{OP}: rank {comm.rank} holds {n} tokens under {sharding} but q has {T_local}"
        )
