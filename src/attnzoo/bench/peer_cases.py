"""The registered peer comparisons (see :mod:`attnzoo.bench.peers`).

Linear family vs fla-core's pure-PyTorch references, at the shape of issue 4 (B=1, H=8,
K=V=64, causal, fp32): the same inputs, conventions converted as in the tests (fla's ``scale``
multiplies q; its simple-GLA ``g`` is the per-step log decay, i.e. Lightning's ``-slope``
broadcast over time). fla has no naive *chunked* GLA, so GLA is compared with its naive
recurrence (the same math, a different schedule: say so when quoting the ratio).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnzoo.bench.peers import TRAIN_TAG, PeerCase, PeerPair, register_case
from attnzoo.ops.chunks import chunk_flops
from attnzoo.ops.gla import gated_linear_attention
from attnzoo.ops.linear import linear_attention

B, H, K = 1, 8, 64
CHUNK = 64
FLA = ("fla", "triton", "packaging")


def _qkv(T: int, g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(B, T, H, K, generator=g) * 0.5 for _ in range(3)]


def _fla(module: str, name: str):  # noqa: ANN202
    import importlib
    import warnings

    with warnings.catch_warnings():  # "Triton is not supported on current platform"
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(module), name)


Fn = Callable[..., torch.Tensor]


def _pair(ours: Fn, peer: Fn, xs: list[torch.Tensor], flops: int, T: int) -> PeerPair:
    """The forward of ``ours(*xs)`` against ``peer(*xs)``."""
    return PeerPair(ours=lambda: ours(*xs), peer=lambda: peer(*xs), flops=flops, size=_size(T))


def _train(ours: Fn, peer: Fn, xs: list[torch.Tensor], flops: int, T: int) -> PeerPair:
    """Forward and backward: the gradients of ``<fn(*xs), do>`` for one fixed ``do`` with respect
    to every input. Compared gradient by gradient, each scaled by the peer's largest entry (so
    one gradient's scale does not hide another's error)."""
    do = torch.randn(B, T, H, K, generator=torch.Generator().manual_seed(T))  # V = K here
    leaves = [x.detach().clone().requires_grad_() for x in xs]

    def run(fn: Fn) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad():  # the runner times under no_grad
            return torch.autograd.grad(fn(*leaves), leaves, do)

    def check() -> tuple[torch.Tensor, torch.Tensor]:
        a, b = run(ours), run(peer)
        scale = [y.abs().max().clamp_min(1e-30) for y in b]
        flat = [
            torch.cat([(t / s).flatten() for t, s in zip(z, scale, strict=True)]) for z in (a, b)
        ]
        return flat[0], flat[1]

    return PeerPair(ours=lambda: run(ours), peer=lambda: run(peer), flops=flops, size=_size(T),
                    check=check)  # fmt: skip


def _size(T: int) -> str:
    return f"B={B} T={T} H={H} K=V={K}"


S = K**-0.5
SLOPES = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])  # ALiBi-style


def _scan_flops(T: int, train: bool) -> int:
    """FLOPs of the native linear/Lightning kernel: one chunked scan, or four with the backward
    (dq, dk and dv are one scan each)."""
    return chunk_flops(B, H, K, K, T, CHUNK) * (4 if train else 1)


def _linear(T: int, g: torch.Generator, impl: str = "chunk", train: bool = False) -> PeerPair:
    peer = _fla("fla.ops.linear_attn.naive", "naive_chunk_linear_attn")
    return (_train if train else _pair)(
        lambda q, k, v: linear_attention(q, k, v, causal=True, scale=S, impl=impl),
        lambda q, k, v: peer(q, k, v, scale=S),
        _qkv(T, g), _scan_flops(T, train), T,
    )  # fmt: skip


def _lightning(T: int, g: torch.Generator, impl: str = "chunk", train: bool = False) -> PeerPair:
    peer = _fla("fla.ops.simple_gla.naive", "naive_chunk_simple_gla")
    g_fla = (-SLOPES).expand(B, T, H)
    return (_train if train else _pair)(
        lambda q, k, v: linear_attention(q, k, v, causal=True, decay=-SLOPES, scale=S, impl=impl),
        lambda q, k, v: peer(q, k, v, g_fla, scale=S)[0],
        _qkv(T, g), _scan_flops(T, train), T,
    )  # fmt: skip


def gla_train_flops(T: int) -> int:
    """FLOPs (2 per multiply-add) of the native GLA forward plus backward: per chunk of C rows,
    the forward's ``C²(K + V) + 2CKV`` and the backward's ``3C²(K + V) + 5CKV`` (its forward scan
    for dq: ``do v^T``, ``do S^T``, ``P (k e^-b)``, the state; its reverse scan: the scores,
    ``do v^T``, ``A^T do``, two reads and one update of its state, ``P^T (q e^b)``)."""
    N = -(-T // CHUNK)
    return 2 * B * H * N * CHUNK * (4 * CHUNK * (K + K) + 7 * K * K)


def _gla(T: int, g: torch.Generator, impl: str = "chunk", train: bool = False) -> PeerPair:
    q, k, v = _qkv(T, g)
    gk = F.logsigmoid(torch.randn(B, T, H, K, generator=g)) / 16  # GLA's gate parametrisation
    peer = _fla("fla.ops.gla.naive", "naive_recurrent_gla")
    flops = gla_train_flops(T) if train else chunk_flops(B, H, K, K, T, CHUNK)
    return (_train if train else _pair)(
        lambda q, k, v, gk: gated_linear_attention(q, k, v, gk, impl=impl),
        lambda q, k, v, gk: peer(q, k, v, gk)[0],
        [q, k, v, gk], flops, T,
    )  # fmt: skip


SEQ = (2048, 8192, 32768)
GLA_NOTE = "peer is a token loop (fla has no naive chunked GLA)"
TRAIN_NOTE = "forward + backward (all input gradients)"
# impl 'chunk' (eager PyTorch), 'native' (the fused C++ kernels, what impl='auto' runs on CPU) and
# 'compiled' (chunk through torch.compile, which fuses the eager path's memory passes; no GLA);
# '-train' cases time the forward and backward of the native kernels
for impl, train in (("chunk", False), ("native", False), ("compiled", False), ("native", True)):
    tag = ("" if impl == "chunk" else f"-{impl}") + (TRAIN_TAG if train else "")
    notes = "; ".join(filter(None, ("" if impl == "chunk" else f"ours: impl={impl!r}",
                                    TRAIN_NOTE if train else "")))  # fmt: skip
    lin_sizes = ((2048, 8192), (2048,)) if train else (SEQ, (2048, 8192))
    register_case(PeerCase(f"linear{tag}/fla-naive-chunk", "linear", "fla naive_chunk_linear_attn",
                           FLA, functools.partial(_linear, impl=impl, train=train), *lin_sizes,
                           smoke_size=192, notes=notes))  # fmt: skip
    register_case(PeerCase(f"lightning{tag}/fla-naive-chunk-simple-gla", "lightning",
                           "fla naive_chunk_simple_gla", FLA,
                           functools.partial(_lightning, impl=impl, train=train), *lin_sizes,
                           smoke_size=192, notes=notes))  # fmt: skip
    if impl != "compiled":
        register_case(PeerCase(f"gla{tag}/fla-naive-recurrent", "gla", "fla naive_recurrent_gla",
                               FLA, functools.partial(_gla, impl=impl, train=train),
                               (2048, 4096) if train else (2048, 8192), (2048,), rtol=1e-3,
                               smoke_size=100,
                               notes="; ".join(filter(None, (notes, GLA_NOTE)))))  # fmt: skip
