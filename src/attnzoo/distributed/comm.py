"""Differentiable collectives over a process group, counting the bytes this rank sends.

Byte convention (``Comm.bytes_sent``): the payload bytes (``element_size * numel``) that leave
this rank for *other* ranks, as logical messages; a piece a rank keeps for itself is free.

- ``all_gather``: this rank's tensor goes to each of the other ``P - 1`` ranks.
- its backward (a reduce-scatter): the gradient slice of every other rank goes to that rank.
- ``all_to_all``: every piece except the one addressed to this rank.
- ``send_recv`` / ``shift_async``: the whole tensor, unless sent to this rank itself.
- ``all_reduce`` (sum) is costed as a reduce-scatter followed by an all-gather over
  ``torch.tensor_split(x.flatten(), P)``: ``2 * (numel - chunk_rank)`` elements, where
  ``chunk_rank`` is this rank's chunk (bandwidth-optimal ring all-reduce).

Backward passes count into the same ``Comm``. Collectives that are not on the autograd tape
(``shift_async``) do not differentiate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class Comm:
    """A process group plus a counter of the bytes this rank sends.

    Args:
        group: a ``torch.distributed`` process group; ``None`` means the default (WORLD) group.

    Attributes:
        group: the wrapped group (``None`` for WORLD).
        rank: this process's rank inside ``group``.
        world_size: number of ranks in ``group``.
        bytes_sent: bytes sent by this rank so far (see the module docstring).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "Comm: torch.distributed is not initialised; use run_workers or init_from_env"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.bytes_sent = 0

    def reset(self) -> None:
        """Set ``bytes_sent`` back to zero."""
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world_size={self.world_size}, bytes_sent={self.bytes_sent})"

    # ---- differentiable collectives -----------------------------------------------------
    def all_gather(self, x: Tensor, dim: int, sizes: Sequence[int] | None = None) -> Tensor:
        """Concatenate every rank's ``x`` along ``dim`` (rank order). Backward: reduce-scatter.

        Args:
            x: this rank's piece.
            dim: the dimension to concatenate along.
            sizes: ``x.shape[dim]`` of every rank when they differ; ``None`` means all equal.

        Shapes:
            x ``[..., n_r, ...]`` -> ``[..., sum_r n_r, ...]``; other dims equal on all ranks.
        """
        dim = _check_dim("all_gather", x, dim)
        sizes = self._sizes("all_gather", "sizes", sizes, x.shape[dim])
        return _AllGather.apply(x, self, dim, sizes)

    def all_to_all(
        self,
        x: Tensor,
        scatter_dim: int,
        gather_dim: int,
        *,
        scatter_sizes: Sequence[int] | None = None,
        gather_sizes: Sequence[int] | None = None,
    ) -> Tensor:
        """Send piece ``r`` of ``x`` (split along ``scatter_dim``) to rank ``r``; concatenate the
        received pieces along ``gather_dim`` in rank order. Backward: the reverse all-to-all.

        Args:
            x: this rank's tensor.
            scatter_dim, gather_dim: different dimensions of ``x``.
            scatter_sizes: piece sizes along ``scatter_dim`` (one per destination rank, the
                same list on every rank); ``None`` splits ``x.shape[scatter_dim]`` evenly.
            gather_sizes: size along ``gather_dim`` of each source rank's piece;
                ``None`` means every rank has ``x.shape[gather_dim]``.

        Shapes:
            x ``[..., sum(scatter_sizes) @scatter, ..., g_r @gather, ...]`` ->
            ``[..., scatter_sizes[rank] @scatter, ..., sum(gather_sizes) @gather, ...]``
        """
        scatter_dim = _check_dim("all_to_all", x, scatter_dim)
        gather_dim = _check_dim("all_to_all", x, gather_dim)
        if scatter_dim == gather_dim:
            raise ValueError(
                f"all_to_all: scatter_dim and gather_dim must differ, got {scatter_dim} for both"
            )
        n, P = x.shape[scatter_dim], self.world_size
        if scatter_sizes is None:
            if n % P != 0:
                raise ValueError(
                    f"all_to_all: x.shape[{scatter_dim}]={n} is not divisible by world_size={P}; "
                    "pass scatter_sizes for an uneven split"
                )
            scatter_sizes = [n // P] * P
        scatter_sizes = self._sizes("all_to_all", "scatter_sizes", scatter_sizes, None)
        if sum(scatter_sizes) != n:
            raise ValueError(
                f"all_to_all: scatter_sizes {scatter_sizes} sum to {sum(scatter_sizes)} but "
                f"x.shape[{scatter_dim}]={n}"
            )
        gather_sizes = self._sizes("all_to_all", "gather_sizes", gather_sizes, x.shape[gather_dim])
        return _AllToAll.apply(x, self, scatter_dim, gather_dim, scatter_sizes, gather_sizes)

    def send_recv(self, x: Tensor, to: int, frm: int, shape: Sequence[int] | None = None) -> Tensor:
        """Send ``x`` to rank ``to`` and receive a tensor from rank ``frm`` (a ring shift when
        every rank calls it with ``to = rank + 1``). Backward shifts the gradient the other way.

        Args:
            x: the tensor to send.
            to, frm: destination and source ranks within the group.
            shape: shape of the received tensor; ``None`` means ``x.shape``.

        Shapes:
            x ``[*]`` -> ``shape`` (default ``x.shape``)
        """
        return _SendRecv.apply(x, self, to, frm, self._recv_shape(x, shape))

    def send(self, x: Tensor, to: int) -> Tensor:
        """Blocking one-way send of ``x`` to rank ``to``; returns a zero scalar to add to
        something the loss depends on, so that autograd reaches the send. Backward: receives
        ``x``'s gradient from ``to`` (which calls :meth:`recv_like`).

        Shapes:
            x ``[*]`` -> ``[]`` (zero)
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"send: x must be a torch.Tensor, got {type(x).__name__}")
        return _Send.apply(x, self, self._peer("to", to))

    def recv_like(self, like: Tensor, frm: int) -> Tensor:
        """Blocking receive from rank ``frm`` of a tensor shaped like ``like`` (which only
        anchors the autograd node). Backward: sends the gradient back to ``frm``.

        Shapes:
            like ``[*]`` -> ``[*]``
        """
        if not isinstance(like, Tensor):
            raise TypeError(f"recv_like: like must be a torch.Tensor, got {type(like).__name__}")
        return _Recv.apply(like, self, self._peer("frm", frm))

    def all_reduce(self, x: Tensor) -> Tensor:
        """Sum of ``x`` over all ranks. Backward: the all-reduce (sum) of the gradient.

        Shapes:
            x ``[*]`` -> ``[*]``
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"all_reduce: x must be a torch.Tensor, got {type(x).__name__}")
        return _AllReduce.apply(x, self)

    # ---- non-differentiable async primitive ---------------------------------------------
    def shift_async(
        self, x: Tensor, to: int, frm: int, shape: Sequence[int] | None = None
    ) -> Pending:
        """Start sending ``x`` to ``to`` and receiving from ``frm``; ``.wait()`` gives the
        received tensor. Use it to overlap communication with compute (not differentiable).

        Shapes:
            x ``[*]`` -> ``.wait()`` returns ``shape`` (default ``x.shape``)
        """
        recv_shape = self._recv_shape(x, shape)
        to, frm = self._peer("to", to), self._peer("frm", frm)
        x = x.detach().contiguous()
        out = x.new_empty(recv_shape)
        if to == self.rank and frm == self.rank:
            if tuple(recv_shape) != tuple(x.shape):
                raise ValueError(
                    f"shift_async: sending to itself, but shape={tuple(recv_shape)} differs from "
                    f"x.shape={tuple(x.shape)}"
                )
            return Pending(x.clone(), [])
        if to == self.rank or frm == self.rank:
            raise ValueError(
                f"shift_async: rank {self.rank} sends to {to} and receives from {frm}; either both "
                "or neither must be this rank"
            )
        ops = [
            dist.P2POp(dist.isend, x, self._global(to), group=self.group),
            dist.P2POp(dist.irecv, out, self._global(frm), group=self.group),
        ]
        self.bytes_sent += x.numel() * x.element_size()
        return Pending(out, dist.batch_isend_irecv(ops), keep=x)

    # ---- helpers --------------------------------------------------------------------------
    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def _peer(self, name: str, r: int) -> int:
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < self.world_size:
            raise ValueError(f"Comm: {name} must be a rank in [0, {self.world_size}), got {r!r}")
        return r

    def _recv_shape(self, x: Tensor, shape: Sequence[int] | None) -> tuple[int, ...]:
        if not isinstance(x, Tensor):
            raise TypeError(f"Comm: x must be a torch.Tensor, got {type(x).__name__}")
        if shape is None:
            return tuple(x.shape)
        shape = tuple(shape)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise ValueError(f"Comm: shape must be a sequence of ints >= 0, got {shape!r}")
        return shape

    def _sizes(
        self, op: str, name: str, sizes: Sequence[int] | None, default: int | None
    ) -> list[int]:
        if sizes is None:
            assert default is not None
            return [default] * self.world_size
        sizes = list(sizes)
        if len(sizes) != self.world_size or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes
        ):
            raise ValueError(
                f"{op}: {name} must be {self.world_size} ints >= 0 (one per rank), got {sizes!r}"
            )
        if default is not None and sizes[self.rank] != default:
            raise ValueError(
                f"{op}: {name}[{self.rank}]={sizes[self.rank]} but this rank's tensor has "
                f"{default} along that dim"
            )
        return sizes


