"""Peer cases: ours against an implementation of the same math that nobody here wrote.

A :class:`PeerCase` names a block, the peer (fla-core's pure-PyTorch references, timm's blocks)
and how to build, at one size, the two callables with the *same inputs and weights*. Cases are
declared next to what they describe, in the block's own file, with :func:`register_case`;
``attnzoo bench peers`` (:mod:`attnzoo.bench.peers`) checks, times and stores them.

:func:`forward_pair` and :func:`training_pair` build the usual two kinds of comparison of two
functions of the same tensors; :func:`randomise_biases` moves a peer module's (often zero)
biases before its weights are copied into ours.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.text import add, pick

TRAIN_TAG = "-train"  # ends the "ours" half of a case's name that times forward + backward
TRAIN_NOTE = "forward + backward (all input gradients)"


@dataclass(frozen=True)
class PeerPair:
    """Two zero-argument callables computing the same output, and what ours costs.

    ``ours``/``peer`` are what is timed, each on its own native layout; ``check`` returns the
    two outputs in one layout for the equality check (default: ``(ours(), peer())``);
    ``flops`` counts the multiply-adds (x2) our path performs; ``size`` labels the shape.
    """

    ours: Callable[[], Any]
    peer: Callable[[], Any]
    flops: int
    size: str
    check: Callable[[], tuple[Tensor, Tensor]] | None = None

    def outputs(self) -> tuple[Tensor, Tensor]:
        return self.check() if self.check is not None else (self.ours(), self.peer())


@dataclass(frozen=True)
class PeerCase:
    """One comparison. ``build(n, generator)`` returns the pair at size ``n`` (a length T for
    sequence ops, an image side for vision blocks); ``requires`` lists the peer's modules."""

    name: str
    mechanism: str
    peer: str
    requires: tuple[str, ...]
    build: Callable[[int, torch.Generator], PeerPair]
    sizes: tuple[int, ...]  # default sizes (the targets)
    quick_sizes: tuple[int, ...]
    rtol: float = 1e-4  # allowed max |ours - peer| / max |peer|
    notes: str = ""
    smoke_size: int = 64  # a small size the tests build every case at

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


CASES: dict[str, PeerCase] = {}


def register_case(case: PeerCase) -> PeerCase:
    return add(CASES, case.name, case, "register_case")


def times_training(case_name: str) -> bool:
    """Whether a case ('<ours>/<peer>', registered or only stored) timed forward + backward."""
    return case_name.split("/")[0].endswith(TRAIN_TAG)


def get_cases(names: Sequence[str] | None) -> list[PeerCase]:
    """The registered cases (every one when ``names`` is ``None``), in registration order."""
    import attnzoo.mixers  # noqa: F401  (the block files register their cases)

    return pick(CASES, names, "--cases", "peer case")


Fn = Callable[..., Tensor]


def forward_pair(ours: Fn, peer: Fn, xs: Sequence[Tensor], flops: int, size: str) -> PeerPair:
    """The forward of ``ours(*xs)`` against ``peer(*xs)``."""
    return PeerPair(ours=lambda: ours(*xs), peer=lambda: peer(*xs), flops=flops, size=size)


def training_pair(
    ours: Fn, peer: Fn, xs: Sequence[Tensor], grad: Tensor, flops: int, size: str
) -> PeerPair:
    """Forward and backward: the gradients of ``<fn(*xs), grad>`` with respect to every input.
    Compared gradient by gradient, each scaled by the peer's largest entry (so one gradient's
    scale does not hide another's error)."""
    leaves = [x.detach().clone().requires_grad_() for x in xs]

    def run(fn: Fn) -> tuple[Tensor, ...]:
        with torch.enable_grad():  # the runner times under no_grad
            return torch.autograd.grad(fn(*leaves), leaves, grad)

    def check() -> tuple[Tensor, Tensor]:
        a, b = run(ours), run(peer)
        scale = [y.abs().max().clamp_min(1e-30) for y in b]
        flat = [
            torch.cat([(t / s).flatten() for t, s in zip(z, scale, strict=True)]) for z in (a, b)
        ]
        return flat[0], flat[1]

    return PeerPair(ours=lambda: run(ours), peer=lambda: run(peer), flops=flops, size=size,
                    check=check)  # fmt: skip


