"""Routing Transformer attention (S-ROUTING): k-means routing heads beside local heads.

Roy, Saffar, Vaswani and Grangier, "Efficient Content-Based Sparse Attention with Routing
Transformers", TACL 2021. https://arxiv.org/abs/2003.05997
Code: https://github.com/google-research/google-research/tree/master/routing_transformer (TF1,
``utils.py``: ``multihead_attention_nd``, ``clustered_local_attention_helper``,
``cluster_items``, ``online_kmeans``); peer: the ``routing-transformer`` package's
``KmeansAttention`` (the op matches it exactly once its conventions are mapped; see
:mod:`attnzoo.ops.routing`).

The heads split in two, as in the paper. The first ``routing_heads`` heads route: their ``q`` and
``k`` are layer-normalised without scale or bias (``q̂``, ``k̂``: the official code, which then
attends with them *unscaled*, ``softmax(q̂ . k̂)``: the ``d^-0.5`` it applies before the norm is
undone by it), each of ``C = num_clusters`` clusters takes the ``w`` queries and the ``w`` keys
most similar to its centroid (``w = window``, or ``ceil(T / C)``), queries attend the keys of
their clusters, a token taken by several clusters gets the mean and a token taken by none gets 0
(:func:`attnzoo.ops.routing.routing_attention`). The other heads are local: blocked attention
over blocks of ``local_block`` tokens, each attending its own block and the previous one (and
the next one when not causal), the official ``query_shape``/``memory_flange`` scheme and the
package's ``LocalAttention``; by default ``local_block = ceil(w / 2)``, so a local query sees up
to ``w`` keys in causal mode like the official pairing of 256-token blocks with 512-token windows.

Causality (``routing``): ranking the whole sequence (``balanced``, the official training
forward and the package) lets a future token push a past token out of a cluster, so with
``causal=True`` it is **not** causal. ``prefix`` (the default when causal) ranks each query's
past only: the official decoder's rule (``cluster_items(blank_future=True)``), computed for
every step at once; it is exactly causal. Non-causal blocks use ``balanced``.

k-means (centroids ``[routing_heads, C, K]``, a buffer shared by queries and keys as in the
official code): initialised as layer-normalised ``N(0, 1)`` draws (the official initialiser)
from ``centroid_seed``, not from the first batch as the package does, so a block's first call
is like any other. The commitment loss is ``β·Σ_x mean((x - sg(mu_nearest(x)))²)`` over ``q̂``
and ``k̂`` (``q̂`` once when ``shared_qk``); the EMA step moves each centroid with members toward
the mean of the routing vectors nearest to it, ``mu <- λ·mu + (1 - λ)·mean`` (the paper's update;
the official code keeps EMA sums and counts, whose ratio is the same kind of mean).

How training code uses it: after a forward in training mode, :meth:`RoutingAttention.aux_loss`
returns that forward's commitment loss, a scalar in its graph. Add it to the loss; when it is
backpropagated the centroids take that forward's EMA step (once). Forwards never change the
centroids (eval or train), so outputs depend on the weights, centroids and input only, and a
fast path can be compared with the reference after the reference's backward. A training forward
whose loss is not backpropagated (or that runs under ``torch.no_grad``) moves nothing.

Departures from the official code: the causal mask compares original positions (the official
lower-triangular mask over the sorted windows of queries and of keys is only right with
``share_qk``); outputs are divided by the exact count (official: ``count + 1e-2``); the
commitment loss counts ``q̂`` once when ``shared_qk`` (official: twice). Left out: relative
position embeddings of the local and routing heads, the strided and hashed (LSH) variants,
``sparsity_skip_first`` (a model-level choice), attention dropout, streaming (``step`` would
re-rank each cluster's prefix per token, as the official decoder does).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from attnzoo import peers
from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import HeadsConfig, default_heads
from attnzoo.ops.routing import (
    balanced_routes,
    cluster_means,
    cluster_window,
    commitment_loss,
    ema_update_,
    local_attention,
    local_attention_flops,
    local_weights,
    route_norm,
    routing_attention,
    routing_attention_flops,
    routing_weights,
    similarity,
)
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="Efficient Content-Based Sparse Attention with Routing Transformers",
    year=2021,
    url="https://arxiv.org/abs/2003.05997",
    code="https://github.com/google-research/google-research/tree/master/routing_transformer",
)


@dataclasses.dataclass(frozen=True)
class RoutingConfig(HeadsConfig):
    """Routing Transformer attention.

    Attributes:
        num_heads: heads; ``None`` means :func:`default_heads`, but at least 2 when ``d_model``
            is even (one routing and one local head).
        routing_heads: heads that route (the first ones; the rest are local heads); ``None``
            means half the heads, at least 1.
        num_clusters: k-means clusters ``C`` per routing head (the paper: about ``sqrt(T)``).
        window: tokens each cluster takes; ``None`` means ``ceil(T / C)`` at each call.
        local_block: block length of the local heads; ``None`` means ``ceil(w / 2)`` for the
            call's cluster window ``w``.
        routing: ``auto`` (``prefix`` when causal, else ``balanced``) | ``balanced`` (rank the
            whole sequence: not causal) | ``prefix`` (rank each query's past; needs causal).
        shared_qk: routing heads use their queries as keys (the official LM configurations).
        ema_decay: the centroids' EMA decay ``λ`` (the paper: 0.999).
        commitment: weight ``β`` of the commitment loss (the paper: 1e-4).
        centroid_seed: seed of the centroids' initialisation.
        bias: bias on the q/k/v and output projections.
        impl: ``auto`` (``gather``) | ``reference`` (dense per-cluster weights) | ``gather``.
    """

    routing_heads: int | None = limit(None, ge=1)
    num_clusters: int = limit(8, ge=1)
    window: int | None = limit(None, ge=1)
    local_block: int | None = limit(None, ge=1)
    routing: Literal["auto", "balanced", "prefix"] = "auto"
    shared_qk: bool = False
    ema_decay: float = limit(0.999, ge=0, le=1)
    commitment: float = limit(1e-4, ge=0, finite=True)
    centroid_seed: int = limit(0, ge=0)
    bias: bool = False
    impl: Literal["auto", "reference", "gather"] = "auto"

    def default_num_heads(self) -> int:
        h = default_heads(self.d_model)
        return 2 if h == 1 and self.d_model % 2 == 0 else h

    @property
    def n_routing(self) -> int:
        return self.routing_heads if self.routing_heads is not None else max(1, self.heads // 2)

    @property
    def routing_rule(self) -> str:
        if self.routing != "auto":
            return self.routing
        return "prefix" if self.causal else "balanced"

    def validate(self) -> None:
        if self.n_routing > self.heads:
            raise ValueError(f"{self._owner()}: routing_heads must be <= num_heads={self.heads}, "
                             f"got {self.routing_heads}")  # fmt: skip
        if self.routing == "prefix" and not self.causal:
            raise ValueError(f"{self._owner()}: routing='prefix' ranks each query's past and "
                             "needs causal=True; non-causal blocks use 'balanced'")  # fmt: skip


def _sizes(cfg: RoutingConfig, T: int) -> tuple[int, int]:
    """The cluster window ``w`` and local block of a call with ``T`` tokens."""
    w = cluster_window(T, cfg.num_clusters, cfg.window)
    return w, cfg.local_block if cfg.local_block is not None else -(-w // 2)


def routing_flops(cfg: RoutingConfig, batch: int, T: int, S: int | None, mask: object) -> int:
    """Projections, the routing heads' :func:`routing_attention_flops` (the paper's
    ``C·w²`` pairs) and the local heads' :func:`local_attention_flops`."""
    H, Hr, K, D = cfg.heads, cfg.n_routing, cfg.dim_head, cfg.d_model
    w, block = _sizes(cfg, T)
    keys = H - Hr if cfg.shared_qk else H
    proj = 2 * batch * T * D * (3 * H + keys) * K
    routed = routing_attention_flops(batch, Hr, K, K, T, cfg.num_clusters, w)
    return proj + routed + local_attention_flops(batch, H - Hr, K, K, T, block, cfg.causal)