class Pending:
    """A started :meth:`Comm.shift_async`; :meth:`wait` returns the received tensor."""

    def __init__(self, out: Tensor, works: list[Any], keep: Tensor | None = None) -> None:
        self._out, self._works, self._keep = out, works, keep

    def wait(self) -> Tensor:
        for w in self._works:
            w.wait()
        self._works, self._keep = [], None
        return self._out


def _check_dim(op: str, x: Tensor, dim: int) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{op}: dim {dim!r} is out of range for a tensor with {x.dim()} dims")
    return dim % x.dim()


def _all_to_all(
    comm: Comm,
    x: Tensor,
    scatter_dim: int,
    gather_dim: int,
    scatter_sizes: list[int],
    gather_sizes: list[int],
) -> Tensor:
    """Plain (non-differentiable) all-to-all; counts the bytes of the pieces sent to others."""
    P, rank = comm.world_size, comm.rank
    pieces = torch.split(x, scatter_sizes, dim=scatter_dim)
    send = torch.cat([p.movedim(gather_dim, 0).reshape(-1) for p in pieces])  # [numel]
    # piece from rank s: x's shape with scatter dim -> scatter_sizes[rank], gather dim -> g_s
    shapes = []
    for g in gather_sizes:
        s = list(x.shape)
        s[scatter_dim], s[gather_dim] = scatter_sizes[rank], g
        shapes.append(s)
    in_splits = [p.numel() for p in pieces]
    out_splits = [int(torch.Size(s).numel()) for s in shapes]
    recv = x.new_empty(sum(out_splits))
    if P == 1:
        recv.copy_(send)
    else:
        dist.all_to_all_single(
            recv, send, output_split_sizes=out_splits, input_split_sizes=in_splits, group=comm.group
        )
    comm.bytes_sent += (send.numel() - in_splits[rank]) * x.element_size()
    received = []
    for flat, s in zip(torch.split(recv, out_splits), shapes, strict=True):
        moved = [s[gather_dim]] + [n for d, n in enumerate(s) if d != gather_dim]
        received.append(flat.reshape(moved).movedim(0, gather_dim))
    return torch.cat(received, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        comm: Comm,
        scatter_dim: int,
        gather_dim: int,
        scatter_sizes: list[int],
        gather_sizes: list[int],
    ) -> Tensor:
        ctx.cfg = (comm, scatter_dim, gather_dim, scatter_sizes, gather_sizes)
        return _all_to_all(comm, x, scatter_dim, gather_dim, scatter_sizes, gather_sizes)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        comm, sd, gd, ss, gs = ctx.cfg
        return _all_to_all(comm, g.contiguous(), gd, sd, gs, ss), None, None, None, None, None


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, comm: Comm, dim: int, sizes: list[int]) -> Tensor:
        ctx.cfg = (comm, dim, sizes)
        return _gather(comm, x, dim, sizes)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        comm, dim, sizes = ctx.cfg
        return _reduce_scatter(comm, g.contiguous(), dim, sizes), None, None, None


