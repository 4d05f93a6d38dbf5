"""routing_attention and local_attention: ``gather`` against ``reference`` forward and backward
(T not a multiple of the cluster count, window or block; ties; null key/value), balance,
the routing-transformer package's KmeansAttention as the peer (outputs, gradients, commitment
loss), the exact-softmax identity (one cluster of window T), ``prefix`` routing equal to the
official decoder's step-by-step rule, causality (``prefix`` exact; ``balanced`` leaks, as
documented), the k-means pieces, errors and FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.routing import (
    balanced_routes,
    cluster_means,
    cluster_window,
    commitment_loss,
    ema_update_,
    local_attention,
    local_attention_flops,
    local_weights,
    nearest_centroid,
    route_norm,
    routing_attention,
    routing_attention_flops,
    routing_weights,
    similarity,
)
from attnzoo.ops.softmax import softmax_attention
from tests.helpers import assert_all_close, fwd_bwd

MODES = [(False, "balanced"), (True, "balanced"), (True, "prefix")]
MODE_IDS = ["full", "causal-balanced", "causal-prefix"]


def qkv(T: int, B: int = 2, H: int = 3, K: int = 6, V: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(T)
    return [torch.randn(B, T, H, d, generator=g, dtype=torch.float64) for d in (K, K, V)]


def centroids(H: int = 3, C: int = 4, K: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + C)
    return route_norm(torch.randn(H, C, K, generator=g, dtype=torch.float64), "layer")


@pytest.mark.parametrize("causal,routing", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("T,C,window", [(23, 4, None), (23, 4, 5), (23, 5, 30), (1, 3, None),
                                        (17, 17, None), (9, 2, 1)])  # fmt: skip
@pytest.mark.parametrize("null", [False, True], ids=["", "null-kv"])
def test_gather_matches_reference_fwd_bwd(causal, routing, T, C, window, null) -> None:
    q, k, v = qkv(T)
    mu = centroids(C=C)
    extra = [torch.randn(3, C, 6, dtype=torch.float64), torch.randn(3, C, 5, dtype=torch.float64)]

    def run(impl: str):
        def fn(q, k, v, nk, nv):
            return routing_attention(q, k, v, mu, causal=causal, routing=routing, window=window,
                                     null_kv=(nk, nv) if null else None, impl=impl)  # fmt: skip

        return fn

    g = torch.randn(2, T, 3, 5, dtype=torch.float64)
    want = fwd_bwd(run("reference"), [q, k, v, *extra], g)
    assert_all_close(fwd_bwd(run("gather"), [q, k, v, *extra], g), want, atol=1e-12, rtol=1e-10)
    assert_all_close(fwd_bwd(run("auto"), [q, k, v, *extra], g), want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("causal,routing", MODES, ids=MODE_IDS)
def test_ties_go_to_the_earlier_token_in_both_paths(causal, routing) -> None:
    """Repeated tokens have equal similarities: both paths break the tie by position."""
    q, k, v = qkv(6)
    q, k = q.repeat(1, 3, 1, 1), k.repeat(1, 3, 1, 1)  # T = 18, each token three times
    v = torch.randn(2, 18, 3, 5, dtype=torch.float64)
    mu = centroids(C=3)
    a, b = (routing_attention(q, k, v, mu, causal=causal, routing=routing, window=4, impl=i)
            for i in ("reference", "gather"))  # fmt: skip
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    s = torch.zeros(1, 1, 7)  # all tied: the first w tokens
    assert balanced_routes(s, 3).tolist() == [[[0, 1, 2]]]


@pytest.mark.parametrize("T,C,window", [(23, 4, None), (20, 4, None), (23, 5, 3)])
def test_balanced_clusters_hold_exactly_w_tokens(T, C, window) -> None:
    q, _, _ = qkv(T)
    mu = centroids(C=C)
    s = similarity(route_norm(q), mu)  # [B, H, C, T]
    w = cluster_window(T, C, window)
    assert w == (window if window is not None else -(-T // C))
    idx = balanced_routes(s, w)  # [B, H, C, w]
    assert idx.shape == (2, 3, C, w)
    for row, sims in zip(idx.reshape(-1, w), s.reshape(-1, T), strict=True):
        assert len(set(row.tolist())) == w, "a cluster took a token twice"
        rest = [t for t in range(T) if t not in row.tolist()]
        assert sims[row].min() >= sims[rest].max(), "a cluster skipped a more similar token"
    # the routed (query, cluster) pairs: C·w in all, so tokens are routed 0, 1 or more times
    counts = torch.zeros(2, 3, T).scatter_add(2, idx.flatten(2), torch.ones(2, 3, C * w))
    assert bool((counts.sum(-1) == C * w).all())


@pytest.mark.parametrize("causal", [False, True])
def test_peer_kmeans_attention(causal: bool) -> None:
    """The package's KmeansAttention with its means set (eval): routing on unit-length q and k
    (``norm="l2"``), attention on the raw ones scaled by ``K^-0.5``, its ``mem_key``/``mem_value``
    (added when causal and not ``shared_qk``) as ``null_kv``, and its ``scatter_mean`` dividing by
    ``count + 1e-5``: mapped, outputs and gradients are equal."""
    from routing_transformer.routing_transformer import KmeansAttention

    B, H, T, K, C, w = 2, 3, 26, 8, 4, 6  # C·w = 24 < T: some tokens are never routed
    torch.manual_seed(0)
    peer = KmeansAttention(C, w, H, K, causal=causal).double().eval()
    mu = F.normalize(torch.randn(H, C, K, dtype=torch.float64), dim=-1)
    peer.kmeans.means.copy_(mu)
    peer.kmeans.initted.fill_(True)
    q, k, v = (torch.randn(B, H, T, K, dtype=torch.float64) for _ in range(3))
    qi = balanced_routes(similarity(route_norm(q.transpose(1, 2), "l2"), mu), w).flatten(2)
    n = torch.zeros(B, H, T, dtype=torch.float64).scatter_add(2, qi, torch.ones(qi.shape).double())
    assert bool((n == 0).any()) and bool((n > 1).any()), "pick inputs with both conventions"
    assert peer.mem_key.shape[2] == int(causal)
    nk, nv = (torch.randn(H, C, K, dtype=torch.float64) for _ in range(2))

    def ours(q, k, v, nk, nv):
        t = [x.transpose(1, 2) for x in (q, k, v)]
        o = routing_attention(*t, mu, causal=causal, window=w, norm="l2",
                              null_kv=(nk, nv) if causal else None)  # fmt: skip
        return o.transpose(1, 2) * (n / (n + 1e-5))[..., None]

    def theirs(q, k, v, nk, nv):
        if not causal:
            return peer(q, k, v)[0]
        mem = {"mem_key": nk[:, :, None], "mem_value": nv[:, :, None]}
        return torch.func.functional_call(peer, mem, (q, k, v))[0]

    g = torch.randn(B, H, T, K, dtype=torch.float64)
    got = fwd_bwd(ours, [q, k, v, nk, nv], g)
    want = fwd_bwd(theirs, [q, k, v, nk, nv], g)
    if not causal:  # no mem key/value without causal: neither uses nk, nv
        got, want = got[:4], want[:4]
    assert_all_close(got, want, atol=1e-12, rtol=1e-10)
    # its aux loss: commitment * mse over q and k together, i.e. the mean of ours for q and k
    loss = peer(q, k, v)[1]
    mine = sum(commitment_loss(route_norm(x.transpose(1, 2), "l2"), mu) for x in (q, k)) / 2
    torch.testing.assert_close(loss, 1e-4 * mine)


@pytest.mark.parametrize("causal,routing", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("impl", ["reference", "gather"])
def test_one_cluster_of_window_T_is_softmax_attention(causal, routing, impl) -> None:
    q, k, v = qkv(13)
    want = softmax_attention(q, k, v, mask="causal" if causal else "full")
    got = routing_attention(q, k, v, centroids(C=1), causal=causal, routing=routing, impl=impl)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    w = routing_weights(q, k, centroids(C=1), causal=causal, routing=routing)
    torch.testing.assert_close(w, softmax_attention_weights(q, k, causal))


def softmax_attention_weights(q, k, causal):
    from attnzoo.ops.softmax import softmax_weights

    return softmax_weights(q, k, mask="causal" if causal else "full")


@pytest.mark.parametrize("window", [None, 3, 7])
def test_prefix_is_the_official_decoders_step_rule(window) -> None:
    """``prefix`` at ``t`` = balanced causal routing of the sequence cut after ``t`` (with the
    same window), read at ``t``: what the official decoder computes at step ``t``, when
    ``cluster_items(blank_future=True)`` ranks the positions after ``t`` last."""
    T, C = 19, 3
    q, k, v = qkv(T)
    mu = centroids(C=C)
    w = cluster_window(T, C, window)
    got = routing_attention(q, k, v, mu, causal=True, routing="prefix", window=w)
    for t in range(T):
        cut = routing_attention(q[:, : t + 1], k[:, : t + 1], v[:, : t + 1], mu, causal=True,
                                routing="balanced", window=w, impl="reference")  # fmt: skip
        torch.testing.assert_close(got[:, t], cut[:, t], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("impl", ["reference", "gather"])
def test_prefix_is_causal_and_balanced_is_not(impl) -> None:
    T, t0 = 24, 11
    q, k, v = qkv(T)
    mu = centroids(C=4)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, t0 + 1 :] = torch.randn(x[:, t0 + 1 :].shape, dtype=x.dtype) * 3

    def run(routing, *xs):
        return routing_attention(*xs, mu, causal=True, routing=routing, impl=impl)

    a, b = run("prefix", q, k, v), run("prefix", q2, k2, v2)
    torch.testing.assert_close(a[:, : t0 + 1], b[:, : t0 + 1], atol=1e-13, rtol=0)
    # balanced ranks the whole sequence: the new future tokens take cluster slots from the past
    a, b = run("balanced", q, k, v), run("balanced", q2, k2, v2)
    assert not torch.allclose(a[:, : t0 + 1], b[:, : t0 + 1])


def test_unrouted_tokens_get_zero_and_multi_routed_tokens_the_mean() -> None:
    """Two clusters with centroids +e0 and -e0, window 2, non-causal: tokens 0, 1 lead on +e0
    and 2, 3 on -e0; token 4 (orthogonal) is in neither. With a second copy of the +e0 centroid,
    tokens 0, 1 are in two identical clusters: the mean of two equal outputs is that output."""
    e = torch.eye(4, dtype=torch.float64)
    x = torch.stack([e[0] * 3, e[0] * 2, -e[0] * 3, -e[0] * 2, e[1]])[None, :, None]  # [1,5,1,4]
    v = torch.randn(1, 5, 1, 3, dtype=torch.float64)
    mu = torch.stack([e[0], -e[0]])[None]  # [1, 2, 4]
    for impl in ("reference", "gather"):
        o = routing_attention(x, x, v, mu, window=2, norm="none", impl=impl)
        assert bool((o[0, 4] == 0).all())
        first = softmax_attention(x[:, :2], x[:, :2], v[:, :2])
        torch.testing.assert_close(o[:, :2], first)
        twice = routing_attention(x, x, v, torch.cat([mu, mu[:, :1]], 1), window=2, norm="none",
                                  impl=impl)  # fmt: skip
        torch.testing.assert_close(twice, o)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,block", [(23, 4), (23, 5), (7, 1), (9, 30), (16, 8)])
def test_local_gather_matches_reference(causal, T, block) -> None:
    q, k, v = qkv(T)
    g = torch.randn(2, T, 3, 5, dtype=torch.float64)
    want = fwd_bwd(lambda *a: local_attention(*a, block=block, causal=causal, impl="reference"),
                   [q, k, v], g)  # fmt: skip
    got = fwd_bwd(lambda *a: local_attention(*a, block=block, causal=causal), [q, k, v], g)
    assert_all_close(got, want, atol=1e-12, rtol=1e-10)


def test_local_windows() -> None:
    """Query ``i`` sees blocks ``i//b - 1 .. i//b`` (``+1`` non-causal); one block covering
    ``T`` is softmax attention."""
    q, k, v = qkv(10)
    p = local_weights(q, k, block=3, causal=True)
    assert bool((p[..., 7, :3] == 0).all()) and bool((p[..., 7, 3:8] > 0).all())
    assert bool((p[..., 7, 8:] == 0).all())
    p = local_weights(q, k, block=3, causal=False)
    assert bool((p[..., 4, :9] > 0).all()) and bool((p[..., 4, 9] == 0).all())
    assert bool((p[..., 0, 6:] == 0).all())
    for causal in (False, True):
        want = softmax_attention(q, k, v, mask="causal" if causal else "full")
        torch.testing.assert_close(local_attention(q, k, v, block=10, causal=causal), want)


def test_kmeans_pieces() -> None:
    x, _, _ = qkv(9)
    mu = centroids(C=4)
    near = nearest_centroid(x, mu)  # [B, H, T]
    brute = torch.einsum("bthk,hck->bhtc", x, mu).argmax(-1)
    assert torch.equal(near, brute)
    x.requires_grad_(True)
    m = mu.clone().requires_grad_(True)
    loss = commitment_loss(x, m)
    picked = torch.stack([mu[h, near[:, h]] for h in range(3)], 2)  # [B, T, H, K]
    torch.testing.assert_close(loss, ((x - picked) ** 2).mean())
    loss.backward()
    assert m.grad is None and x.grad is not None, "the loss reaches x only (stop-gradient)"
    means, counts = cluster_means([x.detach()], mu)
    for h in range(3):
        for c in range(4):
            members = x.detach()[:, :, h][near[:, h] == c]
            assert counts[h, c] == len(members)
            if len(members):
                torch.testing.assert_close(means[h, c], members.mean(0))
    counts[:, 1] = 0  # as if cluster 1 had no member: it keeps its centroid
    new = ema_update_(mu.clone(), means, counts, 0.9)
    moved = 0.9 * mu + 0.1 * means
    torch.testing.assert_close(new, torch.where(counts[..., None] > 0, moved, mu))
    torch.testing.assert_close(new[:, 1], mu[:, 1], atol=0, rtol=0)
    torch.testing.assert_close(ema_update_(mu.clone(), means, counts, 1.0), mu)


def test_route_norm() -> None:
    x = torch.randn(3, 5, dtype=torch.float64) * 4 + 2
    n = route_norm(x, "layer")
    torch.testing.assert_close(n.mean(-1), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(n.var(-1, unbiased=False), torch.ones(3, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    torch.testing.assert_close(route_norm(x, "l2").norm(dim=-1), torch.ones(3).double())
    assert route_norm(x, "none") is x
    b = route_norm(x.bfloat16(), "layer")
    assert b.dtype == torch.bfloat16
    assert similarity(b[None, :, None], torch.ones(1, 2, 5).bfloat16()).dtype == torch.float32


def test_errors() -> None:
    q, k, v = qkv(8)
    mu = centroids(C=2)
    call = routing_attention
    with pytest.raises(ValueError, match="impl must be one of"):
        call(q, k, v, mu, impl="dense")
    with pytest.raises(ValueError, match="routing must be one of"):
        call(q, k, v, mu, routing="nearest")
    with pytest.raises(ValueError, match="routing='prefix' .* needs causal=True"):
        call(q, k, v, mu, routing="prefix")
    with pytest.raises(ValueError, match="norm must be one of"):
        call(q, k, v, mu, norm="rms")
    with pytest.raises(ValueError, match=r"centroids must have shape \[H=3, C>=1, K=6\]"):
        call(q, k, v, mu[:2])
    with pytest.raises(TypeError, match="centroids must match q's dtype"):
        call(q, k, v, mu.float())
    with pytest.raises(ValueError, match="window must be a positive int or None, got 0"):
        call(q, k, v, mu, window=0)
    with pytest.raises(ValueError, match="null_kv must be"):
        call(q, k, v, mu, null_kv=(mu, mu))
    with pytest.raises(ValueError, match="self-attention only"):
        call(q, k[:, :5], v[:, :5], mu)
    with pytest.raises(ValueError, match="block must be a positive int, got 0"):
        local_attention(q, k, v, block=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        route_norm(q, "rms")


def test_flops() -> None:
    # similarities: 2 FLOPs x B·H x (T queries + T keys) x C x K; attention: C·w² pairs x (K + V)
    assert routing_attention_flops(1, 2, 8, 4, 16, 4, 4) == 2 * 2 * 32 * 4 * 8 + 2 * 2 * 4 * 16 * 12
    # O(T·sqrt(T)·K) at C = w = sqrt(T): quadrupling T multiplies it by 8 (attention part)
    a, b = (routing_attention_flops(1, 1, 8, 8, T, int(T**0.5), int(T**0.5)) for T in (256, 1024))
    assert 7.5 < b / a < 8.5
    assert local_attention_flops(1, 2, 8, 8, 10, 4, True) == 2 * 2 * 3 * 4 * 8 * 16
    assert local_attention_flops(1, 2, 8, 8, 10, 4, False) == 2 * 2 * 3 * 4 * 12 * 16