class _EmaStep:
    """A gradient hook on the commitment loss: applies one forward's EMA step, once."""

    def __init__(self, centroids: Tensor, means: Tensor, counts: Tensor, decay: float) -> None:
        self.args, self.done = (centroids, means, counts, decay), False

    def __call__(self, grad: Tensor) -> None:
        if not self.done:
            ema_update_(*self.args)
            self.done = True


@register_mixer(
    "routing",
    config=RoutingConfig,
    family="sparse",
    patterns=("causal-self", "noncausal-self"),
    attention_maps=True,
    complexity="O(T·(T/C)·K) time with C clusters of window T/C, T^1.5·K at the paper's "
    "C ≈ T^0.5; causal routing='prefix' adds O(C·T²) comparisons and a (1 + ln C)² factor on "
    "the attention; O(T·(T/C)) memory",
    paper=PAPER,
    peer="routing-transformer KmeansAttention (eval, means set, mem kv and scatter_mean eps "
    "mapped), op level, fwd+bwd",
    flops=routing_flops,
    export=ExportSupport(
        torch="causal routing='prefix' pads each cluster to the number of queries it routes "
        "and keys it takes, a count read from the data; non-causal routing exports with "
        "torch.export but its stable sort (aten.sort.stable) has no ONNX function",
    ),
)
class RoutingAttention(Mixer):
    cfg: RoutingConfig

    def __init__(self, cfg: RoutingConfig) -> None:
        super().__init__(cfg)
        H, Hr, K = cfg.heads, cfg.n_routing, cfg.dim_head
        keys = H - Hr if cfg.shared_qk else H
        self.qkv_proj = nn.Linear(cfg.d_model, (2 * H + keys) * K, bias=cfg.bias)
        self.out_proj = nn.Linear(H * K, cfg.d_model, bias=cfg.bias)
        g = torch.Generator().manual_seed(cfg.centroid_seed)
        mu = route_norm(torch.randn(Hr, cfg.num_clusters, K, generator=g), "layer")
        self.register_buffer("centroids", mu.to(torch.get_default_dtype()))
        self._aux: Tensor | None = None

    def aux_loss(self) -> Tensor:
        """The commitment loss of the latest training-mode forward (a scalar in its graph;
        zero before any). Backpropagating it applies that forward's EMA step to the centroids."""
        return self._aux if self._aux is not None else self.centroids.new_zeros(())

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Routing heads' ``q̂, k̂`` and local heads' ``q, k``, all heads' ``v``."""
        H, Hr, K = self.cfg.heads, self.cfg.n_routing, self.cfg.dim_head
        keys = H - Hr if self.cfg.shared_qk else H
        q, k, v = self.qkv_proj(x).split([H * K, keys * K, H * K], dim=-1)
        q, k, v = (rearrange(t, "b t (h k) -> b t h k", k=K) for t in (q, k, v))
        qn = route_norm(q[:, :, :Hr], "layer")
        kn = qn if self.cfg.shared_qk else route_norm(k[:, :, :Hr], "layer")
        return qn, kn, q[:, :, Hr:], k[:, :, keys - (H - Hr) :], v  # [B, T, h, K] each

    def _out(self, o: Tensor) -> Tensor:
        return self.out_proj(rearrange(o, "b t h k -> b t (h k)"))  # [B, T, H, K] -> [B, T, D]

    def _options(self, T: int) -> tuple[dict[str, object], dict[str, object]]:
        w, block = _sizes(self.cfg, T)
        causal = self.cfg.causal
        routed = {"causal": causal, "routing": self.cfg.routing_rule, "window": w, "scale": 1.0,
                  "norm": "none"}  # fmt: skip
        return routed, {"block": block, "causal": causal}

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, T, D]`` -> ``[B, T, D]``."""
        qn, kn, ql, kl, v = self._project(x)
        Hr, impl = self.cfg.n_routing, "gather" if self.cfg.impl == "auto" else self.cfg.impl
        routed, local = self._options(x.shape[1])
        o = [routing_attention(qn, kn, v[:, :, :Hr], self.centroids, impl=impl, **routed)]  # type: ignore[arg-type]
        if self.training:
            self._track(qn, kn)
        if Hr < self.cfg.heads:
            o.append(local_attention(ql, kl, v[:, :, Hr:], impl=impl, **local))  # type: ignore[arg-type]
        return self._out(torch.cat(o, dim=2))

    def _track(self, qn: Tensor, kn: Tensor) -> None:
        xs = [qn] if self.cfg.shared_qk else [qn, kn]
        loss = self.cfg.commitment * sum(commitment_loss(x, self.centroids) for x in xs)
        assert isinstance(loss, Tensor)
        if loss.requires_grad:
            means, counts = cluster_means([x.detach() for x in xs], self.centroids)
            loss.register_hook(_EmaStep(self.centroids, means, counts, self.cfg.ema_decay))
        self._aux = loss

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """Routing heads: each query's weights averaged over its clusters; local heads: blocked
        weights. ``[B, H, T, T]``; exact."""
        qn, kn, ql, kl, v = self._project(x)
        routed, local = self._options(x.shape[1])
        a = [routing_weights(qn, kn, self.centroids, **routed)]  # type: ignore[arg-type]
        if self.cfg.n_routing < self.cfg.heads:
            a.append(local_weights(ql, kl, **local))  # type: ignore[arg-type]
        values = rearrange(v, "b s h k -> b h s k")
        return AttentionMaps(torch.cat(a, dim=1), values,
                             lambda o: self._out(rearrange(o, "b h t k -> b t h k")))  # fmt: skip


# ---- peer: the routing-transformer package's KmeansAttention, at the op level ----------------
PEER_B, PEER_H, PEER_K = 1, 8, 64


def _peer_case(T: int, g: torch.Generator) -> peers.PeerPair:
    """Causal balanced routing with the package's learned null key/value, ``C ≈ sqrt(T)``
    clusters of ``T // C``; the package divides by ``count + 1e-5``, mapped on our side."""
    from routing_transformer.routing_transformer import KmeansAttention

    C = max(1, round(T**0.5))
    w = T // C
    peer = KmeansAttention(C, w, PEER_H, PEER_K, causal=True).eval()
    mu = torch.nn.functional.normalize(torch.randn(PEER_H, C, PEER_K, generator=g), dim=-1)
    peer.kmeans.means.copy_(mu)
    peer.kmeans.initted.fill_(True)
    q, k, v = (torch.randn(PEER_B, PEER_H, T, PEER_K, generator=g) * 0.5 for _ in range(3))
    null = (peer.mem_key.detach()[:, :, 0], peer.mem_value.detach()[:, :, 0])
    tq, tk, tv = (rearrange(t, "b h t k -> b t h k") for t in (q, k, v))
    kw = {"causal": True, "window": w, "norm": "l2", "null_kv": null}

    def ours() -> Tensor:
        return routing_attention(tq, tk, tv, mu, **kw)  # type: ignore[arg-type]

    def check() -> tuple[Tensor, Tensor]:
        qi = balanced_routes(similarity(route_norm(tq, "l2"), mu), w).flatten(2)  # [B, H, C·w]
        n = torch.zeros(PEER_B, PEER_H, T).scatter_add(2, qi, torch.ones(qi.shape))
        mine = rearrange(ours(), "b t h k -> b h t k") * (n / (n + 1e-5))[..., None]
        return mine, peer(q, k, v)[0]

    flops = routing_attention_flops(PEER_B, PEER_H, PEER_K, PEER_K, T, C, w)
    return peers.PeerPair(ours=ours, peer=lambda: peer(q, k, v), flops=flops,
                          size=f"B={PEER_B} T={T} H={PEER_H} K={PEER_K} C={C} w={w}",
                          check=check)  # fmt: skip


peers.register_case(peers.PeerCase(
    "routing/routing-transformer", "routing", "routing-transformer KmeansAttention (causal, "
    "eval, means set)", ("routing_transformer",), _peer_case, (256, 1024), (256,),
    notes="op level; ours impl='gather', routing='balanced', norm='l2', the package's mem "
    "key/value as null_kv; its scatter_mean eps mapped", smoke_size=64))  # fmt: skip