def _gather(comm: Comm, x: Tensor, dim: int, sizes: list[int]) -> Tensor:
    """All-gather as an all-to-all of ``P`` copies (works for uneven sizes, exact byte count)."""
    P = comm.world_size
    mine = x.movedim(dim, 0).contiguous()  # [n_rank, *rest]
    rest = mine.shape[1:]
    send = torch.cat([mine.reshape(-1)] * P)
    out_splits = [n * rest.numel() for n in sizes]
    recv = x.new_empty(sum(out_splits))
    if P == 1:
        recv.copy_(send)
    else:
        dist.all_to_all_single(
            recv,
            send,
            output_split_sizes=out_splits,
            input_split_sizes=[mine.numel()] * P,
            group=comm.group,
        )
    comm.bytes_sent += (P - 1) * mine.numel() * x.element_size()
    return recv.reshape(sum(sizes), *rest).movedim(0, dim)


def _reduce_scatter(comm: Comm, g: Tensor, dim: int, sizes: list[int]) -> Tensor:
    P, rank = comm.world_size, comm.rank
    moved = g.movedim(dim, 0).contiguous()  # [sum n, *rest]
    rest = moved.shape[1:]
    send = moved.reshape(-1)
    in_splits = [n * rest.numel() for n in sizes]
    recv = g.new_empty(P * in_splits[rank])
    if P == 1:
        recv.copy_(send)
    else:
        dist.all_to_all_single(
            recv,
            send,
            output_split_sizes=[in_splits[rank]] * P,
            input_split_sizes=in_splits,
            group=comm.group,
        )
    comm.bytes_sent += (send.numel() - in_splits[rank]) * g.element_size()
    summed = recv.reshape(P, sizes[rank], *rest).sum(0)  # [n_rank, *rest]
    return summed.movedim(0, dim)