def tokens_peer_pair(ours: nn.Module, theirs: nn.Module, x: Tensor, flops: int) -> PeerPair:
    """A grid block ``ours`` on channels-last ``x [B, h, w, C]`` against a peer module that takes
    the grid's row-major tokens ``[B, h*w, C]`` (a free view, made outside the timing)."""
    B, h, w, C = x.shape
    tokens = x.reshape(B, h * w, C)  # a view: no copy
    return PeerPair(
        ours=lambda: ours(x),
        peer=lambda: theirs(tokens),
        flops=flops,
        size=f"B={B} {h}x{w}x{C}",
        check=lambda: (ours(x), theirs(tokens).view(x.shape)),
    )


def randomise_biases(m: nn.Module, g: torch.Generator, std: float = 0.1) -> nn.Module:
    """Non-trivial biases (timm initialises many to zero, which would hide a bias mapping bug);
    returns ``m`` in eval mode."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return m.eval()


def peer_function(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` of a peer package, imported now (quietly: fla-core warns that Triton
    falls back to the CPU)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(module), name)


# ---- sequence ops at one shape: the linear family's cases --------------------------------------
SEQ_B, SEQ_H, SEQ_K = 1, 8, 64  # issue 4's shape: B=1, H=8, K=V=64, causal, fp32
FLA = ("fla", "triton", "packaging")


def seq_inputs(T: int, g: torch.Generator, n: int = 3) -> list[Tensor]:
    """``n`` tensors ``[B, T, H, K]`` of the sequence cases' shape, scaled by 0.5."""
    return [torch.randn(SEQ_B, T, SEQ_H, SEQ_K, generator=g) * 0.5 for _ in range(n)]


def seq_size(T: int) -> str:
    return f"B={SEQ_B} T={T} H={SEQ_H} K=V={SEQ_K}"


def seq_pair(ours: Fn, peer: Fn, xs: Sequence[Tensor], flops: int, T: int, train: bool) -> PeerPair:
    """:func:`forward_pair`, or with ``train`` a :func:`training_pair` with a fixed output
    gradient seeded by ``T``."""
    if not train:
        return forward_pair(ours, peer, xs, flops, seq_size(T))
    grad = torch.randn(SEQ_B, T, SEQ_H, SEQ_K, generator=torch.Generator().manual_seed(T))
    return training_pair(ours, peer, xs, grad, flops, seq_size(T))


def register_impl_cases(
    mechanism: str,
    peer_slug: str,
    peer: str,
    build: Callable[[int, torch.Generator, str, bool], PeerPair],
    variants: Sequence[tuple[str, bool, tuple[int, ...], tuple[int, ...]]],
    *,
    requires: tuple[str, ...] = FLA,
    notes: str = "",
    **case: Any,
) -> None:
    """One case per ``(impl, train, sizes, quick_sizes)`` variant, named
    ``<mechanism>[-<impl>][-train]/<peer_slug>`` (``chunk`` is the untagged eager path);
    ``build(T, generator, impl, train)`` makes the pair."""
    for impl, train, sizes, quick in variants:
        tag = ("" if impl == "chunk" else f"-{impl}") + (TRAIN_TAG if train else "")
        text = "; ".join(filter(None, ("" if impl == "chunk" else f"ours: impl={impl!r}",
                                       TRAIN_NOTE if train else "", notes)))  # fmt: skip

        def make(T: int, g: torch.Generator, impl: str = impl, train: bool = train) -> PeerPair:
            return build(T, g, impl, train)

        register_case(PeerCase(f"{mechanism}{tag}/{peer_slug}", mechanism, peer, requires, make,
                               sizes, quick, notes=text, **case))  # fmt: skip
