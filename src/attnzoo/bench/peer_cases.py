"""The registered peer comparisons (see :mod:`attnzoo.bench.peers`).

Linear family vs fla-core's pure-PyTorch references, at the shape of issue 4 (B=1, H=8,
K=V=64, causal, fp32): the same inputs, conventions converted as in the tests (fla's ``scale``
multiplies q; its simple-GLA ``g`` is the per-step log decay, i.e. Lightning's ``-slope``
broadcast over time). fla has no naive *chunked* GLA, so GLA is compared with its naive
recurrence (the same math, a different schedule: say so when quoting the ratio).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnzoo.bench.peers import PeerCase, PeerPair, register_case
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


def _linear(T: int, g: torch.Generator, impl: str = "chunk") -> PeerPair:
    q, k, v = _qkv(T, g)
    peer = _fla("fla.ops.linear_attn.naive", "naive_chunk_linear_attn")
    s = K**-0.5
    return PeerPair(
        ours=lambda: linear_attention(q, k, v, causal=True, scale=s, impl=impl),
        peer=lambda: peer(q, k, v, scale=s),
        flops=chunk_flops(B, H, K, K, T, CHUNK),
        size=f"B={B} T={T} H={H} K=V={K}",
    )


def _lightning(T: int, g: torch.Generator, impl: str = "chunk") -> PeerPair:
    q, k, v = _qkv(T, g)
    peer = _fla("fla.ops.simple_gla.naive", "naive_chunk_simple_gla")
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])  # ALiBi-style
    s = K**-0.5
    g_fla = (-slopes).expand(B, T, H)
    return PeerPair(
        ours=lambda: linear_attention(q, k, v, causal=True, decay=-slopes, scale=s, impl=impl),
        peer=lambda: peer(q, k, v, g_fla, scale=s)[0],
        flops=chunk_flops(B, H, K, K, T, CHUNK),
        size=f"B={B} T={T} H={H} K=V={K}",
    )


def _gla(T: int, g: torch.Generator, impl: str = "chunk") -> PeerPair:
    q, k, v = _qkv(T, g)
    gk = F.logsigmoid(torch.randn(B, T, H, K, generator=g)) / 16  # GLA's gate parametrisation
    peer = _fla("fla.ops.gla.naive", "naive_recurrent_gla")
    return PeerPair(
        ours=lambda: gated_linear_attention(q, k, v, gk, impl=impl),
        peer=lambda: peer(q, k, v, gk)[0],
        flops=chunk_flops(B, H, K, K, T, CHUNK),
        size=f"B={B} T={T} H={H} K=V={K}",
    )


SEQ = (2048, 8192, 32768)
GLA_NOTE = "peer is a token loop (fla has no naive chunked GLA)"
# impl 'chunk' (eager PyTorch), 'native' (the fused C++ kernels, what impl='auto' runs on CPU) and
# 'compiled' (chunk through torch.compile, which fuses the eager path's memory passes; no GLA)
for impl in ("chunk", "native", "compiled"):
    tag = "" if impl == "chunk" else f"-{impl}"
    ours = "" if impl == "chunk" else f"ours: impl={impl!r}"
    register_case(PeerCase(f"linear{tag}/fla-naive-chunk", "linear", "fla naive_chunk_linear_attn",
                           FLA, functools.partial(_linear, impl=impl), SEQ, (2048, 8192),
                           smoke_size=192, notes=ours))  # fmt: skip
    register_case(PeerCase(f"lightning{tag}/fla-naive-chunk-simple-gla", "lightning",
                           "fla naive_chunk_simple_gla", FLA,
                           functools.partial(_lightning, impl=impl), SEQ, (2048, 8192),
                           smoke_size=192, notes=ours))  # fmt: skip
    if impl != "compiled":
        register_case(PeerCase(f"gla{tag}/fla-naive-recurrent", "gla", "fla naive_recurrent_gla",
                               FLA, functools.partial(_gla, impl=impl), (2048, 8192), (2048,),
                               rtol=1e-3, smoke_size=100,
                               notes="; ".join(filter(None, (ours, GLA_NOTE)))))  # fmt: skip