class _SendRecv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, comm: Comm, to: int, frm: int, shape: tuple[int, ...]
    ) -> Tensor:
        ctx.cfg = (comm, to, frm, tuple(x.shape))
        return comm.shift_async(x, to, frm, shape).wait()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        comm, to, frm, shape = ctx.cfg
        return comm.shift_async(g, frm, to, shape).wait(), None, None, None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, comm: Comm) -> Tensor:
        ctx.comm = comm
        return _all_reduce(comm, x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        return _all_reduce(ctx.comm, g), None


def _all_reduce(comm: Comm, x: Tensor) -> Tensor:
    out = x.detach().clone().contiguous()
    if comm.world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=comm.group)
        n, P = x.numel(), comm.world_size
        mine = n // P + (1 if comm.rank < n % P else 0)  # torch.tensor_split's chunk sizes
        comm.bytes_sent += 2 * (n - mine) * x.element_size()
    return out


class _Send(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, comm: Comm, to: int) -> Tensor:
        x = x.detach().contiguous()
        dist.send(x, comm._global(to), group=comm.group)
        comm.bytes_sent += x.numel() * x.element_size()
        ctx.cfg = (comm, to, x.shape, x.dtype, x.device)
        return x.new_zeros(())

    @staticmethod
    def backward(ctx: Any, _unused: Tensor) -> tuple[Tensor | None, ...]:
        comm, to, shape, dtype, device = ctx.cfg
        g = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(g, comm._global(to), group=comm.group)
        return g, None, None


class _Recv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, like: Tensor, comm: Comm, frm: int) -> Tensor:
        out = torch.empty_like(like, memory_format=torch.contiguous_format)
        dist.recv(out, comm._global(frm), group=comm.group)
        ctx.cfg = (comm, frm)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        comm, frm = ctx.cfg
        g = g.contiguous()
        dist.send(g, comm._global(frm), group=comm.group)
        comm.bytes_sent += g.numel() * g.element_size()
        return None, None, None
